"""What an object target stands for when a capture starts, and following it while the capture runs.

``ObjectTargets.resolve`` turns ``Target.object`` into what ``TargetSpec.matches`` and placement need:

- a workload (``deploy``, ``statefulset``, ``daemonset``, ``job``): its ``spec.selector``, read from the API
  (``podcap.collector.kube.workloads``) and stored in the request (``Target.object_selector``), so that recovery
  after a collector restart follows the same pods without asking again;
- ``svc/NAME``: the Service must have a selector (else a one-line error); its pods are its EndpointSlices'
  endpoints, kept current by a ``ServiceEndpoints`` watch for as long as the capture runs (``follow``,
  ``release``); a change calls back the placement, which attaches pods that became endpoints. Recorders resolve
  their targets here too and follow a Service under their own id (``follow_key``, ``recover_key``,
  ``release_key``);
- ``node/NAME``: the node's stand-in pod (``podcap.nodes``); it must have an agent.

Workloads and Services need the Kubernetes API; without it they are refused with what to do instead. A missing
object is NotFound with the names of those that exist in the namespace.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from podcap.collector.agents import AgentRegistry
from podcap.collector.captures.model import Capture
from podcap.collector.kube.client import KubeApi
from podcap.collector.kube.endpoints import ServiceEndpoints
from podcap.collector.kube.errors import KubeNotFoundError
from podcap.collector.kube.kinds import SERVICE, ObjectRef
from podcap.collector.kube.workloads import service_selector, workload_selector
from podcap.collector.targets import NoMatchError, TargetSpec
from podcap.errors import NotFoundError, PreconditionError
from podcap.names import NodeName
from podcap.nodes import node_pod
from podcap.pods import PodRef
from podcap.v1 import control_pb2

log = logging.getLogger(__name__)

ENDPOINTS_SYNC_S = 10.0


class NeedsKubernetesError(PreconditionError):
    """A workload or Service target on a collector without the Kubernetes API."""


class ObjectNotFoundError(NotFoundError):
    """The workload, Service or node does not exist (the message lists those that do)."""


def _preview(names: list[str], limit: int = 20) -> str:
    if not names:
        return "none"
    return ", ".join(names[:limit]) + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


class ObjectTargets:
    def __init__(self, api: KubeApi | None, registry: AgentRegistry) -> None:
        self.api = api
        self.registry = registry
        self._lock = threading.Lock()
        self._watches: dict[str, ServiceEndpoints] = {}

    def resolve(self, req: control_pb2.StartCaptureRequest, spec: TargetSpec) -> TargetSpec:
        """``spec`` with what its object stands for (unchanged without one). Raises NeedsKubernetesError,
        ObjectNotFoundError, WorkloadSelectorError, ServiceWithoutSelectorError and the API's errors. A Service's
        watch is running when this returns: ``follow`` or ``release`` it."""
        obj = spec.object
        if obj is None or obj.is_node:
            return spec
        api, namespace = self.api, spec.namespace
        assert namespace is not None  # parse_target refuses --all-namespaces with an object
        if api is None:
            raise NeedsKubernetesError(f"{obj.text} needs the collector to read it from the Kubernetes API (it runs "
                                       "without --kubeconfig or a service account): capture its pods with -l "
                                       "SELECTOR or by name")
        try:
            found = api.read_object(obj.kind, namespace, obj.name)
        except KubeNotFoundError as e:
            have = api.list_object_names(obj.kind, namespace)
            raise ObjectNotFoundError(f"no {obj.kind} {obj.name!r} in namespace {namespace!r}; {obj.kind}s there: "
                                      f"{_preview(have)}") from e
        if obj.kind != SERVICE:
            selector = workload_selector(obj.kind, found)
            req.target.object_selector = str(selector)
            return dataclasses.replace(spec, object_selector=selector)
        req.target.object_selector = str(service_selector(found))
        endpoints = ServiceEndpoints(api, namespace, obj.name).start()
        try:
            if not endpoints.wait_synced(ENDPOINTS_SYNC_S):
                raise NoMatchError(f"the EndpointSlices of {obj.text} were not listed within {ENDPOINTS_SYNC_S:.0f} s")
        except Exception:
            endpoints.stop()
            raise
        return dataclasses.replace(spec, members=endpoints)

    def node_pods(self, spec: TargetSpec) -> list[PodRef]:
        """A node target's one stand-in pod; raises ObjectNotFoundError when the node has no agent."""
        obj = spec.object
        assert obj is not None and obj.is_node
        node = NodeName(obj.name)
        if not self.registry.known(node):
            nodes = sorted({str(c.node) for c in self.registry.agents()})
            raise ObjectNotFoundError(f"node {obj.name!r} has no podcap agent ({self.registry.describe(node)}); "
                                      f"nodes with agents: {_preview(nodes)}")
        return [node_pod(node)]

    def follow(self, cap: Capture, changed: Callable[[Capture], None]) -> None:
        """Call ``changed(cap)`` whenever the capture's Service endpoints change, until ``release``."""
        self.follow_key(cap.id, cap.target, lambda: changed(cap))

    def follow_key(self, key: str, spec: TargetSpec, changed: Callable[[], None]) -> None:
        """Call ``changed()`` whenever ``spec``'s Service endpoints change, until ``release_key(key)``; ``key`` is
        what follows them: a capture's id, or a recorder's (``rec-…``, never a capture id)."""
        members = spec.members
        if isinstance(members, ServiceEndpoints):
            with self._lock:
                self._watches[key] = members
            members.on_change = changed

    def recover(self, cap: Capture, changed: Callable[[Capture], None]) -> None:
        """A running Service capture found at start-up: watch its endpoints again (its pods so far are kept)."""
        def adopt(spec: TargetSpec) -> None:
            cap.target = spec
        self.recover_key(cap.id, cap.target, lambda: changed(cap), adopt)

    def recover_key(self, key: str, spec: TargetSpec, changed: Callable[[], None],
                    adopt: Callable[[TargetSpec], None]) -> None:
        """A Service target found at start-up (of a capture or a recorder): ``adopt`` the spec with a new watch of
        its endpoints, followed as ``follow_key`` does, before the watch starts (so no change is missed)."""
        obj: ObjectRef | None = spec.object
        if obj is None or obj.kind != SERVICE or self.api is None or spec.namespace is None:
            return
        endpoints = ServiceEndpoints(self.api, spec.namespace, obj.name)
        spec = dataclasses.replace(spec, members=endpoints)
        adopt(spec)
        self.follow_key(key, spec, changed)
        endpoints.start()

    def discard(self, spec: TargetSpec) -> None:
        """Stop the watch ``resolve`` started for a capture that did not start."""
        if isinstance(spec.members, ServiceEndpoints):
            spec.members.stop(timeout=0)

    def release(self, cap: Capture) -> None:
        """Stop following the capture's object (it ended)."""
        self.release_key(cap.id)

    def release_key(self, key: str) -> None:
        """Stop following what ``follow_key(key, ...)`` follows (a recorder stopped)."""
        with self._lock:
            watch = self._watches.pop(key, None)
        if watch is not None:
            watch.stop(timeout=0)

    def close(self) -> None:
        with self._lock:
            watches, self._watches = list(self._watches.values()), {}
        for w in watches:
            w.stop()
