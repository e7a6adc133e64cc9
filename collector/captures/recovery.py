"""Startup: the captures in the database, with each live pod's segments brought back to what was acknowledged.

The database never claims more than storage holds (a commit syncs before it records), so after a crash storage
may hold more: segments or bytes written after the last commit. Those were never acknowledged and the agents send
them again, so recovery deletes unknown segments and cuts the last one back to its recorded size (and to whole
records). A segment retention deleted after the last commit is counted as retired. Live pods wait for their agent.
"""

from __future__ import annotations

import logging
import os
import time

from podcap.collector.captures.model import ACTIVE, TERMINAL, Capture, PodState
from podcap.collector.captures.pods import file_format, location
from podcap.collector.captures.streams import StreamState
from podcap.collector.captures.table import grace_starts
from podcap.collector.storage.base import CaptureStorage, StorageError
from podcap.collector.storage.catalog import CaptureStore, PodRow
from podcap.collector.targets import parse_target
from podcap.errors import InvalidInputError
from podcap.names import CaptureId
from podcap.pods import PodRef
from podcap.v1 import common_pb2, control_pb2

log = logging.getLogger(__name__)


def load(store: CaptureStore, storage: CaptureStorage) -> list[Capture]:
    captures = []
    for row in store.captures():
        try:
            spec = parse_target(row.request.target)
        except InvalidInputError:
            log.error("stored capture %s has an invalid target; skipped", row.id)
            continue
        cap = Capture(CaptureId(row.id), row.request, spec, row.created_ns,
                      control_pb2.CaptureState.ValueType(row.state), row.ended_ns, row.end_reason)
        for pr in store.pods(row.id):
            ps = _pod(storage, cap, pr)
            for seg in ps.segments:
                if seg.archived:  # archived and recorded; a crash may have come before the local copy went
                    location(storage, cap, ps).release(seg)
            if cap.live:
                try:
                    _recover_pod(storage, cap, ps)
                except StorageError as e:
                    log.error("capture %s: pod %s cannot be recovered: %s", cap.id, ps.pod.display, e)
            cap.pods[ps.pod.uid] = ps
            cap.packets_total += ps.packets_total
            cap.bytes_total += ps.bytes_total
        if cap.live:
            log.info("resuming capture %s after a restart", cap.id)
            if cap.state == control_pb2.CAPTURE_STATE_STOPPING:
                grace_starts(cap)
        else:
            cap.ended.set()
        captures.append(cap)
    return captures


def _pod(storage: CaptureStorage, cap: Capture, pr: PodRow) -> PodState:
    st = pr.status
    ps = PodState(
        PodRef.from_proto(st.pod),
        st.path or os.path.join("captures", cap.id, st.pod.namespace, st.pod.name),
        state=st.state, interface=st.interface, message=st.message, current=pr.stream_id,
        fmt=pr.format, orphan=pr.orphan, packets_total=pr.packets_total, bytes_total=pr.bytes_total,
        retired_packets=st.retired_packets, retired_bytes=st.retired_bytes,
        reattachments=st.reattachments, dirty=False,
    )
    _load_streams(ps, pr)
    # Whether the agent reported the pod's end is not stored as such: a pod that was final was, and so was a pod
    # that ended with every stream's final report (what else would have ended it).
    ps.reported_end = st.final or (st.state in TERMINAL and bool(ps.streams)
                                   and all(s.final for s in ps.streams.values()))
    loc = location(storage, cap, ps)
    for row in pr.segments:
        seg = loc.segment(row.index)
        seg.bytes, seg.packets = row.bytes, row.packets
        seg.first_ts_ns, seg.last_ts_ns = row.first_ts_ns, row.last_ts_ns
        seg.archived = row.archived
        ps.segments.append(seg)
    ps.next_segment = max((s.index for s in pr.segments), default=0) + 1
    return ps


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


def _recover_pod(storage: CaptureStorage, cap: Capture, ps: PodState) -> None:
    """Make the pod's storage match what was acknowledged: drop unknown segments, cut the last one back."""
    loc = location(storage, cap, ps)
    for path in loc.recover_unknown({s.index for s in ps.segments}):
        log.warning("capture %s: removed %s (written after the last commit; the agent re-sends it)", cap.id, path)
    for seg in [s for s in ps.segments[:-1] if not loc.exists(s)]:
        # Deleted by retention after the last commit: what the next commit would have recorded.
        ps.segments.remove(seg)
        ps.retired_bytes += seg.bytes
        ps.retired_packets += seg.packets
        ps.dirty = True
    if ps.segments and ps.fmt is not None and not ps.segments[-1].archived:
        last = ps.segments[-1]
        try:
            size = loc.recover_segment(last, file_format(ps.fmt))
        except FileNotFoundError:
            log.error("capture %s: segment %s is missing", cap.id, last.locator)
            ps.segments.pop()
        else:
            if size != last.bytes:
                log.warning("capture %s: %s holds %d of %d recorded bytes after the crash", cap.id, last.locator,
                            size, last.bytes)
                ps.bytes_total -= last.bytes - size
                last.bytes = size
                ps.dirty = True
    if ps.state in ACTIVE or ps.state == common_pb2.POD_CAPTURE_STATE_NO_AGENT:
        ps.state = common_pb2.POD_CAPTURE_STATE_NO_AGENT
        ps.message = "waiting for the node's agent after a collector restart"
        ps.gap_since_ns = time.time_ns()
