"""``podcap.v1.Ingest``: the collector's end of every agent session.

The first message must be ``register``. Then one reader thread consumes the agent's messages (chunks are stored
and acknowledged in order; events and inventories go to the capture manager and registry) while the response
generator drains the connection's outbound queue (commands and acks). A malformed message from an agent is
logged and answered in-band where possible; it never touches stored data. Normal ends (the agent closing,
cancellation, collector shutdown) are not errors.
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
from podcap.collector.captures.chunks import ChunkRejectedError
from podcap.collector.captures.manager import CaptureManager
from podcap.names import InvalidNameError, check_namespace, check_node_name, check_pod_name, check_pod_uid
from podcap.pods import PodRef
from podcap.tls import AGENT_IDENTITY, peer_identity
from podcap.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc

log = logging.getLogger(__name__)

MAX_BATCH = 1000


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
    def __init__(self, registry: AgentRegistry, captures: CaptureManager, *, require_agent_cert: bool) -> None:
        self.registry = registry
        self.captures = captures
        self.require_agent_cert = require_agent_cert

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
            session_id=conn.session_id, heartbeat_interval_ms=int(HEARTBEAT_INTERVAL_S * 1000))))
        try:
            self.registry.register(conn)
        except AgentConflictError as e:
            abort_for(context, e)
        context.add_callback(conn.close)
        reader = threading.Thread(target=self._read, args=(conn, request_iterator), daemon=True,
                                  name=f"ingest-{node}")
        reader.start()
        try:
            yield from conn.outgoing()
        finally:
            conn.close()
            reader.join(timeout=5)
            self.registry.unregister(conn)

    def _chunk(self, conn: AgentConnection, c: ingest_pb2.PcapChunk,
               records: memoryview | None = None) -> ingest_pb2.ChunkAck | None:
        """Store one chunk; an acknowledgement to send now (duplicate or rejection), or None (the commit will)."""
        try:
            return self.captures.on_chunk(conn, c, records)
        except ChunkRejectedError as e:
            log.warning("agent %s: chunk rejected: %s", conn.node, e)
            return ingest_pb2.ChunkAck(capture_id=c.capture_id[:64], pod_uid=c.pod_uid[:64],
                                       stream_id=c.stream_id[:64], seq=c.seq, rejected=True, reason=str(e)[:500])

    def _read(self, conn: AgentConnection, requests: Iterator[ingest_pb2.AgentMessage | IncomingChunk]) -> None:
        try:
            for msg in requests:
                conn.last_seen = time.monotonic()
                if isinstance(msg, IncomingChunk):  # a lone chunk, decoded without copying its records
                    ack = self._chunk(conn, msg.meta, msg.records)
                    if ack is not None:
                        conn.send(ingest_pb2.CollectorMessage(ack=ack))
                    continue
                kind = msg.WhichOneof("kind")
                if kind == "chunk" or kind == "chunks":
                    batch = [msg.chunk] if kind == "chunk" else list(msg.chunks.chunks)[:MAX_BATCH]
                    acks = [a for a in (self._chunk(conn, c) for c in batch) if a is not None]
                    if len(acks) == 1:
                        conn.send(ingest_pb2.CollectorMessage(ack=acks[0]))
                    elif acks:
                        conn.send(ingest_pb2.CollectorMessage(acks=ingest_pb2.AckBatch(acks=acks)))
                elif kind == "pod_event":
                    self.captures.on_pod_event(conn, msg.pod_event)
                elif kind == "inventory":
                    self.registry.update_inventory(conn, _valid_pods(conn.node, list(msg.inventory.pods)))
                elif kind == "heartbeat":
                    pass
                else:
                    log.warning("agent %s: unexpected message %r ignored", conn.node, kind)
        except grpc.RpcError:
            pass  # the stream ended (agent gone, cancelled, shutdown): handled by the caller
        except Exception:
            log.exception("agent %s: session reader failed", conn.node)
        finally:
            conn.close()
