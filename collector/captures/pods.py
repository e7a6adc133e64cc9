"""One pod's storage as the capture components use it: its location, its open segment writer, its gap log.

Locking: a pod's writer does its I/O under the pod's ``io_lock`` only, so pods of one capture append, publish and
flush in parallel and the capture's lock is never held across I/O. Whoever needs both takes ``io_lock`` first.
Code that holds the capture's lock and wants a writer closed (a stream ended, the capture ended) asks for it
(``request_close``), and ``settle_closes`` does it once that lock is released. A close that fails keeps the writer
and everything it holds (``close_pending``), so the committer's next sync fails too, nothing more is acknowledged,
storing pauses, and the committer retries the close. Whatever may have closed a segment (a rotation, a closed
writer) tells the capture's archive backlog (``note_closed``). The pod's ``PodLocation`` comes from the
``CaptureStorage`` once and is kept on its ``PodState``. Losses are logged and noted in the pod's gap log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from podcap.collector.captures.model import Capture, PodState
from podcap.collector.storage.base import CaptureStorage, PodKey, PodLocation, SegmentWriter, StorageError
from podcap.drops import LABELS
from podcap.formats.pcap import FileFormat
from podcap.v1 import common_pb2

log = logging.getLogger(__name__)


def file_format(pf: common_pb2.PcapFormat) -> FileFormat:
    return FileFormat(pf.linktype, pf.snaplen, pf.nanosecond)


def pod_key(cap: Capture, ps: PodState) -> PodKey:
    """The pod as the storage names it."""
    return PodKey(cap.id, ps.pod.namespace, ps.dir_name, str(ps.pod.uid))


def location(storage: CaptureStorage, cap: Capture, ps: PodState) -> PodLocation:
    """The pod's location (raises StorageError when it cannot be used)."""
    if ps.location is None:
        ps.location = storage.pod(cap.id, ps.pod.namespace, ps.dir_name)
    return ps.location


def open_writer(storage: CaptureStorage, cap: Capture, ps: PodState, fmt: FileFormat) -> SegmentWriter:
    """The pod's writer for ``fmt`` (a new segment series when the format changed). Caller holds ``ps.io_lock`` and
    not the capture's lock. Raises StorageError (the caller pauses and retries; the old segment stays whole)."""
    if ps.writer is None or ps.writer.fmt != fmt:
        if ps.writer is not None:
            ps.writer.close()
            with cap.lock:
                ps.writer = None
                ps.close_pending = ps.close_wanted = False
                note_closed(cap, ps)
        writer = location(storage, cap, ps).writer(fmt, segment_bytes=cap.segment_bytes(),
                                                   segment_seconds=cap.segment_seconds(),
                                                   next_index=ps.next_segment)
        with cap.lock:
            ps.writer = writer
    return ps.writer


def request_close(ps: PodState) -> None:
    """Ask for the pod's writer to be closed (caller holds the capture's lock; ``settle_closes`` does it)."""
    if ps.writer is not None:
        ps.close_wanted = True


def settle_closes(cap: Capture) -> None:
    """Close the writers ``request_close`` asked for. Caller holds neither the capture's lock nor an ``io_lock``."""
    with cap.lock:
        todo = [ps for ps in cap.pods.values() if ps.close_wanted]
    for ps in todo:
        with ps.io_lock:
            close_writer(cap, ps)


def close_writer(cap: Capture, ps: PodState) -> None:
    """Close the pod's writer now. Caller holds ``ps.io_lock`` (not the capture's lock); on failure the writer is
    kept for the committer to retry (see the module docstring)."""
    writer = ps.writer
    if writer is None:
        ps.close_wanted = False
        return
    try:
        writer.close()
    except OSError as e:
        log.error("closing %s: %s (retried after the next sync)", ps.rel_path, e)
        with cap.lock:
            ps.close_wanted = False
            ps.close_pending = True
            ps.dirty = True
        return
    with cap.lock:
        ps.writer = None
        ps.close_wanted = ps.close_pending = False
        note_closed(cap, ps)


def note_closed(cap: Capture, ps: PodState) -> None:
    """The pod's segments that closed since the last call (a rotation, its writer closed) join what waits for the
    second tier (``Capture.backlog``, with tiered storage). Caller holds the capture's lock; call after anything
    that may have changed the writer's current segment."""
    if cap.backlog is not None:  # one segment closes at a time: what closed since the last call is one of these
        recent = [s for s in (ps.previous_segment, ps.last_segment) if s is not None]
        cap.backlog.track(ps.pod.uid, recent, ps.writer.current if ps.writer is not None else None)


@dataclass(frozen=True)
class Gap:
    """Packets of a pod that are not stored, and why: a line of its gap log."""

    ps: PodState
    stream: str
    cause: str
    packets: int
    first_ns: int
    last_ns: int


def note_gaps(storage: CaptureStorage, cap: Capture, gaps: list[Gap]) -> None:
    """Note in each pod's gap log that packets are missing, so the stored capture itself says where it has holes
    and why. Called without the capture's lock (it is I/O); in stream order for each pod."""
    for g in gaps:
        if g.cause not in ("kernel", "past_limit", "late"):
            log.warning("capture %s: pod %s: %d packets not stored (%s)", cap.id, g.ps.pod.display, g.packets,
                        LABELS.get(g.cause, g.cause))
        try:
            loc = location(storage, cap, g.ps)
        except StorageError as e:
            log.error("cannot record the gap: %s", e)
            continue
        loc.record_gap(first_ns=g.first_ns, last_ns=g.last_ns, packets=g.packets, cause=g.cause, stream=g.stream)
