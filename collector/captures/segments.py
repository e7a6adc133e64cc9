"""A pod's segments as the capture logic reads them: memory for what the catalog does not have yet, the catalog's
indexes for the rest.

A pod keeps in memory only its newest segment and the segments a commit has yet to record (``PodState``); every
other segment is a row of the catalog (``podcap.collector.storage.catalog``). A read takes what memory holds
first (under the capture's lock) and then asks the catalog, and memory wins where both have a segment: a commit
drops its segments from memory only once they are durable in the catalog, so a segment is always in one or the
other, and the catalog's copy is never newer. Segments retired but not yet deleted from the catalog are left out.
With tiered storage every closed segment not yet archived stays in memory (the capture's ``ArchiveBacklog``), so the
only segments read from the catalog are ones that no longer change: a copy of one is as good as the original.

Each read costs what it returns, whatever the capture's size: a time window is found through the time index,
retention's next oldest through the primary key, a page of the bucket's description by its index range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from podcap.collector.captures.model import Capture, PodState
from podcap.collector.captures.pods import location
from podcap.collector.storage.base import ArchivedIndex, CaptureStorage, SegmentInfo
from podcap.collector.storage.catalog import CaptureStore, SegmentRow
from podcap.formats.selection import overlaps

HEAD_SEGMENTS = 16  # oldest segments retention keeps at hand per pod (one catalog query per this many deletes)


@dataclass(frozen=True)
class InMemory:
    """What memory held of a pod's segments at one moment: each with its size then, the retired ones, the newest
    index and the longest time range of any segment."""

    segments: dict[int, tuple[SegmentInfo, int]]
    deleted: frozenset[int]
    newest: int
    max_span_ns: int


class SegmentIndex:
    def __init__(self, store: CaptureStore, storage: CaptureStorage) -> None:
        self.store = store
        self.storage = storage

    @staticmethod
    def in_memory(cap: Capture, ps: PodState) -> InMemory:
        """The pod's segments in memory now, with their sizes (caller holds ``ps.io_lock`` when the sizes must
        match the files: no append in between)."""
        with cap.lock:
            waiting = cap.backlog.segments_of(ps.pod.uid) if cap.backlog is not None else []
            segs = {s.index: (s, s.bytes) for s in waiting}
            segs.update((i, (s, s.bytes)) for i, s in ps.unrecorded.items())
            for s in (ps.previous_segment, ps.last_segment):
                if s is not None:
                    segs[s.index] = (s, s.bytes)
            return InMemory(segs, frozenset(ps.unrecorded_deletes), max(ps.next_segment - 1, 0), ps.max_span_ns)

    def listing(self, cap: Capture, ps: PodState, mem: InMemory, *, since_ns: int = 0,
                until_ns: int = 0) -> list[tuple[SegmentInfo, int]]:
        """The pod's segments in order with their sizes as of ``mem``; with a time window (0: unbounded) only those
        whose time range overlaps it. No lock needed."""
        uid = str(ps.pod.uid)
        if since_ns or until_ns:
            rows = self.store.segments_overlapping(cap.id, uid, since_ns, until_ns, mem.max_span_ns)
        else:
            rows = self.store.segments(cap.id, uid)

        return self._merge(cap, ps, mem, rows, lambda s: overlaps(s.first_ts_ns, s.last_ts_ns, since_ns, until_ns))

    def load_head(self, cap: Capture, ps: PodState) -> int:
        """Bring the pod's next oldest kept segments into ``ps.head`` for retention; returns how many it holds then.
        Caller holds not the capture's lock (the catalog is read without it)."""
        mem = self.in_memory(cap, ps)
        with cap.lock:
            after = ps.head[-1].index if ps.head else ps.retired_through
        rows = self.store.segments(cap.id, str(ps.pod.uid), after=after, limit=HEAD_SEGMENTS)
        found = self._merge(cap, ps, mem, rows, lambda s: s.index > after)[:HEAD_SEGMENTS]
        with cap.lock:
            if (ps.head[-1].index if ps.head else ps.retired_through) != after:
                return len(ps.head)  # loaded by someone else meanwhile
            ps.head.extend(seg for seg, _size in found if seg.index not in ps.unrecorded_deletes)
            return len(ps.head)

    def unarchived(self, cap: Capture, ps: PodState) -> list[SegmentInfo]:
        """The pod's segments not yet archived, in order (the catalog's partial index: at start-up, what waits for
        the second tier)."""
        mem = self.in_memory(cap, ps)
        rows = self.store.unarchived_segments(cap.id, str(ps.pod.uid))
        return [s for s, _n in self._merge(cap, ps, mem, rows, lambda s: not s.archived)]

    def archived(self, cap: Capture, ps: PodState, first: int, end: int) -> list[SegmentInfo]:
        """The pod's archived segments with ``first <= index < end``, in order (a page of the bucket's
        description)."""
        mem = self.in_memory(cap, ps)
        rows = self.store.archived_segments(cap.id, str(ps.pod.uid), first, end)
        return [s for s, _n in self._merge(cap, ps, mem, rows, lambda s: bool(s.archived) and first <= s.index < end)]

    def archived_groups(self, cap: Capture, ps: PodState, width: int) -> set[int]:
        """``index // width`` of the pod's archived segments: catalog and memory."""
        mem = self.in_memory(cap, ps)
        groups = self.store.archived_groups(cap.id, str(ps.pod.uid), width)
        return groups | {i // width for i, (s, _n) in mem.segments.items() if s.archived}

    def archived_index(self, cap: Capture, ps: PodState) -> ArchivedIndex:
        """The pod's archived segments as the storage's second tier reads them to describe the pod."""
        return _PodArchived(self, cap, ps)

    def _merge(self, cap: Capture, ps: PodState, mem: InMemory, rows: list[SegmentRow],
               wanted: Callable[[SegmentInfo], bool]) -> list[tuple[SegmentInfo, int]]:
        loc = location(self.storage, cap, ps)
        out: dict[int, tuple[SegmentInfo, int]] = {}
        for r in rows:
            if r.index in mem.deleted or r.index in mem.segments or r.index > mem.newest:
                continue  # retired; newer in memory; or written after ``mem`` was taken
            seg = loc.segment(r.index)
            seg.bytes, seg.packets, seg.first_ts_ns, seg.last_ts_ns, seg.archived = \
                r.bytes, r.packets, r.first_ts_ns, r.last_ts_ns, r.archived
            out[r.index] = (seg, r.bytes)
        for i, (seg, size) in mem.segments.items():
            if wanted(seg):
                out[i] = (seg, size)
        return [out[i] for i in sorted(out)]


class _PodArchived:
    """``SegmentIndex.archived*`` of one pod (an ``ArchivedIndex``)."""

    def __init__(self, index: SegmentIndex, cap: Capture, ps: PodState) -> None:
        self.index, self.cap, self.ps = index, cap, ps

    def archived(self, first: int, end: int) -> list[SegmentInfo]:
        return self.index.archived(self.cap, self.ps, first, end)

    def archived_groups(self, width: int) -> set[int]:
        return self.index.archived_groups(self.cap, self.ps, width)
