"""Capture lifecycle and per-pod state: the collector's core.

``CaptureManager`` turns a validated start request into per-pod start commands for the agents, stores every chunk
the agents send (validated, de-duplicated by (stream, seq), cut exactly at the capture's packet and byte limits),
tracks per-pod state and counters, ends captures (stop, duration, limits, every pod gone) and persists what
``podcap status`` shows. Agents coming and going are handled here too: a re-registered agent gets the captures
that still want its pods, and a pod whose node lost its agent shows that in its state.

Concurrency: one lock per capture guards its pods, writers and counters, so chunk writes for different captures
run in parallel; the manager lock only guards the capture table. A ticker thread enforces deadlines and flushes
counters to SQLite about once a second.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from podcap.collector.agents import AgentConnection, AgentListener, AgentRegistry
from podcap.collector.filters import check_filter
from podcap.collector.storage.local import PodWriter, StorageError, list_segments, pod_dir
from podcap.collector.store import CaptureRow, CaptureStore
from podcap.collector.targets import PodRef, TargetSpec, parse_target, resolve
from podcap.names import CaptureId, NodeName, PodUid, new_capture_id
from podcap.pcapfile import FILE_HEADER_LEN, MAX_SNAPLEN, FileFormat, PcapFormatError, scan_records
from podcap.v1 import common_pb2, control_pb2, ingest_pb2

log = logging.getLogger(__name__)

MAX_DURATION_S = 30 * 24 * 3600
DEFAULT_SEGMENT_BYTES = 64 << 20
MIN_SEGMENT_BYTES = 64 << 10
STOP_GRACE_S = 10.0
TERMINAL = (common_pb2.POD_CAPTURE_STATE_DONE, common_pb2.POD_CAPTURE_STATE_FAILED)
ACTIVE = (common_pb2.POD_CAPTURE_STATE_PENDING, common_pb2.POD_CAPTURE_STATE_CAPTURING)


class CaptureNotFoundError(LookupError):
    pass


class NoAgentError(RuntimeError):
    """A pod's node has no connected agent."""


class ChunkRejectedError(ValueError):
    """An agent sent a chunk that cannot be stored (malformed, unknown stream, out of order)."""


@dataclass
class PodState:
    pod: PodRef
    state: common_pb2.PodCaptureState.ValueType = common_pb2.POD_CAPTURE_STATE_PENDING
    packets: int = 0
    bytes: int = 0
    kernel: tuple[int, int, int] = (0, 0, 0)
    # Kernel counters of streams that ended (a pod re-attached after a restart starts a new stream at zero).
    kernel_base: tuple[int, int, int] = (0, 0, 0)
    agent_dropped: int = 0
    agent_dropped_base: int = 0
    interface: str = ""
    message: str = ""
    stream_id: str = ""
    last_seq: int = 0
    fmt: common_pb2.PcapFormat | None = None
    writer: PodWriter | None = None
    segments: int = 0
    rel_path: str = ""
    reattachments: int = 0
    # When the pod's last stream broke (wall clock, ns); 0 while a stream runs.
    gap_since_ns: int = 0

    def status(self) -> control_pb2.PodStatus:
        k = tuple(a + b for a, b in zip(self.kernel_base, self.kernel, strict=True))
        return control_pb2.PodStatus(
            pod=self.pod.to_proto(), state=self.state, packets=self.packets, bytes=self.bytes,
            kernel=common_pb2.KernelStats(received=k[0], dropped=k[1], if_dropped=k[2]),
            agent_dropped_packets=self.agent_dropped_base + self.agent_dropped, interface=self.interface,
            message=self.message, segments=self.segments, path=self.rel_path, reattachments=self.reattachments,
        )


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
    packets: int = 0
    bytes: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    ended: threading.Event = field(default_factory=threading.Event)
    stop_deadline: float = 0.0
    dirty: bool = True
    # Set (under the lock) by the chunk that reached a packet or byte limit: nothing after it is stored.
    limit_reached: str = ""

    @property
    def deadline_ns(self) -> int:
        d = self.request.limits.duration_seconds
        return self.created_ns + d * 1_000_000_000 if d else 0

    def status(self) -> control_pb2.CaptureStatus:
        with self.lock:
            return control_pb2.CaptureStatus(
                id=self.id, state=self.state, target=self.request.target, settings=self.request.settings,
                limits=self.request.limits, rotation=self.request.rotation, note=self.request.note,
                created_unix_ns=self.created_ns, ended_unix_ns=self.ended_ns, end_reason=self.end_reason,
                pods=[p.status() for p in self.pods.values()], packets=self.packets, bytes=self.bytes,
            )


def validate_request(req: control_pb2.StartCaptureRequest) -> TargetSpec:
    """Check everything about a start request that does not depend on the cluster; raise ValueError subclasses."""
    spec = parse_target(req.target)
    s = req.settings
    if s.snaplen > MAX_SNAPLEN:
        raise ValueError(f"snaplen {s.snaplen} is above the maximum {MAX_SNAPLEN}")
    if s.buffer_bytes and not (64 << 10) <= s.buffer_bytes <= (1 << 30):
        raise ValueError("buffer size must be between 64 KiB and 1 GiB")
    check_filter(s.filter, interface=s.interface, snaplen=s.snaplen)
    if req.limits.duration_seconds > MAX_DURATION_S:
        raise ValueError(f"duration above {MAX_DURATION_S // 86400} days")
    if req.limits.max_bytes and req.limits.max_bytes < FILE_HEADER_LEN + 16:
        raise ValueError("max-bytes must leave room for a pcap header and one packet (at least 40 bytes)")
    if req.rotation.segment_bytes and req.rotation.segment_bytes < MIN_SEGMENT_BYTES:
        raise ValueError(f"segment size below {MIN_SEGMENT_BYTES} bytes")
    if len(req.note.encode()) > 1024:
        raise ValueError("note longer than 1024 bytes")
    return spec


class CaptureManager(AgentListener):
    def __init__(self, data_dir: str, registry: AgentRegistry, store: CaptureStore) -> None:
        self.data_dir = data_dir
        self.registry = registry
        self.store = store
        self._lock = threading.Lock()
        self._captures: dict[CaptureId, Capture] = {}
        self._closing = threading.Event()
        registry.subscribe(self)
        self._load()
        self._ticker = threading.Thread(target=self._tick_loop, name="capture-ticker", daemon=True)
        self._ticker.start()

    # ---- persistence ----

    def _load(self) -> None:
        for row in self.store.captures():
            try:
                spec = parse_target(row.request.target)
            except ValueError:
                log.error("stored capture %s has an invalid target; skipped", row.id)
                continue
            cap = Capture(CaptureId(row.id), row.request, spec, row.created_ns,
                          control_pb2.CaptureState.ValueType(row.state), row.ended_ns,
                          row.end_reason)
            for pr in self.store.pods(row.id):
                st = pr.status
                ps = PodState(
                    PodRef.from_proto(st.pod), st.state, st.packets, st.bytes,
                    kernel_base=(st.kernel.received, st.kernel.dropped, st.kernel.if_dropped),
                    agent_dropped_base=st.agent_dropped_packets, interface=st.interface, message=st.message,
                    fmt=pr.format, segments=st.segments,
                    rel_path=os.path.join("captures", row.id, st.pod.namespace, st.pod.name),
                )
                if cap.state in (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING) and (
                    ps.state in ACTIVE or ps.state == common_pb2.POD_CAPTURE_STATE_NO_AGENT
                ):
                    ps.state = common_pb2.POD_CAPTURE_STATE_NO_AGENT
                    ps.message = "waiting for the node's agent after a collector restart"
                cap.pods[ps.pod.uid] = ps
                cap.packets += ps.packets
                cap.bytes += ps.bytes
            if cap.state in (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING):
                cap.ended.clear()
                log.info("resuming capture %s after restart", cap.id)
                if cap.state == control_pb2.CAPTURE_STATE_STOPPING:
                    cap.stop_deadline = time.monotonic()
            else:
                cap.ended.set()
            self._captures[cap.id] = cap

    def _flush(self, cap: Capture) -> None:
        with cap.lock:
            if not cap.dirty:
                return
            rows = [(p.status(), p.fmt) for p in cap.pods.values()]
            cap.dirty = False
            state, ended, reason = cap.state, cap.ended_ns, cap.end_reason
        self.store.save_pods(cap.id, rows)
        self.store.update_capture(cap.id, state=state, ended_ns=ended, end_reason=reason)

    # ---- the control API ----

    def start(self, req: control_pb2.StartCaptureRequest) -> Capture:
        """Validate, resolve, persist and dispatch a capture. Raises ValueError/LookupError/NoAgentError."""
        spec = validate_request(req)
        pods = resolve(spec, self.registry.pods())
        for pod in pods:
            if pod.host_network:
                raise ValueError(f"pod {pod.display} uses hostNetwork: it shares the node's network and has no "
                                 "interface of its own to capture")
            if self.registry.get(pod.node) is None:
                raise NoAgentError(f"pod {pod.display} runs on node {pod.node}, which has no connected podcap agent")
        cap = Capture(new_capture_id(), req, spec, time.time_ns())
        for pod in pods:
            cap.pods[pod.uid] = self._new_pod_state(cap, pod)
        self.store.add_capture(CaptureRow(cap.id, req, cap.state, cap.created_ns, 0, ""))
        self._flush(cap)
        with self._lock:
            self._captures[cap.id] = cap
        log.info("capture %s started: %d pods, filter %r", cap.id, len(pods), req.settings.filter)
        self._dispatch_starts(cap, list(cap.pods.values()))
        return cap

    def _new_pod_state(self, cap: Capture, pod: PodRef) -> PodState:
        return PodState(pod, rel_path=os.path.join("captures", cap.id, pod.namespace, pod.name))

    def _dispatch_starts(self, cap: Capture, pods: list[PodState]) -> None:
        by_node: dict[NodeName, list[PodState]] = {}
        for ps in pods:
            by_node.setdefault(ps.pod.node, []).append(ps)
        for node, node_pods in by_node.items():
            conn = self.registry.get(node)
            if conn is None:
                with cap.lock:
                    for ps in node_pods:
                        ps.state = common_pb2.POD_CAPTURE_STATE_NO_AGENT
                        ps.message = f"node {node} has no connected agent"
                    cap.dirty = True
                continue
            for ps in node_pods:
                with cap.lock:
                    ps.state = common_pb2.POD_CAPTURE_STATE_PENDING
                    ps.stream_id = ""
                    cap.dirty = True
                conn.send(ingest_pb2.CollectorMessage(start=ingest_pb2.StartPodCapture(
                    capture_id=cap.id, pod=ps.pod.to_proto(), settings=cap.request.settings,
                    pods_on_node=len(node_pods),
                )))

    def get(self, capture_id: str) -> Capture:
        with self._lock:
            cap = self._captures.get(CaptureId(capture_id))
        if cap is None:
            raise CaptureNotFoundError(f"no capture {capture_id!r} (see `podcap list`)")
        return cap

    def all(self) -> list[Capture]:
        with self._lock:
            return sorted(self._captures.values(), key=lambda c: c.created_ns, reverse=True)

    def stop(self, capture_id: str, reason: str = "stopped by user", *, wait: float = STOP_GRACE_S) -> Capture:
        cap = self.get(capture_id)
        self._begin_stop(cap, reason)
        cap.ended.wait(wait)
        return cap

    def _begin_stop(self, cap: Capture, reason: str) -> None:
        with cap.lock:
            if cap.state != control_pb2.CAPTURE_STATE_RUNNING:
                return
            cap.state = control_pb2.CAPTURE_STATE_STOPPING
            cap.end_reason = reason
            cap.stop_deadline = time.monotonic() + STOP_GRACE_S
            cap.dirty = True
            nodes: set[NodeName] = set()
            for ps in cap.pods.values():
                if ps.state in ACTIVE:
                    nodes.add(ps.pod.node)
                elif ps.state == common_pb2.POD_CAPTURE_STATE_NO_AGENT:
                    ps.state = common_pb2.POD_CAPTURE_STATE_DONE
        log.info("capture %s stopping: %s", cap.id, reason)
        for node in nodes:
            conn = self.registry.get(node)
            if conn is not None:
                conn.send(ingest_pb2.CollectorMessage(stop=ingest_pb2.StopPodCapture(capture_id=cap.id)))
        self._maybe_finish(cap)

    def _maybe_finish(self, cap: Capture, *, force: bool = False) -> None:
        """End the capture once every pod is terminal (or the stop grace expired)."""
        with cap.lock:
            if cap.state not in (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING):
                return
            pods = list(cap.pods.values())
            all_terminal = bool(pods) and all(p.state in TERMINAL for p in pods)
            if cap.state == control_pb2.CAPTURE_STATE_RUNNING:
                if not all_terminal or cap.target.dynamic:
                    return
                cap.end_reason = "every pod's stream ended"
            elif not all_terminal and not force:
                return
            for ps in pods:
                if ps.state not in TERMINAL:
                    ps.state = common_pb2.POD_CAPTURE_STATE_DONE
                    ps.message = ps.message or "no final report from the agent before the stop grace expired"
                if ps.writer is not None:
                    ps.writer.close()
                    ps.writer = None
            failed = [p for p in pods if p.state == common_pb2.POD_CAPTURE_STATE_FAILED]
            if pods and len(failed) == len(pods) and cap.packets == 0:
                cap.state = control_pb2.CAPTURE_STATE_FAILED
                cap.end_reason = "every pod failed: " + "; ".join(
                    sorted({f"{p.pod.display}: {p.message}" for p in failed})
                )[:2000]
            else:
                cap.state = control_pb2.CAPTURE_STATE_DONE
            cap.ended_ns = time.time_ns()
            cap.dirty = True
        self._flush(cap)
        cap.ended.set()
        log.info("capture %s ended (%s): %d packets, %d bytes", cap.id, cap.end_reason, cap.packets, cap.bytes)

    # ---- agent events ----

    def agent_registered(self, conn: AgentConnection) -> None:
        for cap in self.all():
            if cap.state != control_pb2.CAPTURE_STATE_RUNNING:
                continue
            with cap.lock:
                want = [ps for ps in cap.pods.values() if ps.pod.node == conn.node and ps.state not in TERMINAL]
            self._dispatch_starts(cap, want)
        self.agent_inventory(conn)

    def agent_gone(self, conn: AgentConnection) -> None:
        for cap in self.all():
            with cap.lock:
                if cap.state not in (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING):
                    continue
                for ps in cap.pods.values():
                    if ps.pod.node == conn.node and ps.state in ACTIVE:
                        if cap.state == control_pb2.CAPTURE_STATE_STOPPING:
                            ps.state = common_pb2.POD_CAPTURE_STATE_DONE
                            ps.message = "agent disconnected while stopping"
                        else:
                            ps.state = common_pb2.POD_CAPTURE_STATE_NO_AGENT
                            ps.message = f"agent of node {conn.node} disconnected; waiting for it to return"
                        self._retire_stream(ps)
                        cap.dirty = True
            self._maybe_finish(cap)

    def agent_inventory(self, conn: AgentConnection) -> None:
        """Attach pods that appeared on the node and match a running dynamic capture."""
        for cap in self.all():
            if cap.state != control_pb2.CAPTURE_STATE_RUNNING or not cap.target.dynamic:
                continue
            new: list[PodState] = []
            with cap.lock:
                for pod in conn.pods:
                    if pod.uid not in cap.pods and cap.target.matches(pod) and not pod.host_network:
                        ps = self._new_pod_state(cap, pod)
                        cap.pods[pod.uid] = ps
                        new.append(ps)
                        log.info("capture %s: attaching new pod %s", cap.id, pod.display)
            if new:
                self._dispatch_starts(cap, new)

    def _retire_stream(self, ps: PodState) -> None:
        """Fold a finished stream's counters into the pod's base so a re-attached stream starts at zero."""
        ps.kernel_base = tuple(a + b for a, b in zip(ps.kernel_base, ps.kernel, strict=True))  # type: ignore[assignment]
        ps.kernel = (0, 0, 0)
        ps.agent_dropped_base += ps.agent_dropped
        ps.agent_dropped = 0
        ps.stream_id = ""
        ps.last_seq = 0

    def on_pod_event(self, conn: AgentConnection, ev: ingest_pb2.PodCaptureEvent) -> None:
        cap = self._captures.get(CaptureId(ev.capture_id))
        if cap is None:
            log.warning("agent %s: event for unknown capture %r ignored", conn.node, ev.capture_id)
            return
        finished = cap.state not in (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING)
        if finished and ev.state == common_pb2.POD_CAPTURE_STATE_CAPTURING:
            # A stream of a capture that is over (e.g. a start that crossed a stop on the wire): end it.
            conn.send(ingest_pb2.CollectorMessage(stop=ingest_pb2.StopPodCapture(capture_id=cap.id,
                                                                                 pod_uid=ev.pod_uid)))
        with cap.lock:
            ps = cap.pods.get(PodUid(ev.pod_uid))
            if ps is None or ps.pod.node != conn.node:
                log.warning("agent %s: event for a pod it does not own (%r) ignored", conn.node, ev.pod_uid)
                return
            if ev.state == common_pb2.POD_CAPTURE_STATE_CAPTURING and ev.stream_id != ps.stream_id:
                if not ev.HasField("format") or ps.state in TERMINAL:
                    return  # a periodic update of a retired stream, or a stream for a pod that already ended
                # A new stream (first attach, or re-attach after an agent or sandbox restart).
                had_stream = ps.fmt is not None
                self._retire_stream(ps)
                ps.stream_id = ev.stream_id
                ps.fmt = ev.format
                ps.interface = ev.interface
                ps.state = common_pb2.POD_CAPTURE_STATE_CAPTURING
                ps.message = ""
                if had_stream:
                    ps.reattachments += 1
                    gap = (time.time_ns() - ps.gap_since_ns) / 1e9 if ps.gap_since_ns else 0.0
                    ps.message = (f"re-attached at {time.strftime('%H:%M:%S')}; no capture for {gap:.1f} s before"
                                  if gap else f"re-attached at {time.strftime('%H:%M:%S')}")
                    log.info("capture %s: pod %s re-attached (%s)", cap.id, ps.pod.display, ps.message)
                ps.gap_since_ns = 0
            elif ev.stream_id and ev.stream_id != ps.stream_id:
                return  # late news from a retired stream
            if ev.HasField("kernel"):
                ps.kernel = (ev.kernel.received, ev.kernel.dropped, ev.kernel.if_dropped)
            ps.agent_dropped = ev.agent_dropped_packets
            if (ev.state == common_pb2.POD_CAPTURE_STATE_PENDING and ev.stream_id and ev.stream_id == ps.stream_id
                    and ps.state not in TERMINAL):
                # The stream broke (the pod's interface vanished); the agent re-attaches or reports the pod gone.
                ps.state = common_pb2.POD_CAPTURE_STATE_PENDING
                ps.message = ev.message
                ps.gap_since_ns = time.time_ns()
                if ps.writer is not None:
                    ps.writer.close()
                    ps.writer = None
                self._retire_stream(ps)
            if ev.state in TERMINAL:
                ps.state = ev.state
                ps.message = ev.message
                if ps.writer is not None:
                    ps.writer.close()
                    ps.writer = None
                if ev.state == common_pb2.POD_CAPTURE_STATE_FAILED:
                    log.warning("capture %s: pod %s failed: %s", cap.id, ps.pod.display, ev.message)
            cap.dirty = True
        if ev.state in TERMINAL:
            self._maybe_finish(cap)

    # ---- chunks ----

    def on_chunk(self, conn: AgentConnection, chunk: ingest_pb2.PcapChunk) -> ingest_pb2.ChunkAck:
        """Store a chunk (or recognise a duplicate) and return the acknowledgement. Raises ChunkRejectedError."""
        cap = self._captures.get(CaptureId(chunk.capture_id))
        if cap is None:
            raise ChunkRejectedError(f"chunk for unknown capture {chunk.capture_id!r}")
        limit_hit = ""
        with cap.lock:
            ps = cap.pods.get(PodUid(chunk.pod_uid))
            if ps is None or ps.pod.node != conn.node:
                raise ChunkRejectedError(f"chunk for pod {chunk.pod_uid!r}, which capture {cap.id} does not have "
                                         f"on node {conn.node}")
            if chunk.stream_id != ps.stream_id or ps.fmt is None:
                raise ChunkRejectedError(f"chunk of stream {chunk.stream_id!r}, which is not the current stream of "
                                         f"pod {ps.pod.display} in capture {cap.id}")
            ack = ingest_pb2.ChunkAck(capture_id=cap.id, pod_uid=ps.pod.uid, stream_id=ps.stream_id,
                                      seq=ps.last_seq)
            if chunk.seq <= ps.last_seq:
                return ack  # duplicate of something already stored
            if chunk.seq != ps.last_seq + 1:
                raise ChunkRejectedError(f"chunk {chunk.seq} of {ps.pod.display} arrived after {ps.last_seq}")
            ps.last_seq = chunk.seq
            ack.seq = chunk.seq
            if cap.state != control_pb2.CAPTURE_STATE_RUNNING and cap.state != control_pb2.CAPTURE_STATE_STOPPING:
                return ack
            if cap.limit_reached:
                return ack  # the limit is reached: nothing more is kept
            fmt = FileFormat(ps.fmt.linktype, ps.fmt.snaplen, ps.fmt.nanosecond)
            limits = cap.request.limits
            data: bytes | memoryview = chunk.records
            max_packets = limits.max_packets - cap.packets if limits.max_packets else None
            writer = self._writer(cap, ps, fmt)
            now = time.time()
            max_bytes = None
            if limits.max_bytes:
                max_bytes = limits.max_bytes - cap.bytes - writer.header_cost(len(data), now)
            try:
                scan = scan_records(data, fmt, max_packets=max_packets, max_bytes=max_bytes)
            except PcapFormatError as e:
                raise ChunkRejectedError(f"malformed chunk {chunk.seq} of {ps.pod.display}: {e}") from e
            if scan.length < len(data):
                limit_hit = ("max-packets reached" if max_packets is not None and scan.packets >= max_packets
                             else "max-bytes reached")
                data = memoryview(data)[: scan.length]
            elif chunk.packets and scan.packets != chunk.packets:
                raise ChunkRejectedError(f"chunk {chunk.seq} of {ps.pod.display} says {chunk.packets} packets, "
                                         f"holds {scan.packets}")
            if scan.packets:
                try:
                    added = writer.append(data, now)
                except StorageError as e:
                    ps.last_seq = chunk.seq - 1
                    raise ChunkRejectedError(f"storage failed: {e}") from e
                ps.packets += scan.packets
                ps.bytes += added
                cap.packets += scan.packets
                cap.bytes += added
                ps.segments = writer.segments
                cap.dirty = True
            if limit_hit:
                cap.limit_reached = limit_hit
        if limit_hit:
            threading.Thread(target=self._begin_stop, args=(cap, limit_hit), daemon=True).start()
        return ack

    def _writer(self, cap: Capture, ps: PodState, fmt: FileFormat) -> PodWriter:
        if ps.writer is None or ps.writer.fmt != fmt:
            if ps.writer is not None:
                ps.writer.close()
            directory = pod_dir(self.data_dir, cap.id, ps.pod.namespace, ps.pod.name)
            rot = cap.request.rotation
            ps.writer = PodWriter(directory, fmt, segment_bytes=rot.segment_bytes or DEFAULT_SEGMENT_BYTES,
                                  segment_seconds=rot.segment_seconds)
        return ps.writer

    # ---- reading ----

    def pod_files(
        self, cap: Capture, selectors: list[str]
    ) -> Iterator[tuple[PodState, FileFormat, list[tuple[str, int]]]]:
        """Each selected pod with its stream format and its segments as (path, bytes to read)."""
        with cap.lock:
            pods = list(cap.pods.values())
        for ps in pods:
            if selectors and ps.pod.uid not in selectors and ps.pod.display not in selectors and \
                    ps.pod.name not in selectors:
                continue
            with cap.lock:
                directory = pod_dir(self.data_dir, cap.id, ps.pod.namespace, ps.pod.name)
                segs = []
                for path in list_segments(directory):
                    if ps.writer is not None and ps.writer.current is not None and ps.writer.current.path == path:
                        segs.append((path, ps.writer.current.size))
                    else:
                        segs.append((path, os.path.getsize(path)))
                pf = ps.fmt
            snaplen = cap.request.settings.snaplen or MAX_SNAPLEN
            fmt = FileFormat(pf.linktype, pf.snaplen, pf.nanosecond) if pf is not None else FileFormat(1, snaplen, True)
            yield ps, fmt, segs

    # ---- background ----

    def _tick_loop(self) -> None:
        last_flush = 0.0
        while not self._closing.wait(0.2):
            now_ns = time.time_ns()
            for cap in self.all():
                if cap.state == control_pb2.CAPTURE_STATE_RUNNING and cap.deadline_ns and now_ns >= cap.deadline_ns:
                    self._begin_stop(cap, "duration reached")
                elif cap.state == control_pb2.CAPTURE_STATE_STOPPING and time.monotonic() >= cap.stop_deadline:
                    self._maybe_finish(cap, force=True)
            if time.monotonic() - last_flush >= 1.0:
                last_flush = time.monotonic()
                for cap in self.all():
                    try:
                        self._flush(cap)
                    except Exception:
                        log.exception("flushing capture %s failed", cap.id)

    def close(self) -> None:
        """Persist everything; running captures stay RUNNING in the database and resume at the next start."""
        self._closing.set()
        self._ticker.join(timeout=5)
        for cap in self.all():
            with cap.lock:
                for ps in cap.pods.values():
                    if ps.writer is not None:
                        ps.writer.close()
                        ps.writer = None
                cap.dirty = True
            self._flush(cap)
