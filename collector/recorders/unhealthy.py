"""The kubelet's ``Unhealthy`` Events (a liveness, readiness or startup probe failed), as recorder triggers.

One watch over every namespace with the field selector ``involvedObject.kind=Pod,reason=Unhealthy``: the API
server filters, so the collector reads only probe failures, however busy the cluster's events are. The kubelet
reports a probe that keeps failing as *one* Event whose ``count`` grows (MODIFIED), so a failure is news when an
Event appears (ADDED) or its count goes up; an Event already there when the watch (re)lists is history, not news.
As ``PodWatch``: the watch resumes from its last resourceVersion, re-lists on ``410 Gone``, backs off on errors.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from podcap.collector.kube.client import DEFAULT_WATCH_TIMEOUT_S, KubeApi, WatchStream
from podcap.collector.kube.errors import KubeError, KubeGoneError

log = logging.getLogger(__name__)

FIELD_SELECTOR = "involvedObject.kind=Pod,reason=Unhealthy"
MAX_REMEMBERED = 100_000

# (namespace, pod name, pod uid, the Event's message)
OnUnhealthy = Callable[[str, str, str, str], None]


class UnhealthyWatch:
    def __init__(self, api: KubeApi, on_unhealthy: OnUnhealthy, *, watch_timeout_s: int = DEFAULT_WATCH_TIMEOUT_S,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        self.api = api
        self.on_unhealthy = on_unhealthy
        self.watch_timeout_s = watch_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.resource_version = ""
        self.synced = threading.Event()
        self.last_error: KubeError | None = None
        self._counts: dict[str, int] = {}  # Event uid -> its count as last seen
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._thread = threading.Thread(target=self._run, name="unhealthy-events", daemon=True)

    def start(self) -> UnhealthyWatch:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.abort()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = self.backoff_initial_s
        while not self._stopping.is_set():
            try:
                if not self.resource_version:
                    self._relist()
                self._watch_once()
                self.last_error = None
                delay = self.backoff_initial_s
            except KubeGoneError:
                self.resource_version = ""
            except KubeError as e:
                if self._stopping.is_set():
                    break
                self.last_error = e
                log.warning("Unhealthy events watch: %s (retrying in %.1f s)", e, delay)
                self._stopping.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff_max_s)
            except Exception:  # a bug must not end the triggers silently
                log.exception("Unhealthy events watch failed")
                self._stopping.wait(delay)
                delay = min(delay * 2, self.backoff_max_s)

    def _relist(self) -> None:
        items, rv = self.api.list_event_objects(field_selector=FIELD_SELECTOR)
        for obj in items:
            self._seen(obj)  # history: remembered, not fired
        self.resource_version = rv
        self.synced.set()

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

    def _watch_once(self) -> None:
        stream = self.api.watch_events(resource_version=self.resource_version, field_selector=FIELD_SELECTOR,
                                       timeout_seconds=int(self.watch_timeout_s * random.uniform(1.0, 2.0)))
        with self._lock:
            self._stream = stream
        if self._stopping.is_set():
            stream.abort()
        try:
            for type_, obj in stream:
                if self._stopping.is_set():
                    break
                if type_ == "ERROR":
                    raise self.api.event_status_error(obj)
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                if type_ in ("ADDED", "MODIFIED") and self._seen(obj) > 0:
                    self._fire(obj)
                if rv:
                    self.resource_version = rv
        finally:
            with self._lock:
                self._stream = None
            stream.close()

    def _fire(self, obj: dict[str, Any]) -> None:
        io = obj.get("involvedObject") or {}
        if io.get("kind") != "Pod" or obj.get("reason") != "Unhealthy":
            return  # the server filtered; a stand-in or an old server might not
        try:
            self.on_unhealthy(str(io.get("namespace") or ""), str(io.get("name") or ""), str(io.get("uid") or ""),
                              str(obj.get("message") or "a probe failed"))
        except Exception:
            log.exception("Unhealthy event handler failed")
