"""Retention: which closed segments a capture no longer keeps.

A pod keeps at most ``keep_bytes`` and ``keep_seconds`` of closed segments, the capture at most
``keep_total_bytes`` over its pods (oldest segment first across pods); the open segment always stays. ``retire``
runs under the capture's lock after each write (and every second for age) and only updates the model; the caller
deletes what it returns once the lock is released (``delete``), so no capture waits on an unlink. A crash between
the two leaves a file the database no longer knows, which recovery deletes.
"""

from __future__ import annotations

import logging

from podcap.collector.captures.model import Capture, PodState
from podcap.collector.captures.pods import location
from podcap.collector.storage.base import CaptureStorage, PodLocation, SegmentInfo, StorageError

log = logging.getLogger(__name__)

Retired = list[tuple[PodLocation, SegmentInfo]]


def _closed(ps: PodState) -> bool:
    return len(ps.segments) > 1 or (bool(ps.segments) and ps.writer is None)


def retire(storage: CaptureStorage, cap: Capture, now_ns: int, only: PodState | None = None) -> Retired:
    """Take the segments beyond the capture's retention targets out of the model (caller holds the lock); what is
    kept stays under ``keep_bytes`` unless the open segment alone exceeds it."""
    r = cap.request.retention
    out: Retired = []
    if not (r.keep_bytes or r.keep_seconds or r.keep_total_bytes):
        return out
    for ps in [only] if only is not None else cap.pods.values():
        while _closed(ps):
            oldest = ps.segments[0]
            too_big = r.keep_bytes and ps.stored_bytes > r.keep_bytes
            too_old = r.keep_seconds and oldest.last_ts_ns < now_ns - r.keep_seconds * 1_000_000_000
            if not (too_big or too_old):
                break
            out.extend(_retire_oldest(storage, cap, ps))
    if r.keep_total_bytes:
        while sum(p.stored_bytes for p in cap.pods.values()) > r.keep_total_bytes:
            closed = [(p.segments[0].first_ts_ns, p.segments[0].index, p) for p in cap.pods.values() if _closed(p)]
            if not closed:
                break
            out.extend(_retire_oldest(storage, cap, min(closed, key=lambda t: (t[0], t[1]))[2]))
    return out


def _retire_oldest(storage: CaptureStorage, cap: Capture, ps: PodState) -> Retired:
    seg = ps.segments.pop(0)
    if cap.backlog is not None:  # deleted before it reached the second tier: it waits no more
        cap.backlog.gone(ps.pod.uid, seg)
    ps.retired_bytes += seg.bytes
    ps.retired_packets += seg.packets
    ps.dirty = True
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
