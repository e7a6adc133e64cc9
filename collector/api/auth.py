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
==================  ============================================  ==============================

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
from podcap.errors import UnauthenticatedError

log = logging.getLogger(__name__)

VERBS = ("create", "delete", "get", "list")


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


def permission_text(verb: str, namespace: str | None) -> str:
    where = f"in namespace {namespace!r}" if namespace else "cluster-wide"
    return f"{verb} pods/capture {where}"


class Authorizer(Protocol):
    def authenticate(self, token: str | None) -> Principal: ...

    def check(self, who: Principal, verb: str, namespace: str | None) -> None:
        """Raise DeniedError unless ``who`` may ``verb`` pods/capture in ``namespace`` (None = cluster-wide)."""
        ...


class OpenAuthorizer:
    def authenticate(self, token: str | None) -> Principal:
        return Principal("anonymous")

    def check(self, who: Principal, verb: str, namespace: str | None) -> None:
        return None


@dataclass(frozen=True)
class StaticToken:
    user: str
    verbs: frozenset[str]
    namespaces: frozenset[str]  # "*" = all


class StaticTokenAuthorizer:
    """Tokens from a CSV file: ``token,user,verbs,namespaces`` with verbs and namespaces separated by ``;`` and
    ``*`` meaning all (verbs: create, delete, get, list). Lines starting with ``#`` are comments."""

    def __init__(self, path: str) -> None:
        self.tokens: dict[str, StaticToken] = {}
        with open(path, newline="") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if not row or row[0].lstrip().startswith("#"):
                    continue
                if len(row) != 4:
                    raise TokenFileError(f"{path}:{n}: expected token,user,verbs,namespaces")
                token, user, verbs, namespaces = (c.strip() for c in row)
                verb_set = frozenset(VERBS) if verbs == "*" else frozenset(v for v in verbs.split(";") if v)
                unknown = verb_set - set(VERBS)
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

    def check(self, who: Principal, verb: str, namespace: str | None) -> None:
        for entry in self.tokens.values():
            if entry.user != who.user:
                continue
            ns_ok = "*" in entry.namespaces or (namespace is not None and namespace in entry.namespaces)
            if verb in entry.verbs and ns_ok:
                return
        raise DeniedError(f"user {who.user!r} may not {permission_text(verb, namespace)} (token file)")


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

    def check(self, who: Principal, verb: str, namespace: str | None) -> None:
        try:
            allowed, reason = self.api.access_review(who.user, who.groups, verb=verb, resource="pods",
                                                     subresource="capture", namespace=namespace)
        except KubeError as e:
            raise DeniedError(f"cannot check permissions with the API server: {e}") from e
        if not allowed:
            raise DeniedError(f"user {who.user!r} may not {permission_text(verb, namespace)}: grant it with RBAC "
                              f"(verb {verb!r}, resource 'pods/capture'){'; ' + reason if reason else ''}")
