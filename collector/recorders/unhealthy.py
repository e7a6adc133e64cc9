"""The kubelet's ``Unhealthy`` Events (a liveness, readiness or startup probe failed), as recorder triggers.

One watch over every namespace with the field selector ``involvedObject.kind=Pod,reason=Unhealthy``: the API
server filters, so the collector reads only probe failures, however busy the cluster's events are. The kubelet
reports a probe that keeps failing as *one* Event whose ``count`` grows (MODIFIED), so a failure is news when an
Event appears (ADDED) or its count goes up; an Event already there when the watch (re)lists is history, not news.
The loop is ``listwatch.ListWatch``'s, as for pods and EndpointSlices: the watch resumes from its last
resourceVersion, re-lists on ``410 Gone``, backs off on errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from podcap.collector.kube.client import DEFAULT_WATCH_TIMEOUT_S, KubeApi, WatchStream
from podcap.collector.kube.errors import KubeError
from podcap.collector.kube.listwatch import ListWatch

log = logging.getLogger(__name__)

FIELD_SELECTOR = "involvedObject.kind=Pod,reason=Unhealthy"
MAX_REMEMBERED = 100_000

# (namespace, pod name, pod uid, the Event's message)
OnUnhealthy = Callable[[str, str, str, str], None]


class UnhealthyWatch(ListWatch):
    def __init__(self, api: KubeApi, on_unhealthy: OnUnhealthy, *, watch_timeout_s: int = DEFAULT_WATCH_TIMEOUT_S,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        super().__init__(what="Unhealthy events watch", thread_name="unhealthy-events",
                         watch_timeout_s=watch_timeout_s, backoff_initial_s=backoff_initial_s,
                         backoff_max_s=backoff_max_s)
        self.api = api
        self.on_unhealthy = on_unhealthy
        self._counts: dict[str, int] = {}  # Event uid -> its count as last seen

    def start(self) -> UnhealthyWatch:
        super().start()
        return self

    # ---- what ListWatch asks of a kind ----

    def _list(self) -> tuple[str, Callable[[], None]]:
        items, rv = self.api.list_event_objects(field_selector=FIELD_SELECTOR)
        for obj in items:
            self._seen(obj)  # history: remembered, not fired
        return rv, lambda: None

    def _open(self, resource_version: str, timeout_seconds: int) -> WatchStream:
        return self.api.watch_events(resource_version=resource_version, field_selector=FIELD_SELECTOR,
                                     timeout_seconds=timeout_seconds)

    def _error(self, obj: dict[str, Any]) -> KubeError:
        return self.api.event_status_error(obj)

    def _apply(self, type_: str, obj: dict[str, Any]) -> None:
        if type_ in ("ADDED", "MODIFIED") and self._seen(obj) > 0:
            self._fire(obj)

    # ---- the Events ----

    def _seen(self, obj: dict[str, Any]) -> int:
        """Remember an Event's count; returns how much it grew (its count for a new one)."""
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        count = int(obj.get("count") or 1)
        with self._lock:
            before = self._counts.get(uid, 0)
            if len(self._counts) >= MAX_REMEMBERED and uid not in self._counts:
                self._counts.clear()
            self._counts[uid] = max(before, count)
        return count - before

    def _fire(self, obj: dict[str, Any]) -> None:
        io = obj.get("involvedObject") or {}
        if io.get("kind") != "Pod" or obj.get("reason") != "Unhealthy":
            return  # the server filtered; a stand-in or an old server might not
        try:
            self.on_unhealthy(str(io.get("namespace") or ""), str(io.get("name") or ""), str(io.get("uid") or ""),
                              str(obj.get("message") or "a probe failed"))
        except Exception:
            log.exception("Unhealthy event handler failed")
