"""``PodWatch``: a cache of pods kept current by one list and then one long watch (the informer pattern).

The loop (resourceVersion continuity and bookmarks, re-list on ``410 Gone``, backoff with jitter, ``stop()`` at
once) is ``listwatch.ListWatch``'s; this module says what a pod list and a pod event change in the cache, and
diffs a re-list against the cache so listeners see each change once, never lost and never repeated.

The calls themselves are ``client.KubeApi``'s; this module does not import ``kubernetes``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from podcap.collector.kube.client import DEFAULT_WATCH_TIMEOUT_S, KubeApi, WatchStream
from podcap.collector.kube.errors import KubeError
from podcap.collector.kube.listwatch import ListWatch
from podcap.collector.kube.pods import KubePod, pod_from_object
from podcap.pods import PodRef

log = logging.getLogger(__name__)

PodCallback = Callable[[PodRef], None]


def _noop(_pod: PodRef) -> None:
    pass


class PodWatch(ListWatch):
    """Keeps a cache of pods current (list, then watch from the list's resourceVersion) on its own thread.

    Callbacks run on the watch thread, after the cache is updated and without locks held; they must not block for
    long. ``on_added``: a pod entered the cache (created, scheduled, or started matching); ``on_modified``: what
    ``KubePod.view`` shows changed (labels, IP, node, phase...); ``on_deleted``: it left (deleted, finished,
    stopped matching). After a re-list the cache is diffed with the list, so each change is reported once, never
    lost and never repeated.
    """

    def __init__(self, api: KubeApi, *, namespace: str | None = None, label_selector: str = "",
                 field_selector: str = "", on_added: PodCallback = _noop, on_modified: PodCallback = _noop,
                 on_deleted: PodCallback = _noop, watch_timeout_s: int = DEFAULT_WATCH_TIMEOUT_S,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0, name: str = "pod-watch") -> None:
        super().__init__(what="pod watch", thread_name=name, watch_timeout_s=watch_timeout_s,
                         backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s)
        self.api = api
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.on_added, self.on_modified, self.on_deleted = on_added, on_modified, on_deleted
        self._cache: dict[str, KubePod] = {}

    # ---- public ----

    def start(self) -> PodWatch:
        super().start()
        return self

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True once the first list is in the cache."""
        return self._synced.wait(timeout)

    def pods(self) -> list[PodRef]:
        with self._lock:
            return [p.ref for p in self._cache.values()]

    def entries(self) -> list[KubePod]:
        with self._lock:
            return list(self._cache.values())

    def get(self, uid: str) -> KubePod | None:
        with self._lock:
            return self._cache.get(uid)

    # ---- what ListWatch asks of a kind ----

    def _list(self) -> tuple[str, Callable[[], None]]:
        objs, rv = self.api.list_pod_objects(self.namespace, self.label_selector, self.field_selector)
        fresh: dict[str, KubePod] = {}
        for obj in objs:
            p = pod_from_object(obj)
            if p is not None:
                fresh[p.ref.uid] = p
        with self._lock:
            old, self._cache = self._cache, fresh

        def tell() -> None:
            for uid, p in old.items():
                if uid not in fresh:
                    self._emit(self.on_deleted, p.ref)
            for uid, p in fresh.items():
                prev = old.get(uid)
                if prev is None:
                    self._emit(self.on_added, p.ref)
                elif prev.view() != p.view():
                    self._emit(self.on_modified, p.ref)
        return rv, tell

    def _open(self, resource_version: str, timeout_seconds: int) -> WatchStream:
        return self.api.watch_pods(self.namespace, resource_version=resource_version,
                                   label_selector=self.label_selector, field_selector=self.field_selector,
                                   timeout_seconds=timeout_seconds)

    def _error(self, obj: dict[str, Any]) -> KubeError:
        return self.api.status_error(obj, verb="watch", namespace=self.namespace)

    def _apply(self, type_: str, obj: dict[str, Any]) -> None:
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        p = None if type_ == "DELETED" else pod_from_object(obj)
        with self._lock:
            prev = self._cache.get(uid)
            if p is None:
                self._cache.pop(uid, None)
            else:
                self._cache[uid] = p
        if p is None:
            if prev is not None:
                self._emit(self.on_deleted, prev.ref)
        elif prev is None:
            self._emit(self.on_added, p.ref)
        elif prev.view() != p.view():
            self._emit(self.on_modified, p.ref)

    @staticmethod
    def _emit(cb: PodCallback, pod: PodRef) -> None:
        try:
            cb(pod)
        except Exception:
            log.exception("pod watch callback failed for %s", pod.display)
