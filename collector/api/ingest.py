"""``podcap.v1.Ingest``: the collector's end of every agent session.

The first message must be ``register``. Then one reader thread consumes the agent's messages (chunks are stored
and acknowledged in order; events and inventories go to the capture manager and registry; what the agent holds
unacknowledged, reported at registration and with every heartbeat, goes to the capture manager) while the
response generator drains the connection's outbound queue (commands and acks). A malformed message from an agent
is logged and answered in-band where possible; it never touches stored data. Normal ends (the agent closing,
cancellation, collector shutdown) are not errors, but each is logged with what ended it.

Message size. The collector declares the largest message it accepts (``Registered.max_message_bytes``,
``MAX_MESSAGE_BYTES``) and agents cut their chunks to fit. A chunk in a larger message is answered with an in-band
rejection (``ChunkAck.rejected``) naming both sizes, its packets are counted ``rejected`` (the agent drops it), and
the session goes on. The transport's own receive limit (``RECEIVE_LIMIT_BYTES``) sits ``RECEIVE_MARGIN_BYTES``
(4 MiB) above the declared one because a message past it never reaches the servicer: gRPC cancels the whole call,
the servicer only sees a cancellation, and the agent can only guess which message it was (issue 21: it sent the
same one again after every reconnect). The margin is one agent chunk (4 MiB plus a record), so an agent that does
not know the declared limit (an older one) and overshoots it by up to a chunk is still told in-band why; it is not
larger because every session may hold one message of this size in memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import grpc

from podcap.collector.agents import HEARTBEAT_INTERVAL_S, AgentConflictError, AgentConnection, AgentRegistry
from podcap.collector.api.errors import abort_for
from podcap.collector.api.wire import IncomingChunk
from podcap.collector.captures.chunks import ChunkRejectedError, oversized_reason
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.recorders.manager import RecorderManager
from podcap.names import InvalidNameError, check_namespace, check_node_name, check_pod_name, check_pod_uid
from podcap.pods import PodRef
from podcap.tls import AGENT_IDENTITY, peer_identity
from podcap.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc

log = logging.getLogger(__name__)

MAX_BATCH = 1000
# What agents are told they may send (Registered.max_message_bytes), and what the transport takes (see above).
MAX_MESSAGE_BYTES = 16 << 20
RECEIVE_MARGIN_BYTES = 4 << 20
RECEIVE_LIMIT_BYTES = MAX_MESSAGE_BYTES + RECEIVE_MARGIN_BYTES
AGENT_ENDED = "the agent ended the session"


def call_ended(e: grpc.RpcError | None = None) -> str:
    """Why a call ended that the servicer saw cancelled, as precisely as gRPC says: a server-side ``RpcError``
    carries no status, so the candidates are named."""
    code, details = getattr(e, "code", None), getattr(e, "details", None)
    if callable(code) and callable(details):
        status = code()
        return f"gRPC status {getattr(status, 'name', status)}: {details()}"
    return ("the call was cancelled: the agent cancelled it or stopped, the connection broke, or a message was "
            f"over the collector's receive limit of {RECEIVE_LIMIT_BYTES} bytes (gRPC does not tell the server "
            "which; the agent's log has the status it got)")


def _valid_pods(node: str, pods: list[common_pb2.Pod]) -> list[PodRef]:
    """Inventory entries with valid names on the agent's own node; others are dropped with a log line."""
    out = []
    for p in pods:
        try:
            check_namespace(p.namespace)
            check_pod_name(p.name)
            check_pod_uid(p.uid)
        except InvalidNameError as e:
            log.warning("agent %s: inventory entry ignored: %s", node, e)
            continue
        ref = PodRef.from_proto(p)
        if ref.node != node:
            ref = PodRef(ref.namespace, ref.name, ref.uid, check_node_name(node), ref.labels, ref.ip,
                         ref.host_network)
        out.append(ref)
    return out


class IngestServicer(ingest_pb2_grpc.IngestServicer):
    def __init__(self, registry: AgentRegistry, captures: CaptureManager, *, require_agent_cert: bool,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, recorders: RecorderManager | None = None) -> None:
        self.registry = registry
        self.captures = captures
        self.recorders = recorders  # flight recorders: the agents' rings and packet triggers
        self.require_agent_cert = require_agent_cert
        self.max_message_bytes = max_message_bytes

    def Attach(  # noqa: N802 (gRPC method name)
        self, request_iterator: Iterator[ingest_pb2.AgentMessage | IncomingChunk], context: grpc.ServicerContext
    ) -> Iterator[ingest_pb2.CollectorMessage]:
        if self.require_agent_cert and peer_identity(context) != AGENT_IDENTITY:
            log.warning("refused an agent session from %s: no valid agent certificate", context.peer())
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"agents must present a client certificate for {AGENT_IDENTITY!r} signed by the "
                          "collector's CA (--tls-cert/--tls-key on the agent)")
        try:
            first = next(request_iterator)
        except (StopIteration, grpc.RpcError):
            return
        if isinstance(first, IncomingChunk) or first.WhichOneof("kind") != "register":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of a session must be `register`")
        reg = first.register
        try:
            node = check_node_name(reg.node)
        except InvalidNameError as e:
            abort_for(context, e)
        conn = AgentConnection(node=node, instance_id=reg.instance_id[:64], version=reg.version[:64],
                               pod_source=reg.pod_source[:32], pods=_valid_pods(node, list(reg.pods)))
        conn.send(ingest_pb2.CollectorMessage(registered=ingest_pb2.Registered(
            session_id=conn.session_id, heartbeat_interval_ms=int(HEARTBEAT_INTERVAL_S * 1000),
            max_message_bytes=self.max_message_bytes)))
        try:
            self.registry.register(conn)
        except AgentConflictError as e:
            log.warning("refused an agent session from %s: %s", context.peer(), e)
            abort_for(context, e)
        self.captures.on_held(conn, reg.held)
        if self.recorders is not None:
            self.recorders.on_rings(conn, reg.rings)
        context.add_callback(lambda: conn.close(call_ended()))
        reader = threading.Thread(target=self._read, args=(conn, request_iterator), daemon=True,
                                  name=f"ingest-{node}")
        reader.start()
        try:
            yield from conn.outgoing()
        except GeneratorExit:
            conn.close(call_ended())  # gRPC stopped taking our responses: the call is over
            raise
        finally:
            conn.close()
            reader.join(timeout=5)
            self.registry.unregister(conn)

    def _chunk(self, conn: AgentConnection, c: ingest_pb2.PcapChunk, records: memoryview | None = None, *,
               size: int = 0) -> ingest_pb2.ChunkAck | None:
        """Store one chunk (from a message of ``size`` bytes); an acknowledgement to send now (duplicate or
        rejection), or None (the commit will)."""
        try:
            if size > self.max_message_bytes:
                return self.captures.on_oversized(conn, c, size, self.max_message_bytes)
            return self.captures.on_chunk(conn, c, records)
        except ChunkRejectedError as e:
            log.warning("agent %s: chunk %d of stream %r (capture %r, pod %r) refused: %s", conn.node, c.seq,
                        c.stream_id[:64], c.capture_id[:64], c.pod_uid[:64], e)
            return ingest_pb2.ChunkAck(capture_id=c.capture_id[:64], pod_uid=c.pod_uid[:64],
                                       stream_id=c.stream_id[:64], seq=c.seq, rejected=True, reason=str(e)[:500])

    def _read(self, conn: AgentConnection, requests: Iterator[ingest_pb2.AgentMessage | IncomingChunk]) -> None:
        try:
            for msg in requests:
                conn.last_seen = time.monotonic()
                if isinstance(msg, IncomingChunk):  # a lone chunk, decoded without copying its records
                    ack = self._chunk(conn, msg.meta, msg.records, size=msg.size)
                    if ack is not None:
                        conn.send(ingest_pb2.CollectorMessage(ack=ack))
                    continue
                kind = msg.WhichOneof("kind")
                if kind == "chunk" or kind == "chunks":
                    batch = [msg.chunk] if kind == "chunk" else list(msg.chunks.chunks)[:MAX_BATCH]
                    size = msg.ByteSize()
                    if size > self.max_message_bytes:
                        log.warning("agent %s: a batch of %d chunks refused: %s", conn.node, len(batch),
                                    oversized_reason(size, self.max_message_bytes))
                    acks = [a for a in (self._chunk(conn, c, size=size) for c in batch) if a is not None]
                    if len(acks) == 1:
                        conn.send(ingest_pb2.CollectorMessage(ack=acks[0]))
                    elif acks:
                        conn.send(ingest_pb2.CollectorMessage(acks=ingest_pb2.AckBatch(acks=acks)))
                elif kind == "pod_event":
                    self.captures.on_pod_event(conn, msg.pod_event)
                elif kind == "inventory":
                    self.registry.update_inventory(conn, _valid_pods(conn.node, list(msg.inventory.pods)))
                elif kind == "heartbeat":
                    self.captures.on_held(conn, msg.heartbeat.held)
                    if self.recorders is not None:
                        self.recorders.on_rings(conn, msg.heartbeat.rings)
                elif kind == "packet_trigger" and self.recorders is not None:
                    self.recorders.on_packet_trigger(conn, msg.packet_trigger)
                else:
                    log.warning("agent %s: unexpected message %r ignored", conn.node, kind)
        except grpc.RpcError as e:
            conn.close(call_ended(e))  # logged when the registry hears of the end
        except Exception as e:
            log.exception("agent %s: session reader failed", conn.node)
            conn.close(f"the collector's session reader failed: {type(e).__name__}: {e}")
        else:
            conn.close(AGENT_ENDED)  # the agent closed its side
        finally:
            conn.close()
