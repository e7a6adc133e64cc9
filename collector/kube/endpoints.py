"""``ServiceEndpoints``: the pods behind one Service, from its EndpointSlices, kept current by a watch.

A ``svc/NAME`` capture covers the Service's endpoints as the cluster publishes them: the EndpointSlices labelled
``kubernetes.io/service-name=NAME`` in its namespace (``discovery.k8s.io/v1``), every endpoint whose ``targetRef``
is a Pod, ready or not (a pod that is not ready yet is often the one whose traffic one wants to see). The slices
are what kube-proxy and every mesh route by, so the capture follows the same pods the Service's traffic reaches,
also when a controller other than the selector's publishes them.

One watch per running ``svc/`` capture (``listwatch.ListWatch``: a list, then a watch from its resourceVersion,
bookmarks, re-list on ``410 Gone``, backoff on errors), not a cluster-wide cache as for pods: Service captures are few,
and a selector-scoped watch costs the API server one small stream each. ``on_change`` runs on the watch thread after
every change (and after every re-list), without locks held: the capture manager attaches pods that became endpoints.
Pods that stop being endpoints stay captured until they end (their traffic up to then is often the point); membership
answers for the pods attached from now on.

The calls are ``client.KubeApi``'s; this module does not import ``kubernetes``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from podcap.collector.kube.client import DEFAULT_WATCH_TIMEOUT_S, KubeApi, WatchStream
from podcap.collector.kube.errors import KubeError
from podcap.collector.kube.listwatch import ListWatch

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def slice_pods(obj: dict[str, Any], namespace: str) -> frozenset[tuple[str, str]]:
    """The pods an EndpointSlice lists, as (uid, name); a uid may be "" (a targetRef without one)."""
    out = set()
    for ep in obj.get("endpoints") or []:
        ref = ep.get("targetRef") or {}
        if ref.get("kind") == "Pod" and ref.get("name") and (ref.get("namespace") or namespace) == namespace:
            out.add((str(ref.get("uid") or ""), str(ref["name"])))
    return frozenset(out)


class ServiceEndpoints(ListWatch):
    """The Service's endpoint pods (``pod in endpoints``), current as of the watch."""

    def __init__(self, api: KubeApi, namespace: str, service: str, *, on_change: Callable[[], None] = lambda: None,
                 watch_timeout_s: int = DEFAULT_WATCH_TIMEOUT_S, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 30.0) -> None:
        super().__init__(what=f"EndpointSlices of service {namespace}/{service}",
                         thread_name=f"endpoints-{namespace}-{service}", watch_timeout_s=watch_timeout_s,
                         backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s)
        self.api = api
        self.namespace = namespace
        self.service = service
        self.on_change = on_change
        self.selector = f"{SERVICE_NAME_LABEL}={service}"
        self._slices: dict[str, frozenset[tuple[str, str]]] = {}
        self._uids: frozenset[str] = frozenset()
        self._names: frozenset[str] = frozenset()

    # ---- public ----

    def start(self) -> ServiceEndpoints:
        super().start()
        return self

    def wait_synced(self, timeout: float) -> bool:
        """True once the first list is in; on timeout, raise the last error if there was one."""
        if self._synced.wait(timeout):
            return True
        if self.last_error is not None:
            raise self.last_error
        return False

    def __contains__(self, pod: object) -> bool:
        uid, name = str(getattr(pod, "uid", "")), str(getattr(pod, "name", ""))
        namespace = getattr(pod, "namespace", None)
        if namespace != self.namespace:
            return False
        with self._lock:
            return uid in self._uids or name in self._names

    def pod_names(self) -> list[str]:
        with self._lock:
            return sorted({n for pods in self._slices.values() for _, n in pods})

    # ---- what ListWatch asks of a kind ----

    def _set(self, slices: dict[str, frozenset[tuple[str, str]]]) -> None:
        with self._lock:
            self._slices = slices
            self._uids = frozenset(u for pods in slices.values() for u, _ in pods if u)
            # A targetRef without a uid is matched by name (the pod's namespace is the Service's).
            self._names = frozenset(n for pods in slices.values() for u, n in pods if not u)

    def _list(self) -> tuple[str, Callable[[], None]]:
        items, rv = self.api.list_endpoint_slices(self.namespace, self.selector)
        self._set({str(o["metadata"]["name"]): slice_pods(o, self.namespace) for o in items})
        return rv, self.on_change

    def _open(self, resource_version: str, timeout_seconds: int) -> WatchStream:
        return self.api.watch_endpoint_slices(self.namespace, resource_version=resource_version,
                                              label_selector=self.selector, timeout_seconds=timeout_seconds)

    def _error(self, obj: dict[str, Any]) -> KubeError:
        return self.api.endpoint_slice_error(obj, namespace=self.namespace)

    def _apply(self, type_: str, obj: dict[str, Any]) -> None:
        with self._lock:
            slices = dict(self._slices)
        name = str((obj.get("metadata") or {}).get("name", ""))
        if type_ == "DELETED":
            slices.pop(name, None)
        else:
            slices[name] = slice_pods(obj, self.namespace)
        self._set(slices)
        self.on_change()
