"""Who may capture and read what: authentication of CLI users and authorization per namespace.

A capture sees every byte a pod sends, so whoever may capture a pod must be exactly whoever may read it. The
permission model (documented in README.md) is Kubernetes RBAC on the ``capture`` subresource of pods:

==================  ============================================  ==============================
action              permission                                    checked in
==================  ============================================  ==============================
start               ``create pods/capture``                       every target namespace
stop                ``delete pods/capture``                       every namespace of the capture
delete              ``delete pods/capture``                       every namespace of the capture
status/get/follow   ``get pods/capture``                          every namespace of the capture
list                ``get pods/capture`` (captures filtered)      each capture's namespaces
audit               ``list pods/capture`` cluster-wide            --
start ``node/NAME``  ``create nodes/capture`` cluster-wide         (and ``get``/``delete`` for reads, stop)
whole packets       ``create pods/capture-payload``               a namespace with a payload cap
==================  ============================================  ==============================

Two rights beyond ``pods/capture`` are separate on purpose. ``nodes/capture`` (a capture of a node's own network
namespace: every hostNetwork pod's traffic and what the node itself sends, whichever namespace it belongs to) is
never implied by any ``pods/capture`` grant. ``pods/capture-payload`` lifts a namespace's payload cap
(``podcap.collector.api.payload``).

``KubeAuthorizer`` authenticates the bearer token the CLI sends (from the user's kubeconfig) with a TokenReview
and decides with SubjectAccessReviews, so the cluster's RBAC decides. ``StaticTokenAuthorizer`` reads a token file
for installations without Kubernetes. ``OpenAuthorizer`` (everyone is "anonymous" and may do everything) exists
only for ``--insecure`` local use. Denials name the missing permission.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from typing import Protocol

from podcap import errors
from podcap.collector.kube.client import KubeApi
from podcap.collector.kube.errors import KubeError
from podcap.collector.kube.kinds import ALIASES, NODE
from podcap.errors import UnauthenticatedError
from podcap.v1 import control_pb2

log = logging.getLogger(__name__)

NODE_KIND_NAMES = frozenset(a for a, k in ALIASES.items() if k == NODE)

VERBS = ("create", "delete", "get", "list")
PODS_CAPTURE = "pods/capture"
NODES_CAPTURE = "nodes/capture"
PODS_CAPTURE_PAYLOAD = "pods/capture-payload"
RESOURCES = (PODS_CAPTURE, NODES_CAPTURE, PODS_CAPTURE_PAYLOAD)


class AuthError(UnauthenticatedError):
    """Authentication failed (no or invalid token): UNAUTHENTICATED."""


class TokenFileError(errors.InvalidInputError):
    """The static token file has a line that is not ``token,user,verbs,namespaces``."""


class DeniedError(errors.DeniedError):
    """Authenticated but not allowed: PERMISSION_DENIED. The message names the missing permission."""


@dataclass(frozen=True)
class Principal:
    user: str
    groups: tuple[str, ...] = ()


def permission_text(verb: str, namespace: str | None, resource: str = PODS_CAPTURE) -> str:
    where = f"in namespace {namespace!r}" if namespace else "cluster-wide"
    return f"{verb} {resource} {where}"


class Authorizer(Protocol):
    def authenticate(self, token: str | None) -> Principal: ...

    def check(self, who: Principal, verb: str, namespace: str | None, resource: str = PODS_CAPTURE) -> None:
        """Raise DeniedError unless ``who`` may ``verb`` ``resource`` (one of ``RESOURCES``) in ``namespace``
        (None = cluster-wide)."""
        ...


class OpenAuthorizer:
    def authenticate(self, token: str | None) -> Principal:
        return Principal("anonymous")

    def check(self, who: Principal, verb: str, namespace: str | None, resource: str = PODS_CAPTURE) -> None:
        return None


@dataclass(frozen=True)
class StaticToken:
    user: str
    verbs: frozenset[str]  # "create" (on pods/capture) or "create:nodes/capture"
    namespaces: frozenset[str]  # "*" = all


def _right(verb: str) -> str:
    """A token file's verb as ``verb`` (pods/capture) or ``verb:resource``; raises KeyError for an unknown one."""
    v, sep, resource = verb.partition(":")
    if v not in VERBS or (sep and resource not in RESOURCES):
        raise KeyError(verb)
    return v if not sep or resource == PODS_CAPTURE else verb


class StaticTokenAuthorizer:
    """Tokens from a CSV file: ``token,user,verbs,namespaces`` with verbs and namespaces separated by ``;`` and
    ``*`` meaning all (verbs: create, delete, get, list on pods/capture; ``VERB:nodes/capture`` and
    ``create:pods/capture-payload`` grant the separate rights, never implied by ``*``). Lines starting with ``#``
    are comments."""

    def __init__(self, path: str) -> None:
        self.tokens: dict[str, StaticToken] = {}
        with open(path, newline="") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if not row or row[0].lstrip().startswith("#"):
                    continue
                if len(row) != 4:
                    raise TokenFileError(f"{path}:{n}: expected token,user,verbs,namespaces")
                token, user, verbs, namespaces = (c.strip() for c in row)
                verb_set: frozenset[str] = frozenset(VERBS) if verbs == "*" else frozenset()
                unknown = set()
                for v in (verbs.split(";") if verbs != "*" else []):
                    try:
                        verb_set |= {_right(v)} if v else set()
                    except KeyError:
                        unknown.add(v)
                if unknown or not token or not user:
                    raise TokenFileError(f"{path}:{n}: bad entry (unknown verbs {sorted(unknown)})" if unknown else
                                     f"{path}:{n}: empty token or user")
                self.tokens[token] = StaticToken(user, verb_set, frozenset(x for x in namespaces.split(";") if x))

    def authenticate(self, token: str | None) -> Principal:
        entry = self.tokens.get(token or "")
        if entry is None:
            raise AuthError("missing or unknown token: pass --token or set PODCAP_TOKEN (see the collector's "
                            "--token-file)")
        return Principal(entry.user)

    def check(self, who: Principal, verb: str, namespace: str | None, resource: str = PODS_CAPTURE) -> None:
        right = verb if resource == PODS_CAPTURE else f"{verb}:{resource}"
        for entry in self.tokens.values():
            if entry.user != who.user:
                continue
            ns_ok = "*" in entry.namespaces or (namespace is not None and namespace in entry.namespaces)
            if right in entry.verbs and ns_ok:
                return
        raise DeniedError(f"user {who.user!r} may not {permission_text(verb, namespace, resource)} (token file)")


class KubeAuthorizer:
    """TokenReview + SubjectAccessReview against the cluster's API server."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise AuthError("no credentials: podcap sends the bearer token of your kubeconfig's user (or "
                            "--token / PODCAP_TOKEN)")
        try:
            result = self.api.review_token(token)
        except KubeError as e:
            raise AuthError(f"cannot verify the token with the API server: {e}") from e
        if result is None:
            raise AuthError("the API server does not accept this token (expired or revoked?)")
        return Principal(result[0], result[1])

    def check(self, who: Principal, verb: str, namespace: str | None, resource: str = PODS_CAPTURE) -> None:
        kind, _, sub = resource.partition("/")
        try:
            allowed, reason = self.api.access_review(who.user, who.groups, verb=verb, resource=kind,
                                                     subresource=sub, namespace=namespace)
        except KubeError as e:
            raise DeniedError(f"cannot check permissions with the API server: {e}") from e
        if not allowed:
            raise DeniedError(f"user {who.user!r} may not {permission_text(verb, namespace, resource)}: grant it "
                              f"with RBAC (verb {verb!r}, resource {resource!r}){'; ' + reason if reason else ''}")


def target_scopes(t: control_pb2.Target) -> tuple[str, list[str | None]]:
    """Where the rights for a target are checked: the resource (``nodes/capture`` for a node, else
    ``pods/capture``) and its namespaces (cluster-wide for a node and for --all-namespaces)."""
    if t.HasField("object") and t.object.kind.lower() in NODE_KIND_NAMES:
        return NODES_CAPTURE, [None]
    return PODS_CAPTURE, [None] if t.all_namespaces else [t.namespace or "default"]
