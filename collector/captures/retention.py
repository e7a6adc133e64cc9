"""Retention: which closed segments a capture no longer keeps.

A pod keeps at most ``keep_bytes`` and ``keep_seconds`` of closed segments, the capture at most
``keep_total_bytes`` over its pods (oldest segment first across pods); the open segment always stays. ``retire``
runs after each write (and every second for age) and only updates the model, under the capture's lock; the caller
deletes what it returns once no lock is held (``delete``), so no capture waits on an unlink. A crash between the
two leaves a file the database no longer knows, which recovery deletes.

Only the running sums (``PodState.stored_bytes``, ``segment_count``) and each pod's few oldest segments
(``PodState.head``, read from the catalog through its primary key when it runs out, without the capture's lock)
are consulted, so a check costs the same for a capture of any age.
"""

from __future__ import annotations

import logging

from podcap.collector.captures.model import Capture, PodState
from podcap.collector.captures.pods import location
from podcap.collector.captures.segments import SegmentIndex
from podcap.collector.storage.base import CaptureStorage, PodLocation, SegmentInfo, StorageError

log = logging.getLogger(__name__)

Retired = list[tuple[PodLocation, SegmentInfo]]


def _closed(ps: PodState) -> bool:
    return ps.segment_count > 1 or (ps.segment_count == 1 and ps.writer is None)


def retire(index: SegmentIndex, cap: Capture, now_ns: int, only: PodState | None = None) -> Retired:
    """Take the segments beyond the capture's retention targets out of the model; what is kept stays under
    ``keep_bytes`` unless the open segment alone exceeds it. Caller holds not the capture's lock (a pod's
    ``io_lock`` is fine)."""
    r = cap.request.retention
    out: Retired = []
    if not (r.keep_bytes or r.keep_seconds or r.keep_total_bytes):
        return out
    while True:
        with cap.lock:
            short = _retire(index.storage, cap, now_ns, only, out)
        if not short:
            return out
        if not sum(index.load_head(cap, ps) for ps in short):
            log.error("capture %s: retention found no segment to delete where the counts say there are some",
                      cap.id)
            return out


def _retire(storage: CaptureStorage, cap: Capture, now_ns: int, only: PodState | None, out: Retired
            ) -> list[PodState]:
    """Retire what is due as far as the pods' heads reach (caller holds the lock); returns the pods whose head ran
    out while a segment of theirs was still due (``load_head``, then call again)."""
    r = cap.request.retention
    short: list[PodState] = []
    for ps in [only] if only is not None else cap.pods.values():
        while _closed(ps):
            if not ps.head:
                short.append(ps)
                break
            oldest = ps.head[0]
            too_big = r.keep_bytes and ps.stored_bytes > r.keep_bytes
            too_old = r.keep_seconds and oldest.last_ts_ns < now_ns - r.keep_seconds * 1_000_000_000
            if not (too_big or too_old):
                break
            out.extend(_retire_oldest(storage, cap, ps))
    if r.keep_total_bytes and not short:
        while sum(p.stored_bytes for p in cap.pods.values()) > r.keep_total_bytes:
            closed = [p for p in cap.pods.values() if _closed(p)]
            short = [p for p in closed if not p.head]
            if short or not closed:
                break
            out.extend(_retire_oldest(storage, cap, min(closed, key=lambda p: (p.head[0].first_ts_ns,
                                                                                 p.head[0].index))))
    return short


def _retire_oldest(storage: CaptureStorage, cap: Capture, ps: PodState) -> Retired:
    seg = ps.head[0]
    if cap.backlog is not None:  # deleted before it reached the second tier: it waits no more
        cap.backlog.gone(ps.pod.uid, seg)
    ps.retire(seg)
    try:
        return [(location(storage, cap, ps), seg)]
    except StorageError as e:
        log.error("cannot delete %s: %s", seg.locator, e)
        return []


def delete(retired: Retired) -> None:
    """Delete retired segments (without the capture's lock)."""
    for loc, seg in retired:
        try:
            loc.delete(seg)
        except OSError as e:
            log.error("cannot delete %s: %s", seg.locator, e)
