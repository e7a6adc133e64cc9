"""``ListWatch``: the one list-then-watch loop (the informer pattern) that every watched kind runs.

A kind's watch (pods: ``watch.PodWatch``; a Service's EndpointSlices: ``endpoints.ServiceEndpoints``; the kubelet's
Unhealthy Events: ``recorders.unhealthy.UnhealthyWatch``) says only how
to list, how to open a watch, what an in-band ERROR means and what an event changes; the loop is here, once:

- ``resourceVersion`` continuity: the watch starts from the list's resourceVersion and every event (including
  ``BOOKMARK``, asked for with ``allowWatchBookmarks``) advances it, so a quiet watch that is re-opened resumes
  where it stopped instead of re-listing.
- ``410 Gone`` (HTTP, or the in-band ERROR event: both are ``KubeGoneError``) -> re-list; a second 410 right after
  a fresh list backs off.
- Other errors -> exponential backoff with jitter, resuming from the last resourceVersion; ``last_error`` holds the
  error until the watch recovers, for whoever must explain why nothing is known.
- No polling: a watch lasts ``watch_timeout_s`` (server side, spread over [t, 2t) like client-go, so many
  collectors do not reconnect at once) and is re-opened from where it stopped; a watch that ends at once with
  nothing in it backs off. ``stop()`` ends it at once (``WatchStream.abort``), also during a backoff wait.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from podcap.collector.kube.client import DEFAULT_WATCH_TIMEOUT_S, WatchStream
from podcap.collector.kube.errors import KubeError, KubeGoneError

log = logging.getLogger(__name__)


class ListWatch:
    """List, then watch from the list's resourceVersion, on its own thread; subclasses say what to list and watch.

    ``_list`` replaces the subclass's state with a fresh list and returns its resourceVersion and what to tell
    listeners (run once the list is in, ``synced`` set); ``_open`` opens a watch from a resourceVersion; ``_error``
    turns an in-band ERROR event into a KubeError; ``_apply`` applies one ADDED/MODIFIED/DELETED event. ``what``
    names the watch in log lines.
    """

    def __init__(self, *, what: str, thread_name: str, watch_timeout_s: int = DEFAULT_WATCH_TIMEOUT_S,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        self.what = what
        self.watch_timeout_s = watch_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._stopping = threading.Event()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name[:60], daemon=True)
        self.resource_version = ""
        self.last_error: KubeError | None = None
        self.lists = 0  # how many (re-)lists this watch made: API-server load, and a test hook
        self.watches = 0

    # ---- what a kind says ----

    def _list(self) -> tuple[str, Callable[[], None]]:
        raise NotImplementedError

    def _open(self, resource_version: str, timeout_seconds: int) -> WatchStream:
        raise NotImplementedError

    def _error(self, obj: dict[str, Any]) -> KubeError:
        raise NotImplementedError

    def _apply(self, type_: str, obj: dict[str, Any]) -> None:
        raise NotImplementedError

    # ---- public ----

    def start(self) -> ListWatch:
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
                log.info("%s: %s; re-listing", self.what, e)
                self.resource_version = ""
                gone_in_a_row += 1
                if gone_in_a_row > 1:  # 410 right after a fresh list: something is off; back off
                    delay = self._back_off(delay, delay)
            except KubeError as e:
                if self._stopping.is_set():
                    break
                self.last_error = e
                wait = delay * random.uniform(0.8, 1.2)
                log.warning("%s: %s (retrying in %.1f s)", self.what, e, wait)
                delay = self._back_off(delay, wait)
            except Exception as e:  # a bug must not end the watch's updates silently
                if self._stopping.is_set():
                    break
                self.last_error = KubeError(f"{self.what} failed: {type(e).__name__}: {e}")
                log.exception("%s failed (retrying in %.1f s)", self.what, delay)
                delay = self._back_off(delay, delay)

    def _back_off(self, delay: float, wait: float) -> float:
        """Wait ``wait`` seconds (``stop()`` cuts it short); the next delay, doubled up to ``backoff_max_s``."""
        self._stopping.wait(wait)
        return min(delay * 2, self.backoff_max_s)

    def _relist(self) -> None:
        rv, tell = self._list()
        self.lists += 1
        self.resource_version = rv
        self.last_error = None
        self._synced.set()
        tell()

    def _watch_once(self) -> int:
        """Stream one watch to its end; returns how many events it carried. Raises KubeError."""
        # Spread reconnects of many collectors over time, like client-go (timeout in [t, 2t)).
        stream = self._open(self.resource_version, int(self.watch_timeout_s * random.uniform(1.0, 2.0)))
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
                    raise self._error(obj)
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
