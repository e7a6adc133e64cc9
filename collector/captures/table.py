"""The collector's captures by id, and the state the capture components share.

``CaptureTable`` is the only place that maps ids to captures (its lock guards the mapping only; each capture has
its own lock). ``StorageHealth`` is the one "storing paused" flag: set by whoever met the storage error (ingest, the
committer), cleared by the next chunk stored, shown by ``podcap status``. ``heard_from`` is the rule by which a
stopping capture waits for agents that are still delivering.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from podcap.collector.captures.model import Capture
from podcap.errors import NotFoundError
from podcap.names import CaptureId
from podcap.v1 import control_pb2

log = logging.getLogger(__name__)

# A stopping capture ends once every pod has sent its final report, or after STOP_GRACE_S without hearing from its
# agents (each chunk or report restarts the wait: a backlog still draining is not cut off), STOP_MAX_S at most.
STOP_GRACE_S = 10.0
STOP_MAX_S = 600.0


class CaptureNotFoundError(NotFoundError):
    """No capture has the id the user gave."""


class CaptureTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._captures: dict[CaptureId, Capture] = {}

    def add(self, cap: Capture) -> None:
        with self._lock:
            self._captures[cap.id] = cap

    def remove(self, capture_id: str) -> None:
        with self._lock:
            self._captures.pop(CaptureId(capture_id), None)

    def find(self, capture_id: str) -> Capture | None:
        with self._lock:
            return self._captures.get(CaptureId(capture_id))

    def get(self, capture_id: str) -> Capture:
        cap = self.find(capture_id)
        if cap is None:
            raise CaptureNotFoundError(f"no capture {capture_id!r} (see `podcap list`)")
        return cap

    def all(self) -> list[Capture]:
        """Every capture, newest first."""
        with self._lock:
            return sorted(self._captures.values(), key=lambda c: c.created_ns, reverse=True)

    def live(self) -> list[Capture]:
        return [c for c in self.all() if c.live]


class StorageHealth:
    """Why storing is paused ("" while it works)."""

    def __init__(self) -> None:
        self.paused = ""
        # What a pause for a full data dir adds: whether anything will be deleted to make room (the lifecycle's).
        self.full_hint: Callable[[], str] = lambda: ""

        self.disk_full = False  # paused because the data dir's filesystem is full

    def pause(self, reason: str, *, disk_full: bool = False) -> None:
        if self.paused != reason:
            log.error("storing paused: %s (agents keep their data until it resumes)", reason)
        self.paused = reason
        self.disk_full = disk_full

    def resume(self) -> None:
        if self.paused:
            log.info("storing resumed")
            self.paused = ""
            self.disk_full = False


def grace_starts(cap: Capture) -> None:
    """The capture starts waiting for its agents' last deliveries (caller holds the lock, or owns the capture)."""
    cap.stop_started = time.monotonic()
    cap.stop_deadline = cap.stop_started + STOP_GRACE_S


def heard_from(cap: Capture) -> None:
    """A stopping capture waits for its agents as long as they keep delivering (caller holds the lock)."""
    if cap.state == control_pb2.CAPTURE_STATE_STOPPING:
        now = time.monotonic()
        cap.stop_deadline = min(cap.stop_started + STOP_MAX_S, max(cap.stop_deadline, now + STOP_GRACE_S))
