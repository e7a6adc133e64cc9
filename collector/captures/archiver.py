"""Moving closed segments to the storage's second tier, for tiered storage (``CaptureStorage.second_tier``).

Every ``ARCHIVE_INTERVAL_S`` the archiver takes, in every capture, the closed segments not yet archived (the capture's
``ArchiveBacklog``, oldest closed first). For each: the second tier copies it and verifies the copy (``archive``, no
lock held), the capture logic records where it went (the pod is dirty, and the archiver commits the capture at once),
and only then the local copy is released. After each capture's round the second tier brings its description of the
capture up to date (``describe``: the capture's status and each pod's archived segments from the catalog; what the
description looks like in the bucket is the storage's business). A segment that retention deleted meanwhile has its new
copy deleted too. When archiving fails (the object store down, throttling, refusing credentials) the segment stays local
and is tried again at the next round, and the local tier keeps everything — when it fills, storing pauses exactly as on
a full disk and the agents spool.

The backlog holds the capture's closed segments not yet archived (with the pods' newest segments, the only ones that
still change; the catalog has the others): a round costs what waits, not what the capture holds, and ``adopt`` reads
what waited at start-up from the catalog's index of segments not yet archived.

``status`` answers at any moment, also while a round hangs on a frozen store: what waits comes from the capture's
backlog, kept as segments close, are archived or deleted (not from a snapshot of a round), its age grows with the clock
from when the oldest waiting segment closed, and the reason is the last failure (the object store's own words) and, past
``STALLED_S``, the upload or bucket write the archiver is stuck in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from podcap.collector.captures.backlog import ArchiveBacklog, Clock
from podcap.collector.captures.committer import Committer
from podcap.collector.captures.model import Capture, PodState
from podcap.collector.captures.pods import location, pod_key
from podcap.collector.captures.segments import SegmentIndex
from podcap.collector.captures.table import CaptureTable
from podcap.collector.storage.base import CaptureDescription, DescribedPod, SegmentInfo
from podcap.errors import PodcapError

log = logging.getLogger(__name__)

ARCHIVE_INTERVAL_S = 1.0
# An upload (or a write of the bucket's description) running longer than this is named in ``status``: a segment of
# the default 64 MiB takes about a second here, a hung request up to boto3's read timeout (60 s) per attempt.
STALLED_S = 10.0


@dataclass(frozen=True)
class _Busy:
    """What the archiver is waiting on in the second tier, for whom, since when (its clock)."""

    what: str
    capture_id: str
    since: float


class Archiver:
    def __init__(self, table: CaptureTable, index: SegmentIndex, committer: Committer, *,
                 interval_s: float = ARCHIVE_INTERVAL_S, clock: Clock = time.time,
                 stalled_s: float = STALLED_S) -> None:
        self.table = table
        self.interval_s = interval_s  # 0: no thread, rounds only when ``run_once`` is called (tests)
        self._round = threading.Lock()  # one round at a time
        self.index = index
        self.storage = index.storage
        self.committer = committer
        self.clock = clock  # wall-clock seconds: when segments closed, how long an upload runs
        self.stalled_s = stalled_s
        self.last_error = ""  # why the last attempt failed ("" once one succeeded)
        self._busy: _Busy | None = None  # the bucket request in progress (read without a lock: one reference)
        self._stored_since_round = 0  # bytes appended locally since the last round counted the local tier
        self._local_bytes = 0  # what the local tier held at the last round, archived not (open segments too)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="archiver", daemon=True)

    def start(self) -> None:
        if self.storage.second_tier is not None and self.interval_s > 0:
            self._thread.start()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """No archiving round runs meanwhile: a capture being deleted is neither uploaded nor described again."""
        with self._round:
            yield

    def stop(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def adopt(self, cap: Capture) -> None:
        """Keep the capture's archive backlog from now on (with tiered storage): a new capture, or one found at
        start-up whose closed segments wait already (read from the catalog's index of what is not archived, before
        anything else reads the pods' segments: each is one object from then on). When those closed was not
        recorded: their newest packet is the best bound there is (they closed after it), so their age is at least
        the time since it."""
        if self.storage.second_tier is None:
            return
        backlog = ArchiveBacklog(self.clock)
        waiting = {ps.pod.uid: self.index.unarchived(cap, ps) for ps in cap.pods.values()}
        with cap.lock:
            now = self.clock()
            closed = []
            for ps in cap.pods.values():
                current = ps.writer.current if ps.writer is not None else None
                closed += [(ps.pod.uid, seg) for seg in waiting[ps.pod.uid] if seg is not current]
            for uid, seg in sorted(closed, key=lambda t: (t[1].last_ts_ns, t[1].index)):
                backlog.closed(uid, seg, min(now, seg.last_ts_ns / 1e9) if seg.last_ts_ns else now)
            cap.backlog = backlog

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
        tier = self.storage.second_tier
        if tier is None:
            return 0
        done = 0
        local = 0
        for cap in self.table.all():
            backlog = cap.backlog
            if backlog is None:
                continue
            with cap.lock:
                todo = [(cap.pods[uid], seg) for uid, seg in backlog.waiting() if uid in cap.pods]
            archived: list[tuple[PodState, SegmentInfo]] = []
            for ps, seg in todo:
                if self._closing.is_set():
                    break
                self._busy = _Busy(f"upload of segment {seg.index} of {ps.pod.namespace}/{ps.dir_name}", cap.id,
                                   self.clock())
                try:
                    archived_as = tier.archive(pod_key(cap, ps), seg)
                except PodcapError as e:
                    if self.last_error != str(e):
                        log.error("archiving %s: %s (kept locally; retried)", seg.locator, e)
                    self.last_error = str(e)
                    break  # the store is likely down: the next round tries again
                finally:
                    self._busy = None
                self.last_error = ""
                with cap.lock:
                    seg.archived = archived_as
                    kept = backlog.gone(ps.pod.uid, seg)  # (retention takes what it deletes out of the backlog)
                    if kept:  # the next commit records it (memory keeps it until then: the catalog's is older)
                        ps.unrecorded[seg.index] = seg
                        ps.dirty = True
                if not kept:  # retention deleted it while it was being copied: the copy goes too
                    location(self.storage, cap, ps).delete(seg)
                    continue
                archived.append((ps, seg))
            if archived:
                self.committer.commit(cap)  # recorded durably before any local copy goes
                for ps, seg in archived:
                    tier.release(pod_key(cap, ps), seg)
                done += len(archived)
            self._busy = _Busy("writing the manifest", cap.id, self.clock())
            try:  # segments archived, or retention deleted some: the bucket's description follows
                if tier.describe(self._description(cap, complete=not cap.live and len(archived) == len(todo))):
                    self.last_error = ""
            except PodcapError as e:
                self.last_error = str(e)
                log.error("writing the manifest of %s: %s (retried)", cap.id, e)
            finally:
                self._busy = None
            with cap.lock:
                local += backlog.bytes + sum(ps.writer.current.bytes for ps in cap.pods.values()
                                             if ps.writer is not None and ps.writer.current is not None)
        tier.forget({cap.id for cap in self.table.all()})
        self._local_bytes, self._stored_since_round = local, 0
        return done

    def _description(self, cap: Capture, *, complete: bool) -> CaptureDescription:
        with cap.lock:
            pods = [DescribedPod(pod_key(cap, ps), ps.fmt, ps.retired_through, self.index.archived_index(cap, ps))
                    for ps in cap.pods.values()]
        return CaptureDescription(cap.id, cap.status, pods, complete)

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
        why = self.reason()
        return f"local tier full: {waiting} bytes wait for the bucket (cap {cap_bytes})" + (f"; {why}" if why else "")

    def status(self, cap: Capture) -> tuple[int, float, str]:
        """(bytes of the capture's closed segments not yet in the second tier, seconds since the oldest of them
        closed, why they wait) for ``podcap status`` and the metrics, as of now. O(1): running totals."""
        backlog = cap.backlog
        if backlog is None:
            return 0, 0.0, ""
        with cap.lock:
            nbytes, age = backlog.bytes, backlog.age()
        if not nbytes:
            return 0, 0.0, ""
        return nbytes, age, self.reason(cap.id)

    def reason(self, capture_id: str = "") -> str:
        """Why segments wait: a bucket request in progress for longer than ``stalled_s`` (whichever capture's:
        one archiver serves them all), and the last failure; "" when neither."""
        why = []
        busy = self._busy
        if busy is not None and (held := self.clock() - busy.since) >= self.stalled_s:
            whose = f" (capture {busy.capture_id})" if busy.capture_id != capture_id else ""
            why.append(f"{busy.what}{whose} in progress for {held:.0f} s")
        if self.last_error:
            why.append(f"last error: {self.last_error}" if why else self.last_error)
        return "; ".join(why)
