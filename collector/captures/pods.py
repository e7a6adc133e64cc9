"""One pod's storage as the capture components use it: its location, its open segment writer, its gap log.

The pod's ``PodLocation`` comes from the ``CaptureStorage`` once and is kept on its ``PodState``. Writers are
opened for the stream's format and closed when the stream (or the capture) ends; a close that fails keeps the
writer and everything it holds (``close_pending``), so the committer's next sync fails too, nothing more is
acknowledged, storing pauses, and the close is retried. Losses are logged and noted in the pod's gap log.
"""

from __future__ import annotations

import logging

from podcap.collector.captures.model import Capture, PodState
from podcap.collector.captures.streams import StreamState
from podcap.collector.storage.base import CaptureStorage, PodLocation, SegmentWriter, StorageError
from podcap.drops import LABELS
from podcap.pcapfile import FileFormat
from podcap.v1 import common_pb2

log = logging.getLogger(__name__)


def file_format(pf: common_pb2.PcapFormat) -> FileFormat:
    return FileFormat(pf.linktype, pf.snaplen, pf.nanosecond)


def location(storage: CaptureStorage, cap: Capture, ps: PodState) -> PodLocation:
    """The pod's location (raises StorageError when it cannot be used)."""
    if ps.location is None:
        ps.location = storage.pod(cap.id, ps.pod.namespace, ps.dir_name)
    return ps.location


def open_writer(storage: CaptureStorage, cap: Capture, ps: PodState, fmt: FileFormat) -> SegmentWriter:
    """The pod's writer for ``fmt`` (a new segment series when the format changed). Raises StorageError (the caller
    pauses and retries; the old segment stays whole)."""
    if ps.writer is None or ps.writer.fmt != fmt:
        if ps.writer is not None:
            ps.writer.close()
            ps.writer = None
            ps.close_pending = False
        ps.writer = location(storage, cap, ps).writer(fmt, segment_bytes=cap.segment_bytes(),
                                                      segment_seconds=cap.segment_seconds(),
                                                      next_index=ps.next_segment)
    return ps.writer


def close_writer(ps: PodState) -> None:
    """Close the pod's writer; on failure keep it for the committer to retry (see the module docstring)."""
    if ps.writer is not None:
        try:
            ps.writer.close()
        except OSError as e:
            log.error("closing %s: %s (retried after the next sync)", ps.rel_path, e)
            ps.close_pending = True
            ps.dirty = True
            return
        ps.writer = None
        ps.close_pending = False


def note_gap(storage: CaptureStorage, cap: Capture, ps: PodState, st: StreamState | None, cause: str, packets: int,
             first_ns: int, last_ns: int) -> None:
    """Note in the pod's gap log that packets are missing, so the stored capture itself says where it has holes
    and why."""
    if cause not in ("kernel", "past_limit", "late"):
        log.warning("capture %s: pod %s: %d packets not stored (%s)", cap.id, ps.pod.display, packets,
                    LABELS.get(cause, cause))
    try:
        loc = location(storage, cap, ps)
    except StorageError as e:
        log.error("cannot record the gap: %s", e)
        return
    loc.record_gap(first_ns=first_ns, last_ns=last_ns, packets=packets, cause=cause,
                   stream=st.id if st is not None else "")
