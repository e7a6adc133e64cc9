"""The collector's in-memory model of captures and their pods: pure data, guarded by ``Capture.lock`` (a pod's
segment writer also by its ``PodState.io_lock``).

``Capture`` and ``PodState`` hold what ``podcap status`` shows and what storage needs: per pod every stream it had
(``podcap.collector.captures.streams``: sequence position and accounting; the newest is the current one), its open
segment writer (through the storage interface, ``podcap.collector.storage.base``), cumulative and retired counters,
what its agent last said it holds unacknowledged (``held``), and whether its counters are exact (``final``: the
agent's final reports came, everything they announced arrived, nothing is on its way).

Of a pod's segments only what the ingest path and the next commit need is here: the newest (the writer's current
while one is open) and the one before it (what a rotation just closed), the ones whose rows the next commit writes
(``unrecorded``, ``unrecorded_deletes``), and the few oldest that retention takes next (``head``); with tiered
storage the capture's ``ArchiveBacklog`` holds its closed segments not yet archived. The catalog is the home of
the rest (``podcap.collector.captures.segments`` reads both), so a pod's memory and a commit's work do not grow
with the capture's age. ``to_commit`` is what a commit writes of a pod (``podcap.collector.storage.catalog``).
Nothing here does I/O or knows the storage layout; followers are anything with the ``Follower`` shape.
"""

from __future__ import annotations

import collections
import os
import threading
from dataclasses import dataclass, field
from typing import Protocol

from podcap.collector.captures.backlog import ArchiveBacklog
from podcap.collector.captures.streams import Held, StreamState, pod_counts
from podcap.collector.storage.base import PodLocation, SegmentInfo, SegmentWriter
from podcap.collector.storage.catalog import PodCommit, PodRow, SegmentRow
from podcap.collector.targets import TargetSpec
from podcap.drops import Drops
from podcap.names import CaptureId, PodUid
from podcap.pods import PodRef
from podcap.v1 import common_pb2, control_pb2

DEFAULT_SEGMENT_BYTES = 64 << 20
MIN_SEGMENT_BYTES = 64 << 10
TERMINAL = (common_pb2.POD_CAPTURE_STATE_DONE, common_pb2.POD_CAPTURE_STATE_FAILED)
ACTIVE = (common_pb2.POD_CAPTURE_STATE_PENDING, common_pb2.POD_CAPTURE_STATE_CAPTURING)
LIVE = (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING)


class Follower(Protocol):
    """A live reader of a capture (``podcap.collector.captures.follow.Subscription``); offering never blocks."""

    def wants(self, pod: common_pb2.Pod) -> bool: ...

    def announce(self, pod: common_pb2.Pod, fmt: common_pb2.PcapFormat) -> int: ...

    def offer(self, pod: common_pb2.Pod, fmt: common_pb2.PcapFormat, records: bytes, packets: int) -> None: ...

    def end(self, status: control_pb2.CaptureStatus | None) -> None: ...


@dataclass
class PodState:
    pod: PodRef
    rel_path: str
    state: common_pb2.PodCaptureState.ValueType = common_pb2.POD_CAPTURE_STATE_PENDING
    interface: str = ""
    message: str = ""
    # Every stream the pod had, by id; ``current`` is the newest (its format is ``fmt``, what the pod's files hold).
    streams: dict[str, StreamState] = field(default_factory=dict)
    current: str = ""
    fmt: common_pb2.PcapFormat | None = None
    # Packets of chunks of streams the collector never saw start (refused, and counted here).
    orphan: Drops = field(default_factory=Drops)
    # What the agent last said it held unacknowledged, by stream id (``podcap.collector.captures.held``); streams
    # the collector has not seen start may be among them.
    held: dict[str, Held] = field(default_factory=dict)
    # The agent reported the pod's end (a DONE or FAILED event), as opposed to the collector giving up on it.
    reported_end: bool = False
    location: PodLocation | None = None  # where its segments go (set when first needed; not persisted)
    # The pod's writer and its I/O are guarded by ``io_lock`` (taken before the capture's lock, never while holding
    # it); ``writer`` is assigned holding both, so either lock suffices to read it.
    io_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    writer: SegmentWriter | None = None
    close_wanted: bool = False  # the writer is to be closed (by ``pods.settle_closes``, outside the capture's lock)
    close_pending: bool = False  # closing the writer failed (its last bytes not yet on disk): the committer retries
    # Segments (see the module docstring). ``segment_count`` counts those kept; retention deletes oldest first, so
    # every index up to ``retired_through`` is gone; ``max_span_ns`` bounds a window read's search by time.
    last_segment: SegmentInfo | None = None
    previous_segment: SegmentInfo | None = None
    unrecorded: dict[int, SegmentInfo] = field(default_factory=dict)
    unrecorded_deletes: set[int] = field(default_factory=set)
    head: collections.deque[SegmentInfo] = field(default_factory=collections.deque)
    segment_count: int = 0
    retired_through: int = 0
    max_span_ns: int = 0
    next_segment: int = 1
    packets_total: int = 0
    bytes_total: int = 0
    retired_packets: int = 0
    retired_bytes: int = 0
    reattachments: int = 0
    gap_since_ns: int = 0
    # Changed since the last commit.
    dirty: bool = True

    @property
    def dir_name(self) -> str:
        """The pod's directory under its namespace (its name; name.uid-prefix for a re-created pod)."""
        return os.path.basename(self.rel_path)

    @property
    def stored_bytes(self) -> int:
        return max(0, self.bytes_total - self.retired_bytes)

    def segment_written(self, seg: SegmentInfo) -> None:
        """The writer's current segment after an append (a new one, or the same grown): the next commit records it
        (caller holds the capture's lock)."""
        if seg is not self.last_segment:
            self.previous_segment, self.last_segment = self.last_segment, seg
            self.segment_count += 1
            self.next_segment = seg.index + 1
        self.unrecorded[seg.index] = seg
        if seg.first_ts_ns:
            self.max_span_ns = max(self.max_span_ns, seg.last_ts_ns - seg.first_ts_ns)
        self.dirty = True

    def retire(self, seg: SegmentInfo) -> None:
        """``seg``, the oldest kept (``head[0]``), is no longer the pod's: counted as retired, its row deleted by the
        next commit (caller holds the capture's lock)."""
        if self.head and self.head[0] is seg:
            self.head.popleft()
        self.retired_bytes += seg.bytes
        self.retired_packets += seg.packets
        self.segment_count -= 1
        self.unrecorded.pop(seg.index, None)
        self.unrecorded_deletes.add(seg.index)
        if seg is self.previous_segment:
            self.previous_segment = None
        if seg is self.last_segment:
            self.last_segment = None
        self.retired_through = max(self.retired_through, seg.index)
        self.dirty = True

    def add_stream(self, stream_id: str, fmt: common_pb2.PcapFormat) -> StreamState:
        """A stream seen starting for the first time: it becomes the current one."""
        st = StreamState(stream_id, fmt, ordinal=1 + max((s.ordinal for s in self.streams.values()), default=0))
        self.streams[stream_id] = st
        self.current = stream_id
        self.fmt = fmt
        return st

    def abandon_streams(self) -> None:
        """Streams that have not sent their final report will never send it (their agent is gone for good, or the
        capture is over): account for them with what is known."""
        for st in self.streams.values():
            if not st.final and not st.abandoned:
                st.abandoned = True
                self.dirty = True

    def on_its_way(self) -> Held:
        """What the agent holds that may still arrive: its last report, less the streams the collector has whole
        and those it gave up on (what they held is counted lost with the agent)."""
        total = Held()
        for sid, h in self.held.items():
            st = self.streams.get(sid)
            if st is None or not (st.complete or st.lost):
                total += h
        return total

    @property
    def final(self) -> bool:
        """The pod's counters are exact: it ended, every stream sent its final report and everything that report
        announced arrived, and the agent holds nothing more of it. A pod without any stream is final only when
        its agent reported its end (a pod the collector gave up on may have been captured, with every report
        lost)."""
        if self.state not in TERMINAL or self.on_its_way():
            return False
        if not self.streams:
            return self.reported_end
        return all(st.complete for st in self.streams.values())

    def status(self) -> control_pb2.PodStatus:
        counts = pod_counts(list(self.streams.values()), self.orphan, self.held)
        stored = self.packets_total - self.retired_packets
        return control_pb2.PodStatus(
            pod=self.pod.to_proto(), state=self.state, packets=stored, bytes=self.stored_bytes,
            kernel=common_pb2.KernelStats(received=counts.received, dropped=counts.dropped,
                                          if_dropped=counts.if_dropped),
            agent_dropped_packets=counts.drops.agent_total(), drops=counts.drops.to_proto(),
            unaccounted=counts.received - stored - self.retired_packets - counts.dropped - counts.drops.total(),
            interface=self.interface, message=self.message, segments=self.segment_count, path=self.rel_path,
            reattachments=self.reattachments, retired_bytes=self.retired_bytes,
            retired_packets=self.retired_packets, held=self.on_its_way().to_proto(), final=self.final,
        )

    def to_commit(self) -> PodCommit:
        """What the next commit writes of the pod: its row, the streams and segments that changed since the last
        commit, the segments retired since (caller holds the capture's lock)."""
        current = self.streams.get(self.current)
        streams = [sr for st in self.streams.values() if (sr := st.row(self.held.get(st.id))) != st.recorded]
        pod = PodRow(
            status=self.status(), format=self.fmt, stream_id=self.current,
            last_seq=current.last_seq if current is not None else 0,
            packets_total=self.packets_total, bytes_total=self.bytes_total, segments=self.segment_count,
            max_span_ns=self.max_span_ns, streams=streams, orphan=self.orphan.copy(),
        )
        return PodCommit(pod, [segment_row(s) for s in self.unrecorded.values()], sorted(self.unrecorded_deletes))

    def committed(self, pc: PodCommit) -> None:
        """``pc`` is durable: what has not changed since it was taken need not be written again (caller holds the
        capture's lock)."""
        for seg_row in pc.segments:
            seg = self.unrecorded.get(seg_row.index)
            if seg is not None and segment_row(seg) == seg_row:
                del self.unrecorded[seg_row.index]
        self.unrecorded_deletes.difference_update(pc.retired)
        for stream_row in pc.row.streams:
            st = self.streams.get(stream_row.stream_id)
            if st is not None:
                st.recorded = stream_row


def segment_row(s: SegmentInfo) -> SegmentRow:
    return SegmentRow(s.index, s.bytes, s.packets, s.first_ts_ns, s.last_ts_ns, s.archived)


@dataclass
class Capture:
    id: CaptureId
    request: control_pb2.StartCaptureRequest
    target: TargetSpec
    created_ns: int
    state: control_pb2.CaptureState.ValueType = control_pb2.CAPTURE_STATE_RUNNING
    ended_ns: int = 0
    end_reason: str = ""
    pods: dict[PodUid, PodState] = field(default_factory=dict)
    # Cumulative packets/bytes stored (what --max-packets/--max-bytes count; retention does not lower them).
    packets_total: int = 0
    bytes_total: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    # Held for a whole commit (sync, database, acknowledgements' bookkeeping), so that commits of one capture run
    # one at a time; always taken before ``lock``, never while holding it.
    commit_lock: threading.Lock = field(default_factory=threading.Lock)
    ended: threading.Event = field(default_factory=threading.Event)
    stop_started: float = 0.0
    stop_deadline: float = 0.0
    dirty: bool = True
    recorded_state: tuple[int, int, str] | None = None  # (state, ended_ns, end_reason) as the catalog has them
    # Set (under the lock) by the chunk that reached a packet or byte limit: nothing after it is stored.
    limit_reached: str = ""
    followers: list[Follower] = field(default_factory=list)
    # With tiered storage: its closed segments not yet in the second tier (set by the archiver, which adopts it).
    backlog: ArchiveBacklog | None = None
    # Why the capture was deleted ("" while it exists): whoever still holds it (a download) stops with this, and
    # nothing records it again (``podcap.collector.captures.lifecycle``).
    deleted: str = ""

    @property
    def deadline_ns(self) -> int:
        d = self.request.limits.duration_seconds
        return self.created_ns + d * 1_000_000_000 if d else 0

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def segment_bytes(self) -> int:
        """Rotation size: as configured, but small enough that retention can keep close to its targets."""
        size = self.request.rotation.segment_bytes or DEFAULT_SEGMENT_BYTES
        r = self.request.retention
        if r.keep_bytes:
            size = min(size, r.keep_bytes // 4)
        if r.keep_total_bytes:
            size = min(size, r.keep_total_bytes // (4 * max(1, len(self.pods))))
        return max(MIN_SEGMENT_BYTES, size)

    def segment_seconds(self) -> int:
        seconds = self.request.rotation.segment_seconds
        keep = self.request.retention.keep_seconds
        if keep:
            seconds = min(seconds or keep, max(1, keep // 6))
        return seconds

    def status(self, paused: str = "") -> control_pb2.CaptureStatus:
        with self.lock:
            pods = [p.status() for p in self.pods.values()]
            return control_pb2.CaptureStatus(
                id=self.id, state=self.state, target=self.request.target, settings=self.request.settings,
                limits=self.request.limits, rotation=self.request.rotation, retention=self.request.retention,
                note=self.request.note, created_unix_ns=self.created_ns, ended_unix_ns=self.ended_ns,
                end_reason=self.end_reason, pods=pods, packets=sum(p.packets for p in pods),
                bytes=sum(p.bytes for p in pods), paused=paused if self.live else "",
            )
