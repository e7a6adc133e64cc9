"""Capture lifecycle and per-pod state: the collector's core.

``CaptureManager`` turns a validated start request into per-pod start commands for the agents, stores every chunk
the agents send (validated, de-duplicated by (stream, seq), cut exactly at the capture's packet, byte and time
limits), tracks per-pod state and counters, ends captures (stop, duration, limits, every pod gone) and persists
what ``podcap status`` shows.

Delivery is acknowledged and durable: a chunk is written to its segment at once, but acknowledged only by the
committer thread, which (every ~50 ms) syncs the written segments, records each pod's last stored chunk and segment
sizes in SQLite in one transaction, and then sends the acknowledgements. After a crash the database never claims
more than the disk holds; ``_load`` cuts each segment back to what was recorded, and the agents re-send everything
unacknowledged. A full disk pauses ingestion: the chunk is retried until space returns, which stops reading that
agent's stream, so HTTP/2 flow control pushes back and the agent spools. Retention deletes a pod's oldest segments
once it holds more than ``keep_bytes``/``keep_seconds`` (or the capture more than ``keep_total_bytes``).

Gaps are data: each pod keeps every stream it had (``podcap.collector.streams``), a chunk is stored in its stream's
order, and nothing about one chunk stops the stream — a missing sequence number is logged, a malformed chunk, one
past a limit or after the end is counted under its cause (``podcap.drops``) and acknowledged, in-band gaps from the
agent are counted where they happened. Every loss goes to ``gaps.tsv``. A stopping capture waits while its agents
keep delivering.

Concurrency: one lock per capture guards its pods, writers and counters (the device flush of a commit runs
outside it, commits of a capture one at a time under ``commit_lock``); the manager lock guards only the capture
table. Agent events arrive on each agent's reader thread, user requests on gRPC worker threads.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import BinaryIO

from podcap.collector.agents import AgentConnection, AgentListener, AgentRegistry
from podcap.collector.cluster import (
    ClusterInventory,
    ClusterListener,
    FieldSelector,
    parse_field_selector,
    pod_fields,
)
from podcap.collector.follow import Subscription
from podcap.collector.gaps import record_gap
from podcap.collector.model import ACTIVE, MIN_SEGMENT_BYTES, TERMINAL, Capture, PodState, validate_request
from podcap.collector.storage.local import (
    PendingSync,
    PodWriter,
    SegmentInfo,
    StorageError,
    pod_dir,
    recover_segment,
    remove_stray_files,
    segment_path,
)
from podcap.collector.store import CaptureRow, CaptureStore, PodRow
from podcap.collector.streams import StreamState
from podcap.collector.targets import NoMatchError, PodRef, parse_target, resolve
from podcap.drops import LABELS, Drops
from podcap.names import CaptureId, NodeName, PodUid, new_capture_id
from podcap.pcapfile import MAX_SNAPLEN, FileFormat, PcapFormatError, scan_records
from podcap.v1 import common_pb2, control_pb2, ingest_pb2

log = logging.getLogger(__name__)

# A stopping capture ends once every pod has sent its final report, or after STOP_GRACE_S without hearing from its
# agents (each chunk or report restarts the wait: a backlog still draining is not cut off), STOP_MAX_S at most.
STOP_GRACE_S = 10.0
STOP_MAX_S = 600.0
COMMIT_INTERVAL_S = 0.05
STORAGE_RETRY_S = 1.0
MAX_CHUNK_BYTES = 4 << 20


class CaptureNotFoundError(LookupError):
    pass


class NoAgentError(RuntimeError):
    """A pod's node has no connected agent."""


class ChunkRejectedError(ValueError):
    """An agent sent a chunk that can never be stored (malformed, unknown stream, out of order)."""


def _heard_from(cap: Capture) -> None:
    """A stopping capture waits for its agents as long as they keep delivering (caller holds the lock)."""
    if cap.state == control_pb2.CAPTURE_STATE_STOPPING:
        now = time.monotonic()
        cap.stop_deadline = min(cap.stop_started + STOP_MAX_S, max(cap.stop_deadline, now + STOP_GRACE_S))


def _fmt(pf: common_pb2.PcapFormat) -> FileFormat:
    return FileFormat(pf.linktype, pf.snaplen, pf.nanosecond)


@lru_cache(maxsize=256)
def field_selector(text: str) -> FieldSelector:
    """A target's parsed --field-selector (cached: dynamic attachment checks it for every pod event)."""
    return parse_field_selector(text)


class CaptureManager(AgentListener, ClusterListener):
    def __init__(self, data_dir: str, registry: AgentRegistry, store: CaptureStore, *,
                 cluster: ClusterInventory | None = None) -> None:
        self.data_dir = data_dir
        self.registry = registry
        self.store = store
        self._lock = threading.Lock()
        self._captures: dict[CaptureId, Capture] = {}
        self._closing = threading.Event()
        self._commit_now = threading.Event()
        self.paused = ""
        # Observer of commit latency (the metrics module plugs a histogram in).
        self.commit_seconds: Callable[[float], None] = lambda _s: None
        # With an API server, pods come from its watched cache; without one, from the agents' inventories.
        self.cluster = cluster
        registry.subscribe(self)
        if cluster is not None:
            cluster.subscribe(self)
        self._load()
        self._ticker = threading.Thread(target=self._tick_loop, name="capture-ticker", daemon=True)
        self._committer = threading.Thread(target=self._commit_loop, name="committer", daemon=True)
        self._ticker.start()
        self._committer.start()

    # ---- startup: load and recover ----

    def _load(self) -> None:
        for row in self.store.captures():
            try:
                spec = parse_target(row.request.target)
            except ValueError:
                log.error("stored capture %s has an invalid target; skipped", row.id)
                continue
            cap = Capture(CaptureId(row.id), row.request, spec, row.created_ns,
                          control_pb2.CaptureState.ValueType(row.state), row.ended_ns, row.end_reason)
            for pr in self.store.pods(row.id):
                st = pr.status
                ps = PodState(
                    PodRef.from_proto(st.pod),
                    st.path or os.path.join("captures", row.id, st.pod.namespace, st.pod.name),
                    state=st.state, interface=st.interface, message=st.message, current=pr.stream_id,
                    fmt=pr.format, orphan=pr.orphan, packets_total=pr.packets_total, bytes_total=pr.bytes_total,
                    retired_packets=st.retired_packets, retired_bytes=st.retired_bytes,
                    reattachments=st.reattachments, dirty=False,
                )
                self._load_streams(ps, pr)
                directory = pod_dir(self.data_dir, cap.id, ps.pod.namespace, ps.dir_name)
                ps.segments = [SegmentInfo(s.index, segment_path(directory, s.index), s.bytes, s.packets,
                                           s.first_ts_ns, s.last_ts_ns) for s in pr.segments]
                ps.next_segment = max((s.index for s in ps.segments), default=0) + 1
                if cap.live:
                    self._recover_pod(cap, ps, directory)
                cap.pods[ps.pod.uid] = ps
                cap.packets_total += ps.packets_total
                cap.bytes_total += ps.bytes_total
            if cap.live:
                log.info("resuming capture %s after a restart", cap.id)
                if cap.state == control_pb2.CAPTURE_STATE_STOPPING:
                    cap.stop_started = time.monotonic()
                    cap.stop_deadline = cap.stop_started + STOP_GRACE_S
            else:
                cap.ended.set()
            self._captures[cap.id] = cap

    @staticmethod
    def _load_streams(ps: PodState, pr: PodRow) -> None:
        for sr in pr.streams:
            stream = StreamState(sr.stream_id, sr.format or common_pb2.PcapFormat(), sr.ordinal,
                                 last_seq=sr.last_seq, committed_seq=sr.last_seq)
            stream.load_counters(sr.counters)
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

    def _recover_pod(self, cap: Capture, ps: PodState, directory: str) -> None:
        """Make the pod's files match what was acknowledged: drop unknown segments, cut the last one back."""
        for path in remove_stray_files(directory, {s.index for s in ps.segments}):
            log.warning("capture %s: removed %s (written after the last commit; the agent re-sends it)",
                        cap.id, path)
        for seg in [s for s in ps.segments[:-1] if not os.path.exists(s.path)]:
            # Deleted by retention after the last commit: what the next commit would have recorded.
            ps.segments.remove(seg)
            ps.retired_bytes += seg.bytes
            ps.retired_packets += seg.packets
            ps.dirty = True
        if ps.segments and ps.fmt is not None:
            last = ps.segments[-1]
            try:
                size = recover_segment(last.path, last.bytes, _fmt(ps.fmt))
            except FileNotFoundError:
                log.error("capture %s: segment %s is missing", cap.id, last.path)
                ps.segments.pop()
            else:
                if size != last.bytes:
                    log.warning("capture %s: %s holds %d of %d recorded bytes after the crash", cap.id, last.path,
                                size, last.bytes)
                    ps.bytes_total -= last.bytes - size
                    last.bytes = size
                    ps.dirty = True
        if ps.state in ACTIVE or ps.state == common_pb2.POD_CAPTURE_STATE_NO_AGENT:
            ps.state = common_pb2.POD_CAPTURE_STATE_NO_AGENT
            ps.message = "waiting for the node's agent after a collector restart"
            ps.gap_since_ns = time.time_ns()

    # ---- the control API ----

    def start(self, req: control_pb2.StartCaptureRequest) -> Capture:
        """Validate, resolve, persist and dispatch a capture. Raises ValueError/LookupError/NoAgentError."""
        spec = validate_request(req)
        fields = field_selector(req.target.field_selector)
        try:
            pods = resolve(spec, self._candidates(fields))
        except NoMatchError as e:
            if fields:
                raise NoMatchError(f"{e} (with field selector {str(fields)!r})") from e
            raise
        # A hostNetwork pod shares the node's network: nothing of its own to capture. Naming one is an error; a
        # selector skips them (as _attach_new does for pods that appear later) unless it matches nothing else.
        host_network = [p for p in pods if p.host_network]
        if host_network and (spec.pod_names or len(host_network) == len(pods)):
            raise ValueError(f"pod {host_network[0].display} uses hostNetwork: it shares the node's network and has "
                             "no interface of its own to capture")
        pods = [p for p in pods if not p.host_network]
        for pod in pods:
            if self.registry.get(pod.node) is None:
                raise NoAgentError(f"pod {pod.display} runs on node {pod.node}, which has no connected podcap agent")
        cap = Capture(new_capture_id(), req, spec, time.time_ns())
        for pod in pods:
            cap.pods[pod.uid] = self._new_pod_state(cap, pod)
        self.store.add_capture(CaptureRow(cap.id, req, cap.state, cap.created_ns, 0, ""))
        self._commit(cap)
        with self._lock:
            self._captures[cap.id] = cap
        log.info("capture %s started: %d pods, filter %r", cap.id, len(pods), req.settings.filter)
        self._dispatch_starts(cap, list(cap.pods.values()))
        return cap

    def _candidates(self, fields: FieldSelector) -> list[PodRef]:
        """The pods a new capture can cover now: with an API server, every Running pod in its watched cache (on
        nodes with or without an agent); without one, the agents' inventories."""
        if self.cluster is not None:
            self.cluster.require_synced()
            return self.cluster.select(fields, running_only=True)
        return [p for p in self.registry.pods() if fields.matches(pod_fields(p))]

    def _fields_match(self, cap: Capture, pod: PodRef) -> bool:
        fields = field_selector(cap.request.target.field_selector)
        if not fields:
            return True
        return fields.matches(self.cluster.fields(pod) if self.cluster is not None else pod_fields(pod))

    def _new_pod_state(self, cap: Capture, pod: PodRef) -> PodState:
        # A pod re-created under the same name (a StatefulSet pod, say) is another pod: its own directory.
        name = pod.name
        if any(p.pod.namespace == pod.namespace and p.pod.name == pod.name for p in cap.pods.values()):
            name = f"{pod.name}.{pod.uid[:8].lower()}"
        return PodState(pod, os.path.join("captures", cap.id, pod.namespace, name))

    def _dispatch_starts(self, cap: Capture, pods: list[PodState]) -> None:
        by_node: dict[NodeName, list[PodState]] = {}
        for ps in pods:
            by_node.setdefault(ps.pod.node, []).append(ps)
        for node, node_pods in by_node.items():
            conn = self.registry.get(node)
            with cap.lock:
                for ps in node_pods:
                    if conn is None:
                        ps.state = common_pb2.POD_CAPTURE_STATE_NO_AGENT
                        ps.message = f"node {node} has no connected agent"
                    else:
                        ps.state = common_pb2.POD_CAPTURE_STATE_PENDING
                    ps.dirty = True
                cap.dirty = True
            if conn is None:
                continue
            settings = common_pb2.CaptureSettings()
            settings.CopyFrom(cap.request.settings)
            # Chunks no larger than half a segment: a pod's kept bytes stay within its retention target.
            settings.max_chunk_bytes = min(MAX_CHUNK_BYTES, max(MIN_SEGMENT_BYTES // 2, cap.segment_bytes() // 2))
            for ps in node_pods:
                conn.send(ingest_pb2.CollectorMessage(start=ingest_pb2.StartPodCapture(
                    capture_id=cap.id, pod=ps.pod.to_proto(), settings=settings, pods_on_node=len(node_pods),
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

    def status(self, cap: Capture) -> control_pb2.CaptureStatus:
        return cap.status(self.paused)

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
            cap.stop_started = time.monotonic()
            cap.stop_deadline = cap.stop_started + STOP_GRACE_S
            cap.dirty = True
            nodes: set[NodeName] = set()
            for ps in cap.pods.values():
                if ps.state in ACTIVE:
                    nodes.add(ps.pod.node)
                elif ps.state == common_pb2.POD_CAPTURE_STATE_NO_AGENT:
                    nodes.add(ps.pod.node)  # its agent may return within the grace and deliver what it holds
        log.info("capture %s stopping: %s", cap.id, reason)
        for node in nodes:
            conn = self.registry.get(node)
            if conn is not None:
                conn.send(ingest_pb2.CollectorMessage(stop=ingest_pb2.StopPodCapture(capture_id=cap.id)))
        self._maybe_finish(cap)

    def _maybe_finish(self, cap: Capture, *, force: bool = False) -> None:
        """End the capture once every pod is terminal (or the stop grace expired)."""
        with cap.lock:
            if not cap.live:
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
                ps.abandon_streams()
                if ps.writer is not None:
                    self._close_writer(ps)
                ps.dirty = True
            failed = [p for p in pods if p.state == common_pb2.POD_CAPTURE_STATE_FAILED]
            if pods and len(failed) == len(pods) and cap.packets_total == 0:
                cap.state = control_pb2.CAPTURE_STATE_FAILED
                cap.end_reason = "every pod failed: " + "; ".join(
                    sorted({f"{p.pod.display}: {p.message}" for p in failed})
                )[:2000]
            else:
                cap.state = control_pb2.CAPTURE_STATE_DONE
            cap.ended_ns = time.time_ns()
            cap.dirty = True
        self._commit(cap)
        cap.ended.set()
        with cap.lock:
            followers, cap.followers = cap.followers, []
        for sub in followers:
            sub.end(self.status(cap))
        log.info("capture %s ended (%s): %d packets, %d bytes", cap.id, cap.end_reason, cap.packets_total,
                 cap.bytes_total)

    # ---- agents coming and going ----

    def agent_registered(self, conn: AgentConnection) -> None:
        for cap in self.all():
            if not cap.live:
                continue
            with cap.lock:
                want = [ps for ps in cap.pods.values() if ps.pod.node == conn.node and ps.state not in TERMINAL]
            if cap.state == control_pb2.CAPTURE_STATE_RUNNING:
                self._dispatch_starts(cap, want)
            elif want:
                conn.send(ingest_pb2.CollectorMessage(stop=ingest_pb2.StopPodCapture(capture_id=cap.id)))
        self.agent_inventory(conn)

    def agent_gone(self, conn: AgentConnection) -> None:
        for cap in self.all():
            with cap.lock:
                if not cap.live:
                    continue
                for ps in cap.pods.values():
                    for st in ps.streams.values():
                        if st.ack_conn is conn:
                            st.ack_conn = None
                    if ps.pod.node == conn.node and ps.state in ACTIVE:
                        # Keep the stream: a reconnecting agent continues it from its spool.
                        ps.state = common_pb2.POD_CAPTURE_STATE_NO_AGENT
                        ps.message = f"agent of node {conn.node} disconnected; waiting for it to return"
                        ps.gap_since_ns = ps.gap_since_ns or time.time_ns()
                        ps.dirty = True
                        cap.dirty = True

    def agent_inventory(self, conn: AgentConnection) -> None:
        """Attach pods that appeared on the node and match a running dynamic capture; keep the IP of captured pods
        current (a restarted sandbox usually has a new one)."""
        self._refresh_ips(conn.pods)
        self._attach_new(conn.pods)

    def _refresh_ips(self, pods: list[PodRef]) -> None:
        for cap in self.all():
            if cap.state != control_pb2.CAPTURE_STATE_RUNNING:
                continue
            with cap.lock:
                for pod in pods:
                    ps = cap.pods.get(pod.uid)
                    if (ps is not None and pod.ip and pod.ip != ps.pod.ip
                            and (ps.pod.node, ps.pod.namespace, ps.pod.name) == (pod.node, pod.namespace, pod.name)):
                        ps.pod = dataclasses.replace(ps.pod, ip=pod.ip)
                        ps.dirty = True
                        cap.dirty = True

    # ---- cluster events (with an API server) ----

    def pod_added(self, pod: PodRef) -> None:
        """A pod appeared in the API; attached once Running (its sandbox exists, its agent can find it)."""
        if self.cluster is not None and self.cluster.running(pod):
            self._attach_new([pod])

    def pod_changed(self, pod: PodRef) -> None:
        """A pod became Running or changed labels: it may match a dynamic capture now."""
        self.pod_added(pod)

    def pod_deleted(self, pod: PodRef) -> None:
        """Nothing to do: the pod's agent reports its stream ending when the sandbox goes."""

    def _attach_new(self, pods: list[PodRef]) -> None:
        for cap in self.all():
            if cap.state != control_pb2.CAPTURE_STATE_RUNNING or not cap.target.dynamic:
                continue
            new: list[PodState] = []
            with cap.lock:
                for pod in pods:
                    if (pod.uid not in cap.pods and cap.target.matches(pod) and not pod.host_network
                            and self._fields_match(cap, pod)):
                        ps = self._new_pod_state(cap, pod)
                        cap.pods[pod.uid] = ps
                        new.append(ps)
                        log.info("capture %s: attaching new pod %s", cap.id, pod.display)
            if new:
                self._dispatch_starts(cap, new)

    # ---- agent events ----

    def on_pod_event(self, conn: AgentConnection, ev: ingest_pb2.PodCaptureEvent) -> None:
        cap = self._captures.get(CaptureId(ev.capture_id))
        if cap is None:
            log.warning("agent %s: event for unknown capture %r ignored", conn.node, ev.capture_id)
            return
        if not cap.live and ev.state == common_pb2.POD_CAPTURE_STATE_CAPTURING:
            # A stream of a capture that is over (e.g. a start that crossed a stop on the wire): end it.
            conn.send(ingest_pb2.CollectorMessage(stop=ingest_pb2.StopPodCapture(capture_id=cap.id,
                                                                                 pod_uid=ev.pod_uid)))
        with cap.lock:
            ps = cap.pods.get(PodUid(ev.pod_uid))
            if ps is None or ps.pod.node != conn.node:
                log.warning("agent %s: event for a pod it does not own (%r) ignored", conn.node, ev.pod_uid)
                return
            _heard_from(cap)
            st = ps.streams.get(ev.stream_id) if ev.stream_id else None
            if ev.state == common_pb2.POD_CAPTURE_STATE_CAPTURING and ev.HasField("format") and st is None:
                if ps.state in TERMINAL:
                    return  # a stream for a pod that already ended
                st = self._new_stream(cap, ps, ev)
            elif ev.stream_id and st is None:
                return  # news of a stream whose start never came: nothing to count it against
            if st is not None:
                self._report(cap, ps, st, ev)
            if st is None or st.id == ps.current:  # the pod's state follows its current stream only
                self._pod_state(cap, ps, ev)
            ps.dirty = True
            cap.dirty = True
        if ev.state in TERMINAL:
            self._maybe_finish(cap)

    def _pod_state(self, cap: Capture, ps: PodState, ev: ingest_pb2.PodCaptureEvent) -> None:
        if ev.state == common_pb2.POD_CAPTURE_STATE_CAPTURING:
            if ev.HasField("format") and ps.state not in (*TERMINAL, common_pb2.POD_CAPTURE_STATE_CAPTURING):
                # The same stream, continued after a reconnect or a collector restart: nothing was lost.
                ps.state = common_pb2.POD_CAPTURE_STATE_CAPTURING
                ps.message = ""
                ps.gap_since_ns = 0
        elif ev.state == common_pb2.POD_CAPTURE_STATE_PENDING and ev.stream_id and ps.state not in TERMINAL:
            # The stream broke (the pod's interface vanished); the agent re-attaches or reports the pod gone.
            ps.state = common_pb2.POD_CAPTURE_STATE_PENDING
            ps.message = ev.message
            ps.gap_since_ns = time.time_ns()
        elif ev.state in TERMINAL:
            ps.state = ev.state
            ps.message = ev.message
            if ps.writer is not None:
                self._close_writer(ps)
            if ev.state == common_pb2.POD_CAPTURE_STATE_FAILED:
                log.warning("capture %s: pod %s failed: %s", cap.id, ps.pod.display, ev.message)

    def _report(self, cap: Capture, ps: PodState, st: StreamState, ev: ingest_pb2.PodCaptureEvent) -> None:
        """A stream's counters from its agent (cumulative: a report sent again changes nothing); what it says was
        lost since the previous one goes to ``gaps.tsv``."""
        now = time.time_ns()
        if ev.HasField("kernel"):
            kernel = (ev.kernel.received, ev.kernel.dropped, ev.kernel.if_dropped)
            if kernel[1] > st.kernel[1]:
                self._gap(cap, ps, st, "kernel", kernel[1] - st.kernel[1], st.reported_ns, now)
            st.kernel = kernel
        st.delivered = max(st.delivered, ev.delivered)
        if ev.HasField("drops"):
            reported = Drops.from_proto(ev.drops)
            for cause in ("unread", "past_limit"):
                more = getattr(reported, cause) - getattr(st.reported, cause)
                if more > 0:
                    self._gap(cap, ps, st, cause, more, st.reported_ns, now)
            st.reported = reported
        st.reported_ns = now
        if ev.state != common_pb2.POD_CAPTURE_STATE_CAPTURING:
            st.final = True

    def _gap(self, cap: Capture, ps: PodState, st: StreamState | None, cause: str, packets: int, first_ns: int,
             last_ns: int) -> None:
        """Note in the pod's directory that packets are missing (``gaps.tsv``), so the stored capture itself says
        where it has holes and why."""
        if cause not in ("kernel", "past_limit", "late"):
            log.warning("capture %s: pod %s: %d packets not stored (%s)", cap.id, ps.pod.display, packets,
                        LABELS.get(cause, cause))
        try:
            directory = pod_dir(self.data_dir, cap.id, ps.pod.namespace, ps.dir_name)
        except StorageError as e:
            log.error("cannot record the gap: %s", e)
            return
        record_gap(directory, first_ns=first_ns, last_ns=last_ns, packets=packets, cause=cause,
                   stream=st.id if st is not None else "")

    def _new_stream(self, cap: Capture, ps: PodState, ev: ingest_pb2.PodCaptureEvent) -> StreamState:
        had_stream = bool(ps.streams)
        # Earlier streams that have not reported their end never will: a new one starts only once its agent is done
        # with them (or it is a new agent).
        ps.abandon_streams()
        if ps.writer is not None and ps.fmt != ev.format:
            self._close_writer(ps)
        st = ps.add_stream(ev.stream_id, ev.format)
        ps.interface = ev.interface
        ps.state = common_pb2.POD_CAPTURE_STATE_CAPTURING
        ps.message = ""
        if had_stream:
            ps.reattachments += 1
            now = time.strftime("%H:%M:%S")
            gap = (time.time_ns() - ps.gap_since_ns) / 1e9 if ps.gap_since_ns else 0.0
            ps.message = f"re-attached at {now}; no capture for {gap:.1f} s before" if gap else f"re-attached at {now}"
            log.info("capture %s: pod %s %s", cap.id, ps.pod.display, ps.message)
        ps.gap_since_ns = 0
        return st

    # ---- chunks ----

    def on_chunk(self, conn: AgentConnection, chunk: ingest_pb2.PcapChunk,
                 records: memoryview | None = None) -> ingest_pb2.ChunkAck | None:
        """Store a chunk (its records are ``records`` when given, else ``chunk.records``). Returns an
        acknowledgement to send now (a duplicate of something committed) or None (the committer acknowledges it
        once durable). Raises ChunkRejectedError; blocks while storage is failing."""
        while True:
            try:
                return self._store_chunk(conn, chunk, chunk.records if records is None else records)
            except StorageError as e:
                self._pause(f"{'data dir full' if e.disk_full else 'storage failing'}: {e}")
                if self._closing.wait(STORAGE_RETRY_S):
                    raise ChunkRejectedError("collector shutting down") from e

    def _pause(self, reason: str) -> None:
        if self.paused != reason:
            log.error("storing paused: %s (agents keep their data until it resumes)", reason)
        self.paused = reason

    def _store_chunk(self, conn: AgentConnection, chunk: ingest_pb2.PcapChunk,
                     records: bytes | memoryview) -> ingest_pb2.ChunkAck | None:
        """Store one chunk of a stream, in order. Nothing about a chunk stops its stream: a chunk that cannot be
        stored (malformed, past a limit, after the end) is counted under its cause and acknowledged like the others;
        only a chunk of a capture or pod the collector does not have is refused (ChunkRejectedError). A storage
        error leaves everything as it was (the caller retries the whole chunk)."""
        cap = self._captures.get(CaptureId(chunk.capture_id))
        if cap is None:
            raise ChunkRejectedError(f"chunk for unknown capture {chunk.capture_id!r}")
        limit_hit = ""
        with cap.lock:
            ps = cap.pods.get(PodUid(chunk.pod_uid))
            if ps is None or ps.pod.node != conn.node:
                raise ChunkRejectedError(f"chunk for pod {chunk.pod_uid!r}, which capture {cap.id} does not have "
                                         f"on node {conn.node}")
            st = ps.streams.get(chunk.stream_id)
            if st is None:
                self._orphan(cap, ps, chunk)
                raise ChunkRejectedError(f"chunk of stream {chunk.stream_id!r}, which pod {ps.pod.display} never "
                                         f"started in capture {cap.id}")
            ack = ingest_pb2.ChunkAck(capture_id=cap.id, pod_uid=ps.pod.uid, stream_id=st.id, seq=chunk.seq)
            if chunk.seq <= st.committed_seq:
                ack.seq = st.committed_seq
                return ack  # a re-sent duplicate of something already durable
            if chunk.seq <= st.last_seq:
                st.ack_conn = conn  # written, not yet committed: acknowledged with the next commit
                return None
            _heard_from(cap)
            if chunk.seq != st.last_seq + 1:
                log.error("capture %s: pod %s: chunks %d..%d of stream %s never came; storing on", cap.id,
                          ps.pod.display, st.last_seq + 1, chunk.seq - 1, st.id)
            lost = Drops.from_proto(chunk.lost)  # in-band: what the agent lost right before these records
            extra = Drops()  # what the collector does not keep of this chunk, by cause
            stored = 0
            if chunk.packets or len(records):
                if not cap.live:
                    extra.late = chunk.packets
                elif cap.limit_reached:
                    extra.past_limit = chunk.packets
                else:
                    stored, limit_hit = self._write_records(cap, ps, st, chunk, records, extra)
            # Counted only now that the chunk is done with (a storage error above retries it from the start).
            first_ns = chunk.first_ts_ns
            for cause, n in lost.nonzero().items():
                self._gap(cap, ps, st, cause, n, first_ns if not stored else st.last_ts_ns,
                          chunk.last_ts_ns if not stored else first_ns)
            for cause, n in extra.nonzero().items():
                self._gap(cap, ps, st, cause, n, first_ns, chunk.last_ts_ns)
            st.inband.add(lost)
            st.local.add(extra)
            st.stored += stored
            st.last_ts_ns = max(st.last_ts_ns, chunk.last_ts_ns)
            self._accept(ps, st, conn, chunk.seq)
            if self.paused:
                log.info("storing resumed")
                self.paused = ""
            if limit_hit and limit_hit != "duration reached":
                cap.limit_reached = limit_hit
        if limit_hit and limit_hit != "duration reached":
            threading.Thread(target=self._begin_stop, args=(cap, limit_hit), daemon=True).start()
        return None

    def _write_records(self, cap: Capture, ps: PodState, st: StreamState, chunk: ingest_pb2.PcapChunk,
                       data: bytes | memoryview, extra: Drops) -> tuple[int, str]:
        """Append what the capture's limits let through of a chunk's records to the pod's segment; returns (packets
        stored, the limit the chunk reached or ""). What is not stored is counted in ``extra``. Raises
        StorageError (nothing is counted then)."""
        fmt = _fmt(st.fmt)
        limits = cap.request.limits
        max_packets = limits.max_packets - cap.packets_total if limits.max_packets else None
        writer = self._writer(cap, ps, fmt)
        now = time.time()
        max_bytes = None
        if limits.max_bytes:
            max_bytes = limits.max_bytes - cap.bytes_total - writer.header_cost(len(data), now)
        until = cap.deadline_ns or None
        try:
            scan = scan_records(data, fmt, max_packets=max_packets, max_bytes=max_bytes, until_ns=until)
        except PcapFormatError as e:
            log.error("capture %s: pod %s: malformed chunk %d of stream %s not stored: %s", cap.id, ps.pod.display,
                      chunk.seq, st.id, e)
            extra.rejected = chunk.packets
            return 0, ""
        limit_hit = ""
        if scan.length < len(data):
            limit_hit = _cut_reason(data, scan.length, fmt, scan.packets, max_packets, until)
            extra.past_limit = max(0, chunk.packets - scan.packets)
            data = data[: scan.length]
        elif chunk.packets and scan.packets != chunk.packets:
            log.error("capture %s: pod %s: chunk %d of stream %s says %d packets, holds %d; not stored", cap.id,
                      ps.pod.display, chunk.seq, st.id, chunk.packets, scan.packets)
            extra.rejected = chunk.packets
            return 0, ""
        if not scan.packets:
            return 0, limit_hit
        first = int.from_bytes(bytes(data[0:4]), "little") * 1_000_000_000 + \
            int.from_bytes(bytes(data[4:8]), "little") * fmt.ts_scale
        try:
            added, _started = writer.append(data, packets=scan.packets, first_ts_ns=first,
                                            last_ts_ns=scan.last_ts_ns, now=now)
        finally:
            # A segment opened by a write that then failed (disk full) is still the pod's segment.
            seg = writer.current
            if seg is not None and (not ps.segments or ps.segments[-1] is not seg):
                ps.segments.append(seg)
                ps.next_segment = seg.index + 1
                ps.dirty = True
        if cap.followers:
            pod_pb, block = ps.pod.to_proto(), bytes(data)
            for sub in cap.followers:
                if sub.wants(pod_pb):
                    sub.offer(pod_pb, st.fmt, block, scan.packets)
        ps.packets_total += scan.packets
        ps.bytes_total += added
        cap.packets_total += scan.packets
        cap.bytes_total += added
        self._apply_retention(cap, only=ps)
        return scan.packets, limit_hit

    def _orphan(self, cap: Capture, ps: PodState, chunk: ingest_pb2.PcapChunk) -> None:
        """A chunk of a stream the pod never started (caller holds the lock): refused, and its packets counted."""
        lost = Drops.from_proto(chunk.lost)
        lost.rejected += chunk.packets
        for cause, n in lost.nonzero().items():
            self._gap(cap, ps, None, cause, n, chunk.first_ts_ns, chunk.last_ts_ns)
        ps.orphan.add(lost)
        ps.dirty = True
        cap.dirty = True

    def _accept(self, ps: PodState, st: StreamState, conn: AgentConnection, seq: int) -> None:
        st.last_seq = seq
        st.ack_conn = conn
        ps.dirty = True
        self._commit_now.set()

    def _writer(self, cap: Capture, ps: PodState, fmt: FileFormat) -> PodWriter:
        if ps.writer is None or ps.writer.fmt != fmt:
            if ps.writer is not None:
                ps.writer.close()  # StorageError: the caller pauses and retries; the old segment stays whole
                ps.writer = None
                ps.close_pending = False
            directory = pod_dir(self.data_dir, cap.id, ps.pod.namespace, ps.dir_name)
            ps.writer = PodWriter(directory, fmt, segment_bytes=cap.segment_bytes(),
                                  segment_seconds=cap.segment_seconds(), next_index=ps.next_segment)
        return ps.writer

    def _close_writer(self, ps: PodState) -> None:
        """Close the pod's writer. If that fails (its last partial block could not be written) the writer is kept
        with everything it holds; the committer's sync then fails too, so nothing more is acknowledged, storing
        pauses, and the close is retried after the next successful sync."""
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

    # ---- retention ----

    def _apply_retention(self, cap: Capture, now_ns: int | None = None, only: PodState | None = None) -> None:
        """Delete the oldest closed segments beyond the capture's retention targets (caller holds the lock). After
        each write: what is kept stays under ``keep_bytes`` unless the open segment alone exceeds it."""
        r = cap.request.retention
        if not (r.keep_bytes or r.keep_seconds or r.keep_total_bytes):
            return
        now_ns = now_ns or time.time_ns()
        for ps in [only] if only is not None else cap.pods.values():
            while len(ps.segments) > 1 or (ps.segments and ps.writer is None):
                oldest = ps.segments[0]
                too_big = r.keep_bytes and ps.stored_bytes > r.keep_bytes
                too_old = r.keep_seconds and oldest.last_ts_ns < now_ns - r.keep_seconds * 1_000_000_000
                if not (too_big or too_old):
                    break
                self._retire_segment(cap, ps)
        if r.keep_total_bytes:
            while True:
                total = sum(p.stored_bytes for p in cap.pods.values())
                closed = [(p.segments[0].first_ts_ns, p.segments[0].index, p) for p in cap.pods.values()
                          if len(p.segments) > 1 or (p.segments and p.writer is None)]
                if total <= r.keep_total_bytes or not closed:
                    break
                self._retire_segment(cap, min(closed, key=lambda t: (t[0], t[1]))[2])

    def _retire_segment(self, cap: Capture, ps: PodState) -> None:
        seg = ps.segments.pop(0)
        try:
            os.unlink(seg.path)
        except FileNotFoundError:
            pass
        ps.retired_bytes += seg.bytes
        ps.retired_packets += seg.packets
        ps.dirty = True

    # ---- durability: the committer ----

    def _commit(self, cap: Capture) -> None:
        """Sync written segments, persist dirty pods and the capture state in one transaction, then send the
        acknowledgements the commit made true. The device flush runs without the capture's lock (appends go on
        meanwhile; what was appended before the snapshot is what this commit records); commits of one capture
        run one at a time, so the database never goes back to an older snapshot."""
        started = time.monotonic()
        with cap.commit_lock:
            with cap.lock:
                dirty = [ps for ps in cap.pods.values() if ps.dirty]
                if not cap.dirty and not dirty:
                    return
                syncs: list[PendingSync] = []
                rows = {}
                committed: list[tuple[PodState, StreamState, int, AgentConnection | None]] = []
                try:
                    for ps in dirty:
                        if ps.writer is not None and ps.close_pending:
                            ps.writer.sync()  # rare (a close failed): under the lock, and fatal to this commit
                            self._close_writer(ps)
                        if ps.writer is not None:
                            pending = ps.writer.sync_later()
                            if pending is not None:
                                syncs.append(pending)
                    for ps in dirty:
                        rows[str(ps.pod.uid)] = ps.to_row()
                        for st in ps.streams.values():
                            if st.last_seq > st.committed_seq:
                                committed.append((ps, st, st.last_seq, st.ack_conn))
                except BaseException:
                    for pending in syncs:
                        pending.close()
                    raise  # nothing of this commit is recorded or acknowledged; every dirty pod stays dirty
                for ps in dirty:
                    ps.dirty = False
                state, ended, reason = cap.state, cap.ended_ns, cap.end_reason
                cap.dirty = False
            try:
                for pending in syncs:
                    pending.run()
                self.store.commit(cap.id, state=state, ended_ns=ended, end_reason=reason, pods=rows)
            except BaseException:
                for pending in syncs:
                    pending.close()
                with cap.lock:
                    for ps in dirty:
                        ps.dirty = True
                    cap.dirty = True
                raise
            owed: list[tuple[PodState, StreamState, int, AgentConnection]] = []
            with cap.lock:
                for ps, st, seq, conn in committed:
                    st.committed_seq = max(st.committed_seq, seq)
                    # The connection that wrote the chunk, and the one that sent it again meanwhile (an agent that
                    # reconnected during the flush: it waits for this acknowledgement too).
                    for to in {id(c): c for c in (conn, st.ack_conn) if c is not None}.values():
                        owed.append((ps, st, seq, to))
        if committed:
            self.commit_seconds(time.monotonic() - started)
        by_conn: dict[int, tuple[AgentConnection, list[ingest_pb2.ChunkAck]]] = {}
        for ps, st, seq, conn in owed:
            by_conn.setdefault(id(conn), (conn, []))[1].append(ingest_pb2.ChunkAck(
                capture_id=cap.id, pod_uid=ps.pod.uid, stream_id=st.id, seq=seq))
        for conn, acks in by_conn.values():  # one message per agent and commit, however many streams it covers
            if len(acks) == 1:
                conn.send(ingest_pb2.CollectorMessage(ack=acks[0]))
            else:
                conn.send(ingest_pb2.CollectorMessage(acks=ingest_pb2.AckBatch(acks=acks)))

    def _commit_loop(self) -> None:
        while not self._closing.is_set():
            self._commit_now.wait(1.0)
            if self._closing.wait(COMMIT_INTERVAL_S):
                break
            self._commit_now.clear()
            for cap in self.all():
                try:
                    self._commit(cap)
                except StorageError as e:
                    self._pause(f"cannot sync: {e}")
                except Exception:
                    log.exception("committing capture %s failed", cap.id)

    # ---- reading ----

    def follow(self, capture_id: str, selectors: list[str]) -> Subscription:
        """A live view of the capture's packets from now on (ended at once if the capture is over)."""
        cap = self.get(capture_id)
        sub = Subscription(cap.id, selectors)
        with cap.lock:
            if cap.live:
                # Pods already streaming are announced now, so the reader's output starts with a valid header.
                for ps in cap.pods.values():
                    pod = ps.pod.to_proto()
                    if ps.fmt is not None and sub.wants(pod):
                        sub.announce(pod, ps.fmt)
                cap.followers.append(sub)
                return sub
        sub.end(self.status(cap))
        return sub

    def unfollow(self, capture_id: str, sub: Subscription) -> None:
        cap = self.get(capture_id)
        with cap.lock:
            if sub in cap.followers:
                cap.followers.remove(sub)
        sub.end(None)

    def pod_files(
        self, cap: Capture, selectors: list[str], *, since_ns: int = 0, until_ns: int = 0
    ) -> Iterator[tuple[PodState, FileFormat, list[tuple[BinaryIO, int]]]]:
        """Each selected pod with its stream format and its segments as (open file, bytes to read); with a time
        window only the segments whose time range overlaps it. Files are opened under the capture lock, so
        retention deleting a segment meanwhile cannot break the reader."""
        with cap.lock:
            pods = list(cap.pods.values())
        for ps in pods:
            if selectors and ps.pod.uid not in selectors and ps.pod.display not in selectors and \
                    ps.pod.name not in selectors:
                continue
            files: list[tuple[BinaryIO, int]] = []
            with cap.lock:
                if ps.writer is not None:
                    try:
                        ps.writer.publish()  # the open segment's last partial block may be in memory only
                    except StorageError as e:
                        log.error("%s", e)
                for seg in ps.segments:
                    if since_ns and seg.last_ts_ns and seg.last_ts_ns < since_ns:
                        continue
                    if until_ns and seg.first_ts_ns and seg.first_ts_ns > until_ns:
                        continue
                    try:
                        files.append((open(seg.path, "rb"), seg.bytes))  # noqa: SIM115 (closed by the reader)
                    except FileNotFoundError:
                        continue
                pf = ps.fmt
            snaplen = cap.request.settings.snaplen or MAX_SNAPLEN
            fmt = _fmt(pf) if pf is not None else FileFormat(1, snaplen, True)
            yield ps, fmt, files

    # ---- background ----

    def _tick_loop(self) -> None:
        last_retention = 0.0
        while not self._closing.wait(0.2):
            now_ns = time.time_ns()
            for cap in self.all():
                if cap.state == control_pb2.CAPTURE_STATE_RUNNING and cap.deadline_ns and now_ns >= cap.deadline_ns:
                    self._begin_stop(cap, "duration reached")
                elif cap.state == control_pb2.CAPTURE_STATE_STOPPING and time.monotonic() >= cap.stop_deadline:
                    self._maybe_finish(cap, force=True)
            if time.monotonic() - last_retention >= 1.0:
                last_retention = time.monotonic()
                for cap in self.all():
                    if cap.live and cap.request.retention.keep_seconds:
                        with cap.lock:
                            self._apply_retention(cap, now_ns)

    def close(self) -> None:
        """Persist everything; running captures stay RUNNING in the database and resume at the next start."""
        self._closing.set()
        self._commit_now.set()
        self._ticker.join(timeout=5)
        self._committer.join(timeout=5)
        for cap in self.all():
            with cap.lock:
                for ps in cap.pods.values():
                    if ps.writer is not None:
                        self._close_writer(ps)
                        ps.dirty = True
            try:
                self._commit(cap)
            except Exception:
                log.exception("final commit of capture %s failed", cap.id)



def _cut_reason(data: bytes | memoryview, cut: int, fmt: FileFormat, packets: int, max_packets: int | None,
                until: int | None) -> str:
    """Which limit stopped ``scan_records`` before the record at ``cut``."""
    if max_packets is not None and packets >= max_packets:
        return "max-packets reached"
    if until is not None:
        sec = int.from_bytes(bytes(data[cut:cut + 4]), "little")
        frac = int.from_bytes(bytes(data[cut + 4:cut + 8]), "little")
        if sec * 1_000_000_000 + frac * fmt.ts_scale > until:
            return "duration reached"
    return "max-bytes reached"
