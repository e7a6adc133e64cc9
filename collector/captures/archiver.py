"""Moving closed segments to the storage's second tier, for tiered storage (``CaptureStorage.tiered``).

Every ``ARCHIVE_INTERVAL_S`` the archiver looks for segments that are closed (not a pod's open segment) and not yet
archived, in every capture, oldest first. For each: the storage copies it and verifies the copy (``archive``, no
lock held), the capture logic records where it went (the pod is dirty, and the archiver commits the capture at
once), and only then the local copy is released. A segment that retention deleted meanwhile has its new copy
deleted too. When archiving fails (the object store down, throttling, refusing credentials) the segment stays
local and is tried again at the next round; ``status`` says why (``backlog``), and the local tier keeps
everything — when it fills, storing pauses exactly as on a full disk and the agents spool.
"""

from __future__ import annotations

import logging
import threading
import time

from podcap.collector.captures.committer import Committer
from podcap.collector.captures.describer import Describer
from podcap.collector.captures.model import Capture, PodState
from podcap.collector.captures.pods import location
from podcap.collector.captures.table import CaptureTable
from podcap.collector.storage.base import CaptureStorage, SegmentInfo
from podcap.errors import PodcapError

log = logging.getLogger(__name__)

ARCHIVE_INTERVAL_S = 1.0


class Archiver:
    def __init__(self, table: CaptureTable, storage: CaptureStorage, committer: Committer, *,
                 interval_s: float = ARCHIVE_INTERVAL_S) -> None:
        self.table = table
        self.interval_s = interval_s  # 0: no thread, rounds only when ``run_once`` is called (tests)
        self._round = threading.Lock()  # one round at a time
        self.storage = storage
        self.committer = committer
        self.last_error = ""
        # Per capture after the last round: bytes of closed segments still local only, and the age of the newest
        # packet of the oldest of them (how long data has waited for the bucket, at least).
        self.backlog: dict[str, tuple[int, float]] = {}
        self.describer = Describer(storage)
        self._stored_since_round = 0  # bytes appended locally since the last round counted the local tier
        self._local_bytes = 0  # what the local tier held at the last round, archived not (open segments too)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="archiver", daemon=True)

    def start(self) -> None:
        if self.storage.tiered and self.interval_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._closing.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:
                log.exception("archiving failed")

    def run_once(self) -> int:
        """One round over every capture; returns how many segments were archived."""
        with self._round:
            return self._run_once()

    def _run_once(self) -> int:
        done = 0
        backlog: dict[str, tuple[int, float]] = {}
        local = 0
        for cap in self.table.all():
            todo = self._closed_unarchived(cap)
            if todo:  # shown while this round's uploads run (they may hang on a slow store)
                self.backlog[cap.id] = _waiting([seg for _ps, seg in todo])
            archived: list[tuple[PodState, SegmentInfo]] = []
            for ps, seg in todo:
                if self._closing.is_set():
                    break
                try:
                    copy = location(self.storage, cap, ps).archive(seg)
                except PodcapError as e:
                    if self.last_error != str(e):
                        log.error("archiving %s: %s (kept locally; retried)", seg.locator, e)
                    self.last_error = str(e)
                    break  # the store is likely down: the next round tries again
                with cap.lock:
                    seg.archived = copy.locator
                    ps.dirty = True
                    kept = seg in ps.segments
                if not kept:  # retention deleted it while it was being copied: the copy goes too
                    location(self.storage, cap, ps).delete(seg)
                    continue
                self.describer.add(cap.id, str(ps.pod.uid), seg.index, copy)
                archived.append((ps, seg))
            if archived:
                self.committer.commit(cap)  # recorded durably before any local copy goes
                for ps, seg in archived:
                    location(self.storage, cap, ps).release(seg)
                done += len(archived)
                self.last_error = ""
            try:  # segments archived, or retention deleted some: the bucket's description follows
                self.describer.sync(cap, complete=not cap.live and len(archived) == len(todo))
            except PodcapError as e:
                self.last_error = str(e)
                log.error("writing the manifest of %s: %s (retried)", cap.id, e)
            waiting = [seg for _ps, seg in todo if not seg.archived]
            if waiting:
                backlog[cap.id] = _waiting(waiting)
            with cap.lock:
                local += sum(seg.bytes for ps in cap.pods.values() for seg in ps.segments if not seg.archived)
        self.describer.forget({cap.id for cap in self.table.all()})
        self.backlog = backlog
        self._local_bytes, self._stored_since_round = local, 0
        return done

    def note_stored(self, nbytes: int) -> None:
        """Bytes just appended locally: they wait for the bucket too, until the next round counts them."""
        self._stored_since_round += nbytes

    def local_room(self, cap_bytes: int) -> str:
        """"" while what waits for the bucket is under ``cap_bytes`` (0: no cap); else why storing must pause."""
        if not cap_bytes:
            return ""
        waiting = self._local_bytes + self._stored_since_round
        if waiting < cap_bytes:
            return ""
        return (f"local tier full: {waiting} bytes wait for the bucket (cap {cap_bytes})"
                + (f"; {self.last_error}" if self.last_error else ""))

    def status(self, capture_id: str) -> tuple[int, float, str]:
        """(bytes waiting, seconds the oldest has waited, the last error) for ``podcap status``."""
        nbytes, age = self.backlog.get(capture_id, (0, 0.0))
        return nbytes, age, self.last_error if nbytes else ""

    @staticmethod
    def _closed_unarchived(cap: Capture) -> list[tuple[PodState, SegmentInfo]]:
        with cap.lock:
            out = []
            for ps in cap.pods.values():
                current = ps.writer.current if ps.writer is not None else None
                out += [(ps, seg) for seg in ps.segments if not seg.archived and seg is not current]
            return sorted(out, key=lambda t: (t[1].first_ts_ns, t[1].index))


def _waiting(segments: list[SegmentInfo]) -> tuple[int, float]:
    """(bytes, seconds since the newest packet of the oldest of them) of segments waiting for the bucket."""
    newest_ns = min(seg.last_ts_ns for seg in segments)
    return sum(seg.bytes for seg in segments), max(0.0, time.time() - newest_ns / 1e9) if newest_ns else 0.0
