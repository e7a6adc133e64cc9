"""The cluster's pods as the collector sees them through the API server: one shared, watched cache.

``ClusterInventory`` is the collector's pod source when it runs with Kubernetes. It is the same shape as
``AgentRegistry.pods()`` (a list of ``PodRef``), so target resolution is unchanged, and it tells listeners (the
capture manager) about pods that appear, change or go, so dynamic captures attach new pods as they are scheduled.

Why one cache for everything: a single ``PodWatch`` over all namespaces, with no selectors, serves every capture
and every selector. The API server sees one list at start (and after a ``410 Gone``) and one long watch; starting a
capture costs it nothing, and the load does not grow with the number of captures or users. Resolution reads the
cache, so it is as fresh as the watch (typically milliseconds behind).

Field selectors (``--field-selector``) are applied **locally, to the cache**, not by a list call to the API
server, because:

- dynamic captures must judge pods that appear *later* against the same selector: a list answers only for now,
  and a per-capture filtered watch would multiply watches (the load we avoid above);
- the same selector then means the same pods with or without an API server (agents' inventories have these
  fields too: name, namespace, node; their pods are running), and it is validated before anything is dispatched,
  with a message that names the unsupported field;
- ``spec.nodeName``, ``metadata.name``, ``metadata.namespace``, ``status.phase`` (plus ``spec.hostNetwork`` and
  ``status.podIP``) are what a capture needs; the cache keeps each of them. The syntax and semantics are the API
  server's (``=``/``==``/``!=``, ``,`` = AND, ``\\`` escapes), so a selector copied from ``kubectl`` works; the
  grammar and the matching are ``selectors.py``'s, shared with label selectors.

The cost is memory for every scheduled pod's ``PodRef`` (about 1 KiB each: 10k pods ~ 10 MiB). Pods that are not
scheduled yet or have finished (Succeeded/Failed) are not in the cache: they have no network to capture, and a
``status.phase=Succeeded`` selector therefore matches nothing.

How the capture manager uses it (``ClusterListener``):

- ``start()``: ``pods = inventory.select(fields, running_only=True)`` then ``resolve(spec, pods)``; refuse to
  start while the cache is not synced (``inventory.require_synced()`` raises the watch's last ``KubeError``, e.g.
  403 with the RBAC fix).
- ``pod_added``/``pod_changed``: attach the pod to every running dynamic capture whose target and field selector
  match it, once ``inventory.running(pod)``: the API reports a pod as soon as it is scheduled, before its sandbox
  exists, and an agent answers a start for a pod it cannot see with FAILED. A Pending pod is attached by the
  ``pod_changed`` that reports it Running (or by its agent's next inventory, whichever comes first: pods are
  keyed by uid, so a pod reported by both is attached once).
- ``pod_deleted``: nothing to do for the capture itself — the node's agent sees the sandbox go and reports the
  pod's stream ended — but it is the earliest signal and can be shown in status.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from podcap.collector.kube.client import DEFAULT_WATCH_TIMEOUT_S, KubeApi
from podcap.collector.kube.errors import KubeError
from podcap.collector.kube.pods import KubePod
from podcap.collector.kube.selectors import Selector, pod_fields
from podcap.collector.kube.watch import PodWatch
from podcap.pods import PodRef

log = logging.getLogger(__name__)


# ---- the inventory ----


class ClusterListener:
    """Callbacks of the capture manager. Called on the watch thread, without inventory locks held."""

    def pod_added(self, pod: PodRef) -> None: ...

    def pod_changed(self, pod: PodRef) -> None: ...

    def pod_deleted(self, pod: PodRef) -> None: ...


class ClusterNotSyncedError(KubeError):
    """The pod cache has not been filled yet (the API server is unreachable or forbids listing pods)."""


class ClusterInventory:
    """All scheduled, unfinished pods of the cluster, kept current by one watch."""

    def __init__(self, api: KubeApi, *, watch_timeout_s: int = DEFAULT_WATCH_TIMEOUT_S,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        self.api = api
        self._listeners: list[ClusterListener] = []
        self._listeners_lock = threading.Lock()
        self._watch = PodWatch(api, namespace=None, on_added=self._added, on_modified=self._changed,
                               on_deleted=self._deleted, watch_timeout_s=watch_timeout_s,
                               backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s,
                               name="cluster-pods")

    # ---- lifecycle ----

    def start(self) -> ClusterInventory:
        self._watch.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._watch.stop(timeout)

    def subscribe(self, listener: ClusterListener) -> None:
        with self._listeners_lock:
            self._listeners.append(listener)

    @property
    def synced(self) -> bool:
        return self._watch.synced

    @property
    def error(self) -> KubeError | None:
        """The watch's last error while it has not recovered (None when healthy)."""
        return self._watch.last_error

    def wait_synced(self, timeout: float) -> bool:
        """Wait for the first full list. True when synced; on timeout, raise the watch's last error if it had one
        (e.g. KubeForbiddenError with the RBAC to grant), else return False."""
        if self._watch.wait_synced(timeout):
            return True
        err = self._watch.last_error
        if err is not None:
            raise err
        return False

    def require_synced(self) -> None:
        """Raise unless the cache can answer (for the capture manager's ``start``)."""
        if self.synced:
            return
        err = self._watch.last_error
        raise ClusterNotSyncedError("the collector has not listed the cluster's pods yet"
                                    + (f": {err}" if err else "; try again in a moment"))

    # ---- reads ----

    def pods(self) -> list[PodRef]:
        """The same shape as ``AgentRegistry.pods()``."""
        return self._watch.pods()

    def get(self, uid: str) -> KubePod | None:
        return self._watch.get(uid)

    def fields(self, pod: PodRef) -> dict[str, str]:
        """``pod_fields`` with the phase the API reports (Running for a pod the cache does not hold)."""
        kp = self._watch.get(pod.uid)
        return pod_fields(pod, kp.phase if kp is not None else "Running")

    def select(self, selector: Selector, *, running_only: bool = False) -> list[PodRef]:
        """The cached pods that match a field selector (``running_only``: and whose phase is Running)."""
        return [e.ref for e in self._watch.entries()
                if (not running_only or e.phase == "Running") and selector.matches(pod_fields(e.ref, e.phase))]

    def running(self, pod: PodRef) -> bool:
        """The API reports the pod Running: its sandbox exists on its node, so its agent can find it."""
        kp = self._watch.get(pod.uid)
        return kp is not None and kp.phase == "Running"

    # ---- watch callbacks ----

    def _notify(self, fn: Callable[[ClusterListener], None]) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                fn(listener)
            except Exception:
                log.exception("cluster listener failed")

    def _added(self, pod: PodRef) -> None:
        self._notify(lambda lis: lis.pod_added(pod))

    def _changed(self, pod: PodRef) -> None:
        self._notify(lambda lis: lis.pod_changed(pod))

    def _deleted(self, pod: PodRef) -> None:
        self._notify(lambda lis: lis.pod_deleted(pod))
