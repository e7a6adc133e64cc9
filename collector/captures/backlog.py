"""What of a capture waits on the collector's disk for the second tier: ``ArchiveBacklog``, kept as it changes.

With tiered storage every closed segment that is not yet in the bucket waits locally, whatever the archiver is
doing. ``podcap status`` and the metrics show how many bytes wait, how long ago the oldest of them closed and why
they wait, at every call and at a cost that does not grow with the capture's length (a long capture has thousands
of segments): so the backlog is not recomputed from the segments, nor snapshotted by an archiving round (a round
hung on a frozen gateway would then show a frozen figure), but kept as running totals, changed where segments
change — a segment closing (a rotation, a stream's or the capture's end: ``track``), archived and recorded, or
deleted by retention (``gone``).

A pod's segments close in index order, and all but the writer's current one are closed, so ``track`` looks only at
the pod's newest segments: what closed since its last call. Waiting segments are kept in the order they closed,
so the oldest is the first (O(1)); a segment leaves from anywhere (archived out of order, retention) in O(1) too.
Guarded by the capture's lock, like the segments it describes.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from podcap.collector.storage.base import SegmentInfo
from podcap.names import PodUid

Clock = Callable[[], float]  # seconds on the wall clock (``time.time``; a fake one in tests)


class ArchiveBacklog:
    """One capture's closed segments not yet in the second tier, oldest closed first, with their byte total."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self.bytes = 0
        self._waiting: OrderedDict[tuple[PodUid, int], tuple[SegmentInfo, float]] = OrderedDict()
        self._closed_through: dict[PodUid, int] = {}  # per pod: the highest segment index seen closed

    def __len__(self) -> int:
        return len(self._waiting)

    def track(self, pod: PodUid, segments: list[SegmentInfo], current: SegmentInfo | None) -> None:
        """The pod's segments that closed since the last call (all of ``segments`` but ``current``, the writer's
        open one) start waiting now. Cheap to call after every write: it looks only at the newest segments."""
        through = self._closed_through.get(pod, 0)
        closed: list[SegmentInfo] = []
        for seg in reversed(segments):
            if seg.index <= through:
                break
            if seg is not current:
                closed.append(seg)
        if not closed:
            return
        now = self.clock()
        for seg in reversed(closed):
            self.closed(pod, seg, now)

    def closed(self, pod: PodUid, seg: SegmentInfo, at: float) -> None:
        """``seg`` closed at ``at`` (wall-clock seconds): it waits unless already archived. Call in closing order."""
        self._closed_through[pod] = max(self._closed_through.get(pod, 0), seg.index)
        key = (pod, seg.index)
        if seg.archived or key in self._waiting:
            return
        self._waiting[key] = (seg, at)
        self.bytes += seg.bytes

    def gone(self, pod: PodUid, seg: SegmentInfo) -> bool:
        """``seg`` waits no more: archived and recorded, or deleted (by retention). Returns whether it was waiting
        (not yet gone)."""
        entry = self._waiting.get((pod, seg.index))
        if entry is None or entry[0] is not seg:
            return False
        del self._waiting[(pod, seg.index)]
        self.bytes -= seg.bytes
        return True

    def segments_of(self, pod: PodUid) -> list[SegmentInfo]:
        """The pod's waiting segments."""
        return [seg for (uid, _index), (seg, _at) in self._waiting.items() if uid == pod]

    def waiting(self) -> list[tuple[PodUid, SegmentInfo]]:
        """Every waiting segment, oldest closed first."""
        return [(pod, seg) for (pod, _index), (seg, _at) in self._waiting.items()]

    def oldest_closed_at(self) -> float | None:
        """When the oldest waiting segment closed; None when nothing waits."""
        for _seg, at in self._waiting.values():
            return at
        return None

    def age(self) -> float:
        """Seconds since the oldest waiting segment closed (0 when nothing waits): grows while nothing leaves."""
        at = self.oldest_closed_at()
        return 0.0 if at is None else max(0.0, self.clock() - at)
