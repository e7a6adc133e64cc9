"""The agent's session with the collector: register, inventory, heartbeats, commands down, chunks up.

The agent always dials (privileged pods listen on nothing). One ``Ingest.Attach`` stream carries everything; it is
re-established with exponential backoff when it breaks. Between the capture loop and gRPC sits the ``UploadLog``
(``podcap.agent.upload.upload_log``): the capture loop never blocks on the network; chunks stay there until the
collector acknowledges them as durable, and are re-sent after a reconnect. gRPC's request iterator pulls from the log,
so HTTP/2 flow control paces the upload (a collector that stops reading — e.g. its disk is full — makes the agent spool,
then keep gaps in the places of chunks that no longer fit, each pod keeping its share).

Streams keep running while the collector is away. On registration the collector re-sends the captures it still
wants (starts for running streams are no-ops) and the agent re-sends each stream's STARTED event and its
unacknowledged chunks, so a collector restart or a network blip costs nothing.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import grpc

from podcap import __version__
from podcap.agent.capture.chunkbuf import TriggerState
from podcap.agent.capture.engine import CaptureEngine
from podcap.agent.capture.interfaces import HandleFactory
from podcap.agent.capture.libpcap import Handle
from podcap.agent.capture.settings import EngineSettings
from podcap.agent.pods.node_target import locate as locate_node_target
from podcap.agent.pods.source import PodNetwork, PodNotFoundError, PodSource, PodSourceError
from podcap.agent.recorder.manager import RecorderManager
from podcap.agent.recorder.store import RingStore, StoreSettings
from podcap.agent.upload.encoded import EncodedChunk, serialize
from podcap.agent.upload.upload_log import UploadLog
from podcap.names import CaptureId, InvalidNameError, NodeName, PodUid, check_capture_id, check_pod_uid
from podcap.nodes import NODE_UID_PREFIX
from podcap.pods import PodRef
from podcap.tls import TlsFiles, open_channel
from podcap.v1 import common_pb2, ingest_pb2

log = logging.getLogger(__name__)

# How long a wanted pod must be missing from the node's inventory before its capture is reported DONE.
POD_GONE_AFTER_S = 5.0
# Session ends that no reconnect will change (configuration): logged as errors, retried at the slowest pace.
_CONFIG_REFUSALS = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                              grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.UNIMPLEMENTED})
# Session ends caused by one message the collector will never take: that message must not be sent again.
_MESSAGE_REFUSALS = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT})
# gRPC's text when a message is past the receiver's limit: "Received message larger than max (N vs. M)".
_LARGER_THAN_MAX = re.compile(r"larger than max \((\d+) vs\. (\d+)\)")
# Time the agent gives the collector to acknowledge its last chunks at shutdown (a Kubernetes pod gets 30 s in
# all by default; the engine's graceful stop takes about 1 s).
SHUTDOWN_DRAIN_S = 10.0


def _declared_limit(details: str) -> int | None:
    """The receive limit a RESOURCE_EXHAUSTED names, if it does."""
    m = _LARGER_THAN_MAX.search(details)
    return int(m.group(2)) if m else None


@dataclass(frozen=True)
class AgentConfig:
    collector: str
    node: NodeName
    heartbeat_interval: float = 5.0
    inventory_interval: float = 1.0
    upload_buffer_bytes: int = 64 << 20
    spool_dir: str | None = None
    spool_disk_bytes: int = 1 << 30
    # Client certificate for the collector (mutual TLS); None = plaintext (only with --insecure).
    tls: TlsFiles | None = None
    reconnect_min: float = 0.5
    reconnect_max: float = 10.0
    engine: EngineSettings = EngineSettings()
    # Flight-recorder rings: their directory (None: recordings refused), the node's budget for them, and the free
    # bytes their filesystem keeps (None: 5% of it, at most 2 GiB).
    ring_dir: str | None = None
    ring_budget_bytes: int = 1 << 30
    ring_min_free_bytes: int | None = None


@dataclass
class _Desired:
    """A (capture, pod) the collector asked for and has not stopped: re-attached when the pod's sandbox returns."""

    settings: common_pb2.CaptureSettings
    pods_on_node: int
    fingerprint: tuple[str, str, int]
    # Monotonic time since which the pod is missing from the inventory (0 = present).
    missing_since: float = 0.0


def _fingerprint(network: PodNetwork) -> tuple[str, str, int]:
    """What identifies one incarnation of a pod's network: the sandbox key, plus the host veth and its ifindex —
    namespace inodes can be reused when a namespace is recreated, interface indexes are not reused soon."""
    index = 0
    if network.host_veth:
        try:
            index = socket.if_nametoindex(network.host_veth)
        except OSError:
            index = -1
    return (network.sandbox_key, network.host_veth or "", index)


def _snapshot(pods: Iterable[PodRef]) -> dict[PodUid, tuple[object, ...]]:
    """Every field of every pod: the inventory is sent again when any of them changed (``PodRef``'s own equality
    is the pod's identity only, blind to new labels or a new IP)."""
    return {p.uid: (p.namespace, p.name, p.node, dict(p.labels), p.ip, p.host_network, p.sandbox_key) for p in pods}


class _Sink:
    """StreamSink for the capture engine: a capture's chunks and events go into the outbound queue (terminal events
    end the wish); a recording's go to the recorder manager (its ring on disk)."""

    def __init__(self, out: UploadLog, ended: Callable[[CaptureId, PodUid], None]) -> None:
        self.out = out
        self.ended = ended
        self.recorder: RecorderManager | None = None

    def chunk(self, chunk: EncodedChunk) -> bool:
        if self.recorder is not None and self.recorder.owns(chunk.meta.capture_id):
            return self.recorder.chunk(chunk)
        return self.out.put_chunk(chunk)

    def event(self, event: ingest_pb2.PodCaptureEvent) -> None:
        if self.recorder is not None and self.recorder.owns(event.capture_id):
            self.recorder.event(event)
            return
        if event.state in (common_pb2.POD_CAPTURE_STATE_DONE, common_pb2.POD_CAPTURE_STATE_FAILED):
            self.ended(CaptureId(event.capture_id), PodUid(event.pod_uid))
        self.out.put(ingest_pb2.AgentMessage(pod_event=event))

    def trigger(self, key: tuple[str, str], state: TriggerState) -> None:
        if self.recorder is not None:
            self.recorder.trigger(key, state)


class AgentSession:
    """Runs the agent until ``shutdown()``: keeps a session with the collector and executes its commands."""

    def __init__(self, config: AgentConfig, source: PodSource, *, handles: HandleFactory = Handle) -> None:
        """``handles`` opens the capture handles (libpcap's by default; unit tests pass fakes)."""
        self.cfg = config
        self.source = source
        self.instance_id = uuid.uuid4().hex[:12]
        self.out = UploadLog(memory_bytes=config.upload_buffer_bytes, disk_bytes=config.spool_disk_bytes,
                             spool_dir=config.spool_dir)
        self._desired: dict[tuple[CaptureId, PodUid], _Desired] = {}
        # Chunks sized to the upload buffer they go to (see EngineSettings.upload_buffer_bytes).
        engine = replace(config.engine, upload_buffer_bytes=config.upload_buffer_bytes + self.out.disk_bytes)
        sink = _Sink(self.out, self._ended)
        self.engine = CaptureEngine(sink, instance_id=self.instance_id, settings=engine, handles=handles)
        self.recorder: RecorderManager | None = None
        if config.ring_dir:
            store = RingStore(StoreSettings(config.ring_dir, budget_bytes=config.ring_budget_bytes,
                                            min_free_bytes=config.ring_min_free_bytes))
            self.recorder = sink.recorder = RecorderManager(store, self.engine, self.out, source,
                                                            fingerprint=_fingerprint, node=config.node)
        self.out.on_lost = self._lost  # gaps the log keeps in chunks' places count per pod (or per save)
        self._stop = threading.Event()
        self._pods: dict[PodUid, PodRef] = {}
        self._call: grpc.Future[ingest_pb2.CollectorMessage] | None = None
        self._lock = threading.Lock()
        self.connected = False
        # Called with True when a session is registered and False when it ends (health, metrics).
        self.on_connected: Callable[[bool], None] = lambda _up: None

    def _lost(self, capture_id: str, stream_id: str, cause: str, packets: int) -> None:
        if self.recorder is not None and self.recorder.record_loss(capture_id, stream_id, cause, packets):
            return
        self.engine.record_loss(capture_id, stream_id, cause, packets)

    def _rings(self) -> list[ingest_pb2.RingStatus]:
        return self.recorder.statuses() if self.recorder is not None else []

    # ---- lifecycle ----

    def run(self) -> None:
        backoff = self.cfg.reconnect_min
        refusals = 0  # sessions in a row that the collector ended over a message, with no acknowledgement between
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._session()
                failure: grpc.RpcError | None = None
            except grpc.RpcError as e:
                failure = e
            if self._stop.is_set():
                break
            if failure is not None:
                refusals = self._session_failed(failure, refusals, backoff)
            # Streams keep capturing into the spool; the next session re-sends what is unacknowledged.
            if time.monotonic() - started > 30:
                backoff = self.cfg.reconnect_min
            self._stop.wait(backoff)
            backoff = min(self.cfg.reconnect_max, backoff * 2)

    def _session_failed(self, e: grpc.RpcError, refusals: int, backoff: float) -> int:
        """Classify why the collector ended a session, log it with what happens next, and make sure a message the
        collector will never take is not sent again: returns the count of refusals in a row."""
        code = e.code() if isinstance(e, grpc.Call) else None
        details = (e.details() if isinstance(e, grpc.Call) else str(e)) or ""
        chunks, size = self.out.pending()
        holding = f"holding {chunks} unacknowledged chunks ({size} bytes)"
        name = code.name if code is not None else type(e).__name__
        if code in _CONFIG_REFUSALS:
            log.error("collector refused this agent: %s: %s; retrying in %.1fs (%s)", name, details, backoff, holding)
            return 0
        if code not in _MESSAGE_REFUSALS:
            log.warning("collector session ended: %s: %s; reconnecting in %.1fs (%s)", name, details or "no details",
                        backoff, holding)
            return 0
        progressed = self.out.acked_in_session()
        refusals = 1 if progressed else refusals + 1
        limit = _declared_limit(details)
        if limit is not None and limit < self.out.max_message:
            # The collector's transport refused a message past its real receive limit: everything that large goes
            # as a gap from now on (and chunks are cut below it), instead of being sent again.
            self._set_message_limit(limit)
            what = f"messages over {limit} bytes go as gaps from now on"
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED or refusals >= 2:
            suspect = self.out.quarantine()
            what = (f"chunk {suspect[0]} ({suspect[1]} bytes) goes as a gap instead" if suspect
                    else "no sent chunk to blame")
        else:
            what = "will drop the suspect message if the next session ends the same way"
        log.error("collector refused a message: %s: %s; %s; reconnecting in %.1fs (%s)", name, details, what,
                  backoff, holding)
        return refusals

    def _set_message_limit(self, limit: int) -> None:
        self.out.max_message = limit
        self.engine.set_message_limit(limit)

    def shutdown(self) -> None:
        """Graceful stop: final chunks and counters of every stream are flushed up before the session closes."""
        self._stop.set()
        self.engine.close()
        if self.recorder is not None:
            self.recorder.close()
        # Give the collector a moment to acknowledge the last chunks (none when no session is up: nothing would
        # arrive), then end the session.
        if not self.out.wait_drained(SHUTDOWN_DRAIN_S if self.connected else 0):
            count, size = self.out.pending()
            log.warning("shutting down with %d unacknowledged chunks (%d bytes) not stored%s", count, size,
                        "" if self.connected else " (no session with the collector)")
        self.out.close_after_queued()
        deadline = time.monotonic() + 5
        with self._lock:
            call = self._call
        while call is not None and time.monotonic() < deadline and not call.done():
            time.sleep(0.05)
        if call is not None:
            call.cancel()
        self.out.end_session()

    # ---- one session ----

    def _inventory(self) -> list[PodRef]:
        try:
            pods = self.source.list_pods()
        except PodSourceError as e:
            log.warning("pod inventory failed: %s", e)
            return list(self._pods.values())
        with self._lock:
            self._pods = {p.uid: p for p in pods}
        return pods

    def _session(self) -> None:
        pods = self._inventory()
        register = ingest_pb2.AgentMessage(
            register=ingest_pb2.Register(
                node=self.cfg.node, version=__version__, instance_id=self.instance_id,
                pods=[p.to_proto() for p in pods], pod_source=self.source.name, held=self.out.held_by_stream(),
                rings=self._rings(),
            )
        )
        self.out.new_session()
        if self.recorder is not None:
            for msg in self.recorder.recent_firings():
                self.out.put(msg)
        channel = open_channel(self.cfg.collector, self.cfg.tls,
                               options=[("grpc.max_send_message_length", -1), ("grpc.keepalive_time_ms", 20000)])
        try:
            # The generated stub would serialize every request itself; chunks arrive here already serialized.
            attach = channel.stream_stream("/podcap.v1.Ingest/Attach", request_serializer=serialize,
                                           response_deserializer=ingest_pb2.CollectorMessage.FromString)
            responses = attach(self.out.iterate(register))
            with self._lock:
                self._call = responses  # type: ignore[assignment]  # the call is both iterator and future
            side = threading.Thread(target=self._side_loop, args=(responses,), daemon=True, name="agent-side")
            side.start()
            for reply in responses:
                self._handle(reply)
        finally:
            with self._lock:
                self._call = None
            if self.connected:
                self.connected = False
                self.on_connected(False)
            self.out.end_session()
            channel.close()

    def _side_loop(self, call: grpc.Future[ingest_pb2.CollectorMessage]) -> None:
        """Heartbeats and inventory changes while the session lasts."""
        last_heartbeat = 0.0
        last_pods = _snapshot(self._pods.values())
        while not self._stop.is_set() and not call.done():
            now = time.monotonic()
            changed = self.recorder is not None and self.recorder.take_changed()
            if changed or now - last_heartbeat >= self.cfg.heartbeat_interval:
                last_heartbeat = now
                self.out.put(ingest_pb2.AgentMessage(heartbeat=ingest_pb2.Heartbeat(
                    sent_unix_ns=time.time_ns(), held=self.out.held_by_stream(), rings=self._rings())))
            pods = {p.uid: p for p in self._inventory()}
            snapshot = _snapshot(pods.values())
            if snapshot != last_pods:
                last_pods = snapshot
                self.out.put(
                    ingest_pb2.AgentMessage(inventory=ingest_pb2.Inventory(pods=[p.to_proto() for p in pods.values()]))
                )
            try:
                self._reconcile(pods)
                if self.recorder is not None:
                    self.recorder.reconcile(pods)
            except Exception:  # keep heartbeats and inventory going whatever happens here
                log.exception("re-attaching pods failed")
            self._stop.wait(self.cfg.inventory_interval)

    def _ended(self, capture_id: CaptureId, uid: PodUid) -> None:
        with self._lock:
            self._desired.pop((capture_id, uid), None)

    def _reconcile(self, pods: dict[PodUid, PodRef]) -> None:
        """Re-attach wanted pods whose stream ended because their sandbox went away and came back (new sandbox
        key); report DONE for wanted pods that left the node."""
        active = set(self.engine.active())
        with self._lock:
            waiting = [(k, d) for k, d in self._desired.items() if k not in active]
        for (cid, uid), want in waiting:
            if uid.startswith(NODE_UID_PREFIX):
                continue  # a node's own network never leaves the node (node_target.py)
            pod = pods.get(uid)
            if pod is None and not want.missing_since:
                want.missing_since = time.monotonic()
            if pod is not None:
                want.missing_since = 0.0
            if pod is None:
                # A restarting sandbox leaves the inventory briefly; only a lasting absence means deleted.
                if time.monotonic() - want.missing_since < POD_GONE_AFTER_S:
                    continue
                self._ended(cid, uid)
                self.out.put(ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
                    capture_id=cid, pod_uid=uid, state=common_pb2.POD_CAPTURE_STATE_DONE,
                    message="pod deleted from the node")))
            else:
                try:
                    network = self.source.locate(uid)
                except PodSourceError:
                    continue  # not ready yet: next tick
                fingerprint = _fingerprint(network)
                if fingerprint == want.fingerprint or fingerprint[2] < 0:
                    continue  # the same (broken) incarnation, or its veth is not up yet
                want.fingerprint = fingerprint
                log.info("capture %s: re-attaching %s/%s (new sandbox)", cid, pod.namespace, pod.name)
                self.engine.start(cid, pod, network, want.settings, pods_on_node=want.pods_on_node)

    def _handle(self, msg: ingest_pb2.CollectorMessage) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "registered":
            if msg.registered.max_message_bytes:
                self._set_message_limit(msg.registered.max_message_bytes)
            self.connected = True
            self.on_connected(True)
            log.info("registered with collector %s as node %s (session %s)",
                     self.cfg.collector, self.cfg.node, msg.registered.session_id)
        elif kind == "start":
            self._start(msg.start)
        elif kind == "stop":
            try:
                cid = check_capture_id(msg.stop.capture_id)
                uid = check_pod_uid(msg.stop.pod_uid) if msg.stop.pod_uid else None
            except InvalidNameError as e:
                log.warning("ignoring malformed stop command: %s", e)
                return
            with self._lock:
                for key in [k for k in self._desired if k[0] == cid and (uid is None or k[1] == uid)]:
                    del self._desired[key]
            self.engine.stop(cid, uid, msg.stop.reason[:200] or "stopped by collector")
        elif kind in ("start_recording", "stop_recording", "save"):
            self._recording_command(msg)
        elif kind == "ack":
            self.out.ack(msg.ack)
        elif kind == "acks":
            self.out.ack(*msg.acks.acks)

    def _recording_command(self, msg: ingest_pb2.CollectorMessage) -> None:
        """The flight recorder's commands (see ``podcap.agent.recorder``)."""
        kind = msg.WhichOneof("kind")
        if self.recorder is None:
            log.warning("ignoring %s: this agent keeps no rings (no --ring-dir)", kind)
            if kind == "save":
                self.out.put(ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
                    capture_id=msg.save.capture_id, pod_uid=msg.save.pod_uid,
                    state=common_pb2.POD_CAPTURE_STATE_FAILED,
                    message=f"the agent on node {self.cfg.node} keeps no rings (no --ring-dir)")))
            return
        if kind == "start_recording":
            uid = msg.start_recording.pod.uid
            with self._lock:
                pod = self._pods.get(PodUid(uid))
            if pod is None:
                pod = {p.uid: p for p in self._inventory()}.get(PodUid(uid))
            self.recorder.start(msg.start_recording, pod)
        elif kind == "stop_recording":
            self.recorder.stop(msg.stop_recording)
        else:
            self.recorder.save(msg.save)

    def _start(self, cmd: ingest_pb2.StartPodCapture) -> None:
        def fail(message: str) -> None:
            self.out.put(ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
                capture_id=cmd.capture_id, pod_uid=cmd.pod.uid, state=common_pb2.POD_CAPTURE_STATE_FAILED,
                message=message)))

        try:
            cid: CaptureId = check_capture_id(cmd.capture_id)
            uid = check_pod_uid(cmd.pod.uid)
        except InvalidNameError as e:
            log.warning("ignoring malformed start command: %s", e)
            return
        node_target = locate_node_target(cmd.pod, self.cfg.node)  # node/NAME: the node's own network
        with self._lock:
            pod = node_target[0] if node_target else self._pods.get(uid)
        if pod is None:
            pods = {p.uid: p for p in self._inventory()}
            pod = pods.get(uid)
        if pod is None:
            fail(f"pod {cmd.pod.namespace}/{cmd.pod.name} (uid {uid}) is not on node {self.cfg.node}")
            return
        try:
            network = node_target[1] if node_target else self.source.locate(uid)
        except PodNotFoundError as e:
            fail(str(e))
            return
        except PodSourceError as e:
            fail(f"cannot locate pod {pod.namespace}/{pod.name}: {e}")
            return
        with self._lock:
            self._desired[(cid, uid)] = _Desired(cmd.settings, cmd.pods_on_node or 1, _fingerprint(network))
        self.engine.start(cid, pod, network, cmd.settings, pods_on_node=cmd.pods_on_node or 1)
