"""Startup: the captures in the database, with each live pod's segments brought back to what was acknowledged.

The database never claims more than storage holds (a commit syncs before it records), so after a crash storage
may hold more: segments or bytes written after the last commit. Those were never acknowledged and the agents send
them again, so recovery deletes unknown segments and cuts the last one back to its recorded size (and to whole
records). A segment retention deleted after the last commit is counted as retired. A segment file gone from the
middle of a pod's series (deleted by hand, a disk error) is said as an error (``_check_missing``). Live pods wait
for their agent.

Only each pod's row and its newest segment are loaded, and with tiered storage ``adopt`` (the archiver's) takes the
segments not yet archived, before anything else reads segments: the rest stays in the catalog
(``podcap.collector.captures.segments``). Retention deletes oldest first, so the segments it
deleted before the crash are the oldest the catalog lists, checked from there until one exists; segment files the
catalog does not know lie outside its range of indices, found by listing the pod's directory. A start costs
what the pods hold on local disk, not what their captures have accumulated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from podcap.collector.captures.model import ACTIVE, TERMINAL, Capture, PodState
from podcap.collector.captures.pods import file_format, location, pod_key
from podcap.collector.captures.requests import save_target
from podcap.collector.captures.segments import SegmentIndex
from podcap.collector.captures.streams import StreamState
from podcap.collector.captures.table import grace_starts
from podcap.collector.storage.base import (
    CaptureStorage,
    PodLocation,
    SecondTier,
    SegmentInfo,
    StorageError,
    pod_path,
)
from podcap.collector.storage.catalog import PodRow, SegmentRow
from podcap.collector.targets import parse_target
from podcap.errors import InvalidInputError
from podcap.names import CaptureId
from podcap.pods import PodRef
from podcap.v1 import common_pb2, control_pb2

log = logging.getLogger(__name__)


def load(index: SegmentIndex, adopt: Callable[[Capture], None] = lambda _cap: None) -> list[Capture]:
    """The captures in the catalog; ``adopt`` is called with each once its pods are loaded, before they are
    recovered."""
    store, storage = index.store, index.storage
    captures = []
    for row in store.captures():
        try:
            spec = save_target(row.request) if row.request.HasField("save") else parse_target(row.request.target)
        except InvalidInputError:
            log.error("stored capture %s has an invalid target; skipped", row.id)
            continue
        cap = Capture(CaptureId(row.id), row.request, spec, row.created_ns,
                      control_pb2.CaptureState.ValueType(row.state), row.ended_ns, row.end_reason)
        cap.recorded_state = (row.state, row.ended_ns, row.end_reason)
        for pr in store.pods(row.id):
            ps = _pod(index, cap, pr)
            cap.pods[ps.pod.uid] = ps
            cap.packets_total += ps.packets_total
            cap.bytes_total += ps.bytes_total
        adopt(cap)
        for ps in cap.pods.values():
            if storage.second_tier is not None:
                try:
                    _release_archived(index, storage.second_tier, cap, ps)
                except (StorageError, OSError) as e:
                    log.error("capture %s: pod %s: %s", cap.id, ps.pod.display, e)
            if cap.live:
                try:
                    _recover_pod(index, cap, ps)
                except StorageError as e:
                    log.error("capture %s: pod %s cannot be recovered: %s", cap.id, ps.pod.display, e)
        if cap.live:
            log.info("resuming capture %s after a restart", cap.id)
            if cap.state == control_pb2.CAPTURE_STATE_STOPPING:
                grace_starts(cap)
        else:
            cap.ended.set()
        captures.append(cap)
    return captures


def _pod(index: SegmentIndex, cap: Capture, pr: PodRow) -> PodState:
    st = pr.status
    ps = PodState(
        PodRef.from_proto(st.pod),
        st.path or pod_path(cap.id, st.pod.namespace, st.pod.name),
        state=st.state, interface=st.interface, message=st.message, current=pr.stream_id,
        fmt=pr.format, orphan=pr.orphan, packets_total=pr.packets_total, bytes_total=pr.bytes_total,
        retired_packets=st.retired_packets, retired_bytes=st.retired_bytes,
        reattachments=st.reattachments, segment_count=pr.segments, max_span_ns=pr.max_span_ns, dirty=False,
    )
    _load_streams(ps, pr)
    # Whether the agent reported the pod's end is not stored as such: a pod that was final was, and so was a pod
    # that ended with every stream's final report (what else would have ended it).
    ps.reported_end = st.final or (st.state in TERMINAL and bool(ps.streams)
                                   and all(s.final for s in ps.streams.values()))
    newest = index.store.newest_segment(cap.id, str(ps.pod.uid))
    if newest is not None:
        ps.last_segment = _segment(index.storage, cap, ps, newest)
        ps.next_segment = newest.index + 1
    return ps


def _segment(storage: CaptureStorage, cap: Capture, ps: PodState, row: SegmentRow) -> SegmentInfo:
    seg = location(storage, cap, ps).segment(row.index)
    seg.bytes, seg.packets = row.bytes, row.packets
    seg.first_ts_ns, seg.last_ts_ns = row.first_ts_ns, row.last_ts_ns
    seg.archived = row.archived
    return seg


def _release_archived(index: SegmentIndex, tier: SecondTier, cap: Capture, ps: PodState) -> None:
    """Segments archived and recorded whose local copy a crash left behind (the archiver releases a copy right
    after recording where it went): found among the pod's local files, released."""
    loc = location(index.storage, cap, ps)
    waiting = {seg.index for seg in cap.backlog.segments_of(ps.pod.uid)} if cap.backlog is not None else set()
    local = [i for i in loc.local_segments() if i not in waiting]
    for row in index.store.archived_among(cap.id, str(ps.pod.uid), local):
        tier.release(pod_key(cap, ps), _segment(index.storage, cap, ps, row))


def _load_streams(ps: PodState, pr: PodRow) -> None:
    for sr in pr.streams:
        stream = StreamState(sr.stream_id, sr.format or common_pb2.PcapFormat(), sr.ordinal,
                             last_seq=sr.last_seq, committed_seq=sr.last_seq)
        held = stream.load_counters(sr.counters)
        if held:
            ps.held[stream.id] = held
        ps.streams[stream.id] = stream
    if not pr.streams and pr.stream_id and pr.format is not None:
        # A data dir of a collector that kept one stream per pod: its counters become one (final) stream.
        stream = StreamState(pr.stream_id, pr.format, 1, last_seq=pr.last_seq, committed_seq=pr.last_seq,
                             kernel=(pr.status.kernel.received, pr.status.kernel.dropped,
                                     pr.status.kernel.if_dropped),
                             final=pr.status.state in TERMINAL, stored=pr.packets_total,
                             delivered=pr.packets_total + pr.status.agent_dropped_packets)
        stream.inband.buffer_full = pr.status.agent_dropped_packets
        ps.streams[stream.id] = stream


def _recover_pod(index: SegmentIndex, cap: Capture, ps: PodState) -> None:
    """Make the pod's storage match what was acknowledged: drop unknown segments, cut the last one back."""
    storage = index.storage
    loc = location(storage, cap, ps)
    last = ps.last_segment
    known = range(index.store.oldest_index(cap.id, str(ps.pod.uid)), last.index + 1) if last is not None else range(0)
    for path in loc.recover_unknown(known):
        log.warning("capture %s: removed %s (written after the last commit; the agent re-sends it)", cap.id, path)
    while ps.segment_count > 1:
        # Deleted by retention after the last commit (the oldest first): what the next commit would have recorded.
        if not ps.head and not index.load_head(cap, ps):
            break
        oldest = ps.head[0]
        if oldest is last or loc.exists(oldest):
            break
        if cap.backlog is not None:
            cap.backlog.gone(ps.pod.uid, oldest)
        ps.retire(oldest)
    if last is not None and ps.fmt is not None and not last.archived:
        try:
            size = loc.recover_segment(last, file_format(ps.fmt))
        except FileNotFoundError:
            log.error("capture %s: segment %s is missing", cap.id, last.locator)
            _forget_last(index, cap, ps)
        else:
            if size != last.bytes:
                log.warning("capture %s: %s holds %d of %d recorded bytes after the crash", cap.id, last.locator,
                            size, last.bytes)
                ps.bytes_total -= last.bytes - size
                last.bytes = size
                ps.unrecorded[last.index] = last
                ps.dirty = True
    _check_missing(cap, ps, loc)
    if ps.state in ACTIVE or ps.state == common_pb2.POD_CAPTURE_STATE_NO_AGENT:
        ps.state = common_pb2.POD_CAPTURE_STATE_NO_AGENT
        ps.message = "waiting for the node's agent after a collector restart"
        ps.gap_since_ns = time.time_ns()


def _check_missing(cap: Capture, ps: PodState, loc: PodLocation) -> None:
    """Segment files gone from the middle of the pod's series (deleted by hand, a disk error; retention deletes the
    oldest first and was handled before), said as an error. With a second tier the segments waiting for it are
    exactly those the local tier must hold (``adopt`` loaded them): a missing one is named, leaves the archive
    backlog (else archiving would stop at it for good) and is counted as retired, its row deleted with the next
    commit. Without one, what the pod's files number is compared with what its row counts (naming them would cost a
    scan of the catalog): the error says how many are missing, and reads skip them."""
    on_disk = set(loc.local_segments())
    if cap.backlog is None:
        if len(on_disk) < ps.segment_count:
            log.error("capture %s: pod %s: %d of its %d segment files are missing (deleted by hand, a disk error?); "
                      "reads skip them", cap.id, ps.pod.display, ps.segment_count - len(on_disk), ps.segment_count)
        return
    for seg in cap.backlog.segments_of(ps.pod.uid):
        if seg.index in on_disk:
            continue
        log.error("capture %s: pod %s: segment %s is missing (%d packets, %d bytes): counted as deleted", cap.id,
                  ps.pod.display, seg.locator, seg.packets, seg.bytes)
        cap.backlog.gone(ps.pod.uid, seg)
        for held in [s for s in ps.head if s.index == seg.index]:
            ps.head.remove(held)
        # As ``PodState.retire`` counts it, but not as the pod's oldest: ``retired_through`` stays where retention is.
        ps.retired_bytes += seg.bytes
        ps.retired_packets += seg.packets
        ps.segment_count -= 1
        ps.unrecorded.pop(seg.index, None)
        ps.unrecorded_deletes.add(seg.index)
        if seg is ps.last_segment or (ps.last_segment is not None and ps.last_segment.index == seg.index):
            ps.last_segment = None
        ps.dirty = True


def _forget_last(index: SegmentIndex, cap: Capture, ps: PodState) -> None:
    """The newest segment's file is gone: the pod's newest is the one before it (its row goes with the next
    commit; its index is not used again)."""
    last = ps.last_segment
    assert last is not None
    ps.segment_count -= 1
    if cap.backlog is not None:
        cap.backlog.gone(ps.pod.uid, last)
    ps.unrecorded.pop(last.index, None)
    ps.unrecorded_deletes.add(last.index)
    ps.dirty = True
    before = index.store.newest_segment(cap.id, str(ps.pod.uid), before=last.index)
    ps.last_segment = _segment(index.storage, cap, ps, before) if before is not None else None
