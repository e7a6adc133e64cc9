"""``PodWatch``: a cache of pods kept current by one list and then one long watch (the informer pattern).

- ``resourceVersion`` continuity: the watch starts from the list's resourceVersion and every event (including
  ``BOOKMARK``, asked for with ``allowWatchBookmarks``) advances it, so a quiet watch that is re-opened resumes
  where it stopped instead of re-listing.
- ``410 Gone`` (HTTP, or the in-band ERROR event: both are ``KubeGoneError``) -> re-list and diff the list against
  the cache, so listeners see each change once, never lost and never repeated.
- Other errors -> exponential backoff with jitter, resuming from the last resourceVersion; ``last_error`` holds the
  error until the watch recovers, for whoever must explain why there are no pods.
- No polling: a watch lasts ``watch_timeout_s`` (server side, spread over [t, 2t) like client-go) and is re-opened
  from where it stopped. ``stop()`` ends it at once (``WatchStream.abort``), also during a backoff wait.

The calls themselves are ``client.KubeApi``'s; this module does not import ``kubernetes``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from podcap.collector.kube.client import DEFAULT_WATCH_TIMEOUT_S, KubeApi, WatchStream
from podcap.collector.kube.errors import KubeError, KubeGoneError
from podcap.collector.kube.pods import KubePod, pod_from_object
from podcap.pods import PodRef

log = logging.getLogger(__name__)

PodCallback = Callable[[PodRef], None]


def _noop(_pod: PodRef) -> None:
    pass


class PodWatch:
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
        self.api = api
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.on_added, self.on_modified, self.on_deleted = on_added, on_modified, on_deleted
        self.watch_timeout_s = watch_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._lock = threading.Lock()
        self._cache: dict[str, KubePod] = {}
        self._stream: WatchStream | None = None
        self._stopping = threading.Event()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.resource_version = ""
        self.last_error: KubeError | None = None
        self.lists = 0  # how many (re-)lists this watch made: API-server load, and a test hook
        self.watches = 0

    # ---- public ----

    def start(self) -> PodWatch:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """End the watch now: the open stream is shut down, a backoff wait is cut short."""
        self._stopping.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.abort()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

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

    # ---- the loop ----

    def _run(self) -> None:
        delay = self.backoff_initial_s
        gone_in_a_row = 0
        while not self._stopping.is_set():
            try:
                if not self.resource_version:
                    self._relist()
                started, events = time.monotonic(), self._watch_once()
                self.last_error = None
                if events or time.monotonic() - started >= 1.0:
                    delay = self.backoff_initial_s
                    gone_in_a_row = 0
                    continue
                # A watch that ends at once with nothing in it: do not hammer the server.
                delay = self._back_off(delay, delay)
            except KubeGoneError as e:
                if self._stopping.is_set():
                    break
                log.info("pod watch: %s; re-listing", e)
                self.resource_version = ""
                gone_in_a_row += 1
                if gone_in_a_row > 1:  # 410 right after a fresh list: something is off; back off
                    delay = self._back_off(delay, delay)
            except KubeError as e:
                if self._stopping.is_set():
                    break
                self.last_error = e
                wait = delay * random.uniform(0.8, 1.2)
                log.warning("pod watch: %s (retrying in %.1f s)", e, wait)
                delay = self._back_off(delay, wait)
            except Exception as e:  # a bug must not end the cache's updates silently
                if self._stopping.is_set():
                    break
                self.last_error = KubeError(f"pod watch failed: {type(e).__name__}: {e}")
                log.exception("pod watch failed (retrying in %.1f s)", delay)
                delay = self._back_off(delay, delay)

    def _back_off(self, delay: float, wait: float) -> float:
        """Wait ``wait`` seconds (``stop()`` cuts it short); the next delay, doubled up to ``backoff_max_s``."""
        self._stopping.wait(wait)
        return min(delay * 2, self.backoff_max_s)

    def _relist(self) -> None:
        objs, rv = self.api.list_pod_objects(self.namespace, self.label_selector, self.field_selector)
        self.lists += 1
        fresh: dict[str, KubePod] = {}
        for obj in objs:
            p = pod_from_object(obj)
            if p is not None:
                fresh[p.ref.uid] = p
        with self._lock:
            old, self._cache = self._cache, fresh
        self.resource_version = rv
        self.last_error = None
        self._synced.set()
        for uid, p in old.items():
            if uid not in fresh:
                self._emit(self.on_deleted, p.ref)
        for uid, p in fresh.items():
            prev = old.get(uid)
            if prev is None:
                self._emit(self.on_added, p.ref)
            elif prev.view() != p.view():
                self._emit(self.on_modified, p.ref)

    def _watch_once(self) -> int:
        """Stream one watch to its end; returns how many events it carried. Raises KubeError."""
        stream = self.api.watch_pods(self.namespace, resource_version=self.resource_version,
                                     label_selector=self.label_selector, field_selector=self.field_selector,
                                     timeout_seconds=self._timeout())
        self.watches += 1
        self.last_error = None
        with self._lock:
            self._stream = stream
        if self._stopping.is_set():
            stream.abort()
        n = 0
        try:
            for type_, obj in stream:
                if self._stopping.is_set():
                    break
                n += 1
                if type_ == "ERROR":
                    raise self.api.status_error(obj, verb="watch", namespace=self.namespace)
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                if type_ != "BOOKMARK":
                    self._apply(type_, obj)
                if rv:
                    self.resource_version = rv
        finally:
            with self._lock:
                self._stream = None
            stream.close()
        return n

    def _timeout(self) -> int:
        # Spread reconnects of many collectors over time, like client-go (timeout in [t, 2t)).
        return int(self.watch_timeout_s * random.uniform(1.0, 2.0))

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
