"""Payload policy per namespace: how much of each packet a capture may store, and the one function every way of
starting a capture calls (``effective_snaplen``).

**The policy.** A namespace caps what is stored of each packet with an annotation::

    kubectl annotate namespace shop podcap.io/max-snaplen=128

A capture in that namespace started by a user without ``create pods/capture-payload`` there runs with a snaplen of
at most 128 bytes: headers (Ethernet, IP, TCP/UDP and then some) are stored, payloads are not; every packet keeps
its wire length. A user with the right gets what they ask for (whole packets by default). Why an annotation and a
subresource right: the namespace's owners (who may annotate it) decide what leaves it, RBAC (which teams already
run) decides who is trusted with payloads, and neither needs a new resource type installed. Why a snaplen rather
than redaction: it is enforced by the kernel's capture itself (the bytes never leave the node), costs nothing per
packet, and a capped file is still a valid pcap every tool reads.

**Where it applies.** ``effective_snaplen`` decides for one start, for one principal and target: the CLI's and the
extcap's ``StartCapture`` call it (``podcap.collector.api.control``), and so must every other path that starts a
capture on someone's behalf (a PodCapture resource: its creator; a recorder: whoever set it up). The decision is
stored with the capture (``Target.payload_cap``: the snaplen, what was asked, why), shown by ``status`` and written
to the audit record of the start.

- A target in one namespace: that namespace's cap, unless the principal has ``create pods/capture-payload`` there.
- ``--all-namespaces``: unless the principal has the right cluster-wide, the smallest cap of any namespace (pods
  of any namespace may be attached while it runs).
- ``node/NAME``: no namespace applies. A node's traffic is every namespace's, which is why ``nodes/capture`` is a
  separate right no ``pods/capture`` grant implies.
- The policy is read when the capture starts; changing the annotation later does not change running captures.
- A value that is not a whole number of bytes from 1 to 262144 refuses captures of users without the right (fail
  closed): the message names the namespace and the value to fix. Without the Kubernetes API there are no
  namespace annotations and no caps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from podcap.collector.api.auth import PODS_CAPTURE_PAYLOAD, Authorizer, DeniedError, Principal, target_scopes
from podcap.collector.kube.client import KubeApi
from podcap.errors import PreconditionError
from podcap.formats.pcap import MAX_SNAPLEN
from podcap.v1 import control_pb2

ANNOTATION = "podcap.io/max-snaplen"


class PayloadPolicyError(PreconditionError):
    """A namespace's payload annotation is not a valid snaplen: captures there are refused until it is fixed."""


class NamespacePolicies(Protocol):
    """Where namespaces' annotations come from."""

    def annotations(self, namespace: str) -> Mapping[str, str]:
        """The namespace's annotations ({} when it has none or does not exist)."""
        ...

    def all_annotations(self) -> dict[str, Mapping[str, str]]:
        """Every namespace's annotations, by namespace."""
        ...


class NoPolicies:
    """Without the Kubernetes API: no namespace has annotations."""

    def annotations(self, namespace: str) -> Mapping[str, str]:
        return {}

    def all_annotations(self) -> dict[str, Mapping[str, str]]:
        return {}


class KubeNamespacePolicies:
    """Namespaces' annotations read from the API server at each start (a start is rare; a read is cheap and exact)."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api

    def annotations(self, namespace: str) -> Mapping[str, str]:
        obj = self.api.read_namespace(namespace)
        return _annotations(obj) if obj is not None else {}

    def all_annotations(self) -> dict[str, Mapping[str, str]]:
        return {str((o.get("metadata") or {}).get("name", "")): _annotations(o) for o in self.api.list_namespaces()}


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in ((obj.get("metadata") or {}).get("annotations") or {}).items()}


def namespace_cap(namespace: str, annotations: Mapping[str, str]) -> int | None:
    """The namespace's cap in bytes, None without one. Raises PayloadPolicyError for a value that is not one."""
    raw = annotations.get(ANNOTATION)
    if raw is None:
        return None
    text = raw.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_SNAPLEN:
        raise PayloadPolicyError(f"namespace {namespace!r} has annotation {ANNOTATION}={raw!r}, which is not a "
                                 f"number of bytes from 1 to {MAX_SNAPLEN}: captures there without "
                                 f"create {PODS_CAPTURE_PAYLOAD} are refused until it is fixed")
    return int(text)


@dataclass(frozen=True)
class PayloadDecision:
    """The snaplen a capture runs with (0 = whole packets) and, when a policy capped it, why."""

    snaplen: int
    cap: control_pb2.PayloadCap | None = None

    def apply(self, req: control_pb2.StartCaptureRequest) -> None:
        """Write the decision into the request the capture is started (and stored) with."""
        req.settings.snaplen = self.snaplen
        req.target.ClearField("payload_cap")
        if self.cap is not None:
            req.target.payload_cap.CopyFrom(self.cap)


def _may(auth: Authorizer, who: Principal, namespace: str | None) -> bool:
    try:
        auth.check(who, "create", namespace, PODS_CAPTURE_PAYLOAD)
    except DeniedError:
        return False
    return True


def effective_snaplen(policies: NamespacePolicies, auth: Authorizer, who: Principal, target: control_pb2.Target,
                      requested: int) -> PayloadDecision:
    """The snaplen ``who`` may capture ``target`` with, having asked for ``requested`` (0 = whole packets): the one
    decision of the payload policy (module docstring), for every way of starting a capture. Raises
    PayloadPolicyError (a namespace's annotation is invalid) and the Kubernetes API's errors (fail closed)."""
    resource, namespaces = target_scopes(target)
    if resource != "pods/capture":
        return PayloadDecision(requested)
    (namespace,) = namespaces
    try:
        if namespace is not None:
            caps = {namespace: namespace_cap(namespace, policies.annotations(namespace))}
        else:
            caps = {ns: namespace_cap(ns, a) for ns, a in sorted(policies.all_annotations().items())}
    except PayloadPolicyError:
        if _may(auth, who, namespace):
            return PayloadDecision(requested)
        raise
    capped = {ns: c for ns, c in caps.items() if c is not None}
    if not capped:
        return PayloadDecision(requested)
    ns, limit = min(capped.items(), key=lambda kv: (kv[1], kv[0]))
    if limit >= (requested or MAX_SNAPLEN) or _may(auth, who, namespace):
        return PayloadDecision(requested)
    where = f"namespace {ns!r} caps" if namespace is not None else \
        f"namespace {ns!r} (the smallest cap of {len(capped)} capped namespace{'s' if len(capped) > 1 else ''}) caps"
    scope = "there" if namespace is not None else "cluster-wide"
    reason = (f"{where} stored packets at {limit} bytes (annotation {ANNOTATION}); user {who.user!r} may not "
              f"create {PODS_CAPTURE_PAYLOAD} {scope}")
    return PayloadDecision(limit, control_pb2.PayloadCap(snaplen=limit, requested=requested, reason=reason))
