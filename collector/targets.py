"""What a capture covers: validating a ``Target`` and resolving it to pods.

Resolution runs against a pod inventory — the union of what the agents report (no Kubernetes needed) or, with an
API server, what it lists. Errors name what exists, so the user's next command is obvious: an unknown namespace
lists the namespaces, unknown pods list the pods of that namespace.

A target may instead name an object (``Target.object``, kinds in ``podcap.collector.kube.kinds``). What the object
stands for is found by the collector when the capture starts (``podcap.collector.captures.target_objects``) and
kept on the ``TargetSpec``: a workload's label selector (``object_selector``: immutable in the API, so resolving it
once is exact, and it is stored with the capture so a restarted collector follows the same pods), a Service's
current endpoints (``members``, kept current by a watch of its EndpointSlices), or nothing for a node (its stand-in
pod, ``podcap.nodes``). Until then, and for a node, an object target matches no pod: nothing is attached by guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from podcap.collector.kube.kinds import ALIASES, SHORT, ObjectKindError, ObjectRef, check_object
from podcap.collector.kube.selectors import Selector, SelectorError, parse_selector
from podcap.errors import InvalidInputError, NotFoundError
from podcap.names import InvalidNameError, check_namespace, check_pod_name
from podcap.pods import PodRef
from podcap.v1 import control_pb2

MAX_POD_NAMES = 1000


class TargetError(InvalidInputError):
    """The target is malformed (bad name, bad selector)."""


class NoMatchError(NotFoundError):
    """The target is well-formed but names pods or namespaces that do not exist."""


class PodMembership(Protocol):
    """A set of pods that changes while a capture runs (a Service's endpoints)."""

    def __contains__(self, pod: object) -> bool: ...


@dataclass(frozen=True)
class TargetSpec:
    """A validated target."""

    namespace: str | None  # None = all namespaces
    selector: Selector
    pod_names: tuple[str, ...]
    object: ObjectRef | None = None
    # Found when the capture starts (see the module docstring); None until then.
    object_selector: Selector | None = None
    members: PodMembership | None = None

    @property
    def dynamic(self) -> bool:
        """Pods that appear later and match are attached while the capture runs (not for explicit pod lists, nor
        for a node)."""
        return not self.pod_names and not (self.object is not None and self.object.is_node)

    def matches(self, pod: PodRef) -> bool:
        if self.namespace is not None and pod.namespace != self.namespace:
            return False
        if self.pod_names and pod.name not in self.pod_names:
            return False
        if self.object is not None:
            if self.object.is_node:
                return False
            if self.object.is_workload:
                if self.object_selector is None or not self.object_selector.matches(pod.labels):
                    return False
            elif self.members is None or pod not in self.members:
                return False
        return self.selector.matches(pod.labels)


def parse_target(t: control_pb2.Target) -> TargetSpec:
    obj: ObjectRef | None = None
    object_selector: Selector | None = None
    try:
        if t.HasField("object"):
            obj = check_object(t.object.kind, t.object.name)
        namespace = None if t.all_namespaces else check_namespace(t.namespace or "default")
        if len(t.pod_names) > MAX_POD_NAMES:
            raise TargetError(f"at most {MAX_POD_NAMES} pod names per capture")
        names = tuple(dict.fromkeys(check_pod_name(n) for n in t.pod_names))
        selector = parse_selector(t.selector)
        if obj is not None and obj.is_workload and t.object_selector:
            object_selector = parse_selector(t.object_selector)
    except ObjectKindError:
        raise
    except (InvalidNameError, SelectorError) as e:
        raise TargetError(str(e)) from e
    if names and namespace is None:
        raise TargetError("pod names need a namespace (-n NAMESPACE), not --all-namespaces")
    if obj is not None:
        if names:
            raise TargetError(f"{obj.text} and pod names exclude each other: one capture covers one of them")
        if obj.is_node:
            if t.selector or t.field_selector:
                raise TargetError(f"{obj.text} captures the node's own network: it takes no -l/--field-selector")
            namespace = None
        elif namespace is None:
            raise TargetError(f"{obj.text} needs its namespace (-n NAMESPACE), not --all-namespaces")
    return TargetSpec(namespace, selector, names, obj, object_selector)


def _preview(items: Iterable[str], limit: int = 20) -> str:
    items = sorted(items)
    if not items:
        return "none"
    more = f", … ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def resolve(spec: TargetSpec, pods: Iterable[PodRef]) -> list[PodRef]:
    """The pods the target covers now. Raises NoMatchError with what exists when nothing (or a named pod) is
    missing."""
    pods = list(pods)
    namespaces = {p.namespace for p in pods}
    if spec.namespace is not None and spec.namespace not in namespaces:
        raise NoMatchError(f"namespace {spec.namespace!r} has no pods on any connected node; "
                           f"namespaces with pods: {_preview(namespaces)}")
    in_ns = [p for p in pods if spec.namespace is None or p.namespace == spec.namespace]
    if spec.pod_names:
        present = {p.name for p in in_ns}
        missing = [n for n in spec.pod_names if n not in present]
        if missing:
            raise NoMatchError(f"no pod {_preview(missing)} in namespace {spec.namespace!r}; "
                               f"pods there: {_preview(present)}")
    matched = sorted((p for p in in_ns if spec.matches(p)), key=lambda p: (p.namespace, p.name, p.uid))
    if not matched and spec.object is not None:
        how = f" (selector {spec.object_selector})" if spec.object_selector is not None else " (its endpoints)"
        narrowed = f" matching {str(spec.selector)!r}" if spec.selector else ""
        raise NoMatchError(f"{spec.object.text} in namespace {spec.namespace!r} has no running pods{narrowed}"
                           f"{how} now; pods there: {_preview(p.name for p in in_ns)}")
    if not matched:
        where = f"namespace {spec.namespace!r}" if spec.namespace is not None else "any namespace"
        raise NoMatchError(f"no pods in {where} match selector {str(spec.selector)!r}; "
                           f"pods there: {_preview(p.name for p in in_ns)}")
    return matched


MAX_TARGET_TEXT = 2000


def target_text(t: control_pb2.Target) -> str:
    """A target in one line, for audit records and the CLI's tables: ``ns=shop selector=app=web fields=… pods=…``
    (``all namespaces`` instead of ``ns=``); cut at ``MAX_TARGET_TEXT`` characters so an audit record stays small."""
    if t.HasField("object") and t.object.kind in ("node", "no", "nodes"):
        return f"node/{t.object.name}"[:MAX_TARGET_TEXT]
    parts = ["all namespaces" if t.all_namespaces else f"ns={t.namespace or 'default'}"]
    if t.HasField("object"):
        parts.append(f"{SHORT.get(ALIASES.get(t.object.kind, ''), t.object.kind)}/{t.object.name}")
    if t.selector:
        parts.append(f"selector={t.selector}")
    if t.field_selector:
        parts.append(f"fields={t.field_selector}")
    if t.pod_names:
        parts.append("pods=" + ",".join(t.pod_names))
    return " ".join(parts)[:MAX_TARGET_TEXT]
