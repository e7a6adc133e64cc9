"""The kinds of object a capture can target besides pods: their names as users type them, and the one error for the
rest.

``podcap start deploy/web`` names a capture's target the way ``kubectl`` names objects (``TYPE/NAME``), so the
same words work: ``deploy``, ``deployment``, ``deployments`` and ``deployment.apps`` are one kind. The table here is
the one home of those words, shared by the CLI (which must tell ``deploy/web`` from a pod ``NAMESPACE/NAME``), the
extcap and the collector (which validates every request, from whichever client, with the same message).

``split_object`` decides whether a ``PREFIX/NAME`` argument is an object: a prefix that is a kind, a kind podcap
knows of but does not capture (``cronjob``, ``replicaset``...) or that holds a ``.`` (a namespace never does) is a
kind; anything else is a namespace. A namespace that happens to be called like a kind is still reachable with
``-n NAMESPACE NAME``.

Pure: no imports from the collector, so the CLI can use it without the ``kubernetes`` package.
"""

from __future__ import annotations

from dataclasses import dataclass

from podcap.errors import InvalidInputError
from podcap.names import InvalidNameError, check_node_name, check_pod_name

DEPLOYMENT, STATEFULSET, DAEMONSET, JOB, SERVICE, NODE = "deployment", "statefulset", "daemonset", "job", "service", \
    "node"
WORKLOADS = (DEPLOYMENT, STATEFULSET, DAEMONSET, JOB)
KINDS = (*WORKLOADS, SERVICE, NODE)
POD = "pod"

# kubectl's names for each kind (singular, plural, short, with the group).
_ALIASES: dict[str, tuple[str, ...]] = {
    DEPLOYMENT: ("deploy", "deployments", "deployment.apps", "deployments.apps"),
    STATEFULSET: ("sts", "statefulsets", "statefulset.apps", "statefulsets.apps"),
    DAEMONSET: ("ds", "daemonsets", "daemonset.apps", "daemonsets.apps"),
    JOB: ("jobs", "job.batch", "jobs.batch"),
    SERVICE: ("svc", "services"),
    NODE: ("no", "nodes"),
    POD: ("po", "pods"),
}
ALIASES: dict[str, str] = {alias: kind for kind, names in _ALIASES.items() for alias in (kind, *names)}
# Kinds kubectl knows that a capture cannot target (their pods are reachable through what owns or selects them).
UNSUPPORTED = frozenset({
    "replicaset", "replicasets", "rs", "cronjob", "cronjobs", "cj", "replicationcontroller", "rc", "ingress", "ing",
    "endpoints", "ep", "endpointslice", "endpointslices", "configmap", "cm", "secret", "secrets", "namespace", "ns",
    "serviceaccount", "sa", "persistentvolumeclaim", "pvc", "networkpolicy", "netpol", "podcapture", "podcaptures",
})

SHORT = {DEPLOYMENT: "deploy", STATEFULSET: "statefulset", DAEMONSET: "daemonset", JOB: "job", SERVICE: "svc",
         NODE: "node"}


class ObjectKindError(InvalidInputError):
    """A ``KIND/NAME`` target names a kind podcap cannot capture; the message lists the kinds it can."""


def kinds_text() -> str:
    """What a capture can target, as a user types it."""
    return ("pods (NAME, NAMESPACE/NAME, -l SELECTOR), " + ", ".join(f"{SHORT[k]}/NAME" for k in KINDS))


def canonical_kind(text: str) -> str:
    """The kind ``text`` names (``deploy`` -> ``deployment``); raises ObjectKindError listing the kinds that exist."""
    kind = ALIASES.get(text.strip().lower())
    if kind is None or kind == POD:
        what = "is not a kind podcap can capture" if kind is None and text.strip().lower() in UNSUPPORTED else \
            "is not a pod target here" if kind == POD else "is not a kind podcap knows"
        raise ObjectKindError(f"{text!r} {what}: a capture targets {kinds_text()}")
    return kind


def is_kind_prefix(prefix: str) -> bool:
    """``PREFIX/NAME`` names an object (a kind, known or not), not a pod in namespace PREFIX."""
    p = prefix.lower()
    return p in ALIASES or p in UNSUPPORTED or "." in p


@dataclass(frozen=True)
class ObjectRef:
    """A validated ``KIND/NAME``."""

    kind: str
    name: str

    @property
    def text(self) -> str:
        return f"{SHORT[self.kind]}/{self.name}"

    @property
    def is_node(self) -> bool:
        return self.kind == NODE

    @property
    def is_workload(self) -> bool:
        return self.kind in WORKLOADS


def check_object(kind: str, name: str) -> ObjectRef:
    """A valid ``ObjectRef``; raises ObjectKindError (unknown kind) or InvalidNameError (bad name)."""
    k = canonical_kind(kind)
    if not name:
        raise ObjectKindError(f"{SHORT[k]}/ needs a name: {SHORT[k]}/NAME")
    if k == NODE:
        check_node_name(name)
    else:
        try:
            check_pod_name(name)
        except InvalidNameError as e:
            raise InvalidNameError(str(e).replace("invalid pod name", f"invalid {k} name")) from e
    return ObjectRef(k, name)


def split_object(text: str) -> ObjectRef | None:
    """``KIND/NAME`` as an ObjectRef; None when ``text`` is not of that form (a pod name, ``NAMESPACE/NAME``).
    Raises ObjectKindError for a kind podcap cannot capture."""
    prefix, sep, name = text.partition("/")
    if not sep or not is_kind_prefix(prefix):
        return None
    return check_object(prefix, name)
