"""A collector stand-in for agent tests: a real gRPC ``Ingest`` server on loopback, speaking the generated proto.

It registers every agent session, acknowledges every chunk at once (as a collector that stored it), records
everything agents send (``messages``), and lets a test send collector commands into the current session
(``send``). Used where the collector's own side of a feature is not there yet (the flight recorder's saves), so that
the agent's half is tested through the real wire format and session code.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc

from podcap.formats.pcap import FileFormat
from podcap.v1 import ingest_pb2, ingest_pb2_grpc


class IngestStandIn(ingest_pb2_grpc.IngestServicer):
    def __init__(self, port: int = 0) -> None:
        """``port`` 0: any free port (a test restarting the stand-in passes the first one's port)."""
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                                  options=[("grpc.max_receive_message_length", 64 << 20)])
        ingest_pb2_grpc.add_IngestServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.address = f"127.0.0.1:{self.port}"
        self._cond = threading.Condition()
        self.messages: list[ingest_pb2.AgentMessage] = []
        self.registrations: list[ingest_pb2.Register] = []
        self._out: queue.Queue[ingest_pb2.CollectorMessage | None] | None = None

    def __enter__(self) -> IngestStandIn:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            if self._out is not None:
                self._out.put(None)
        self.server.stop(grace=1).wait()

    def kill(self) -> None:
        """Stop at once, as a collector that dies: sessions break, nothing more is acknowledged."""
        with self._cond:
            if self._out is not None:
                self._out.put(None)
        self.server.stop(grace=None).wait()

    # ---- the servicer ----

    def Attach(self, request_iterator: Iterator[ingest_pb2.AgentMessage],  # noqa: N802 (gRPC's name)
               context: grpc.ServicerContext) -> Iterator[ingest_pb2.CollectorMessage]:
        out: queue.Queue[ingest_pb2.CollectorMessage | None] = queue.Queue()
        first = next(request_iterator)
        with self._cond:
            if self._out is not None:
                self._out.put(None)
            self._out = out
            self.registrations.append(first.register)
            self.messages.append(first)
            self._cond.notify_all()
        out.put(ingest_pb2.CollectorMessage(registered=ingest_pb2.Registered(
            session_id=f"s{len(self.registrations)}", heartbeat_interval_ms=1000)))

        def read() -> None:
            try:
                for msg in request_iterator:
                    for chunk in self._chunks_of(msg):
                        out.put(ingest_pb2.CollectorMessage(ack=ingest_pb2.ChunkAck(
                            capture_id=chunk.capture_id, pod_uid=chunk.pod_uid, seq=chunk.seq,
                            stream_id=chunk.stream_id)))
                    with self._cond:
                        self.messages.append(msg)
                        self._cond.notify_all()
            except grpc.RpcError:
                pass
            out.put(None)

        threading.Thread(target=read, daemon=True).start()
        while context.is_active():
            try:
                item = out.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                return
            yield item

    @staticmethod
    def _chunks_of(msg: ingest_pb2.AgentMessage) -> list[ingest_pb2.PcapChunk]:
        kind = msg.WhichOneof("kind")
        if kind == "chunk":
            return [msg.chunk]
        if kind == "chunks":
            return list(msg.chunks.chunks)
        return []

    # ---- the test's side ----

    def send(self, msg: ingest_pb2.CollectorMessage) -> None:
        with self._cond:
            assert self._out is not None, "no agent session"
            self._out.put(msg)

    def wait_registered(self, count: int = 1, timeout: float = 20) -> ingest_pb2.Register:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.registrations) >= count, timeout):
                raise AssertionError(f"no agent registration #{count} within {timeout} s")
            return self.registrations[-1]

    def wait_for(self, ok: Callable[[ingest_pb2.AgentMessage], bool], timeout: float = 20,
                 what: str = "message") -> ingest_pb2.AgentMessage:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if ok(m):
                        return m
                rest = deadline - time.monotonic()
                if rest <= 0:
                    raise AssertionError(f"no {what} within {timeout} s")
                self._cond.wait(rest)

    def all(self, kind: str) -> list[ingest_pb2.AgentMessage]:
        with self._cond:
            return [m for m in self.messages if m.WhichOneof("kind") == kind]

    def chunks(self, stream_id: str) -> list[ingest_pb2.PcapChunk]:
        """The stream's chunks, each sequence number once, in order."""
        with self._cond:
            msgs = list(self.messages)
        got: dict[int, ingest_pb2.PcapChunk] = {}
        for m in msgs:
            for c in self._chunks_of(m):
                if c.stream_id == stream_id:
                    got.setdefault(c.seq, c)
        return [got[s] for s in sorted(got)]

    def final_event(self, capture_id: str, pod_uid: str, timeout: float = 30) -> ingest_pb2.PodCaptureEvent:
        m = self.wait_for(lambda m: m.WhichOneof("kind") == "pod_event" and m.pod_event.capture_id == capture_id
                          and m.pod_event.pod_uid == pod_uid and m.pod_event.state in (3, 4), timeout,
                          f"terminal event of {capture_id}")
        return m.pod_event

    def started_format(self, capture_id: str, pod_uid: str) -> FileFormat:
        m = self.wait_for(lambda m: m.WhichOneof("kind") == "pod_event" and m.pod_event.capture_id == capture_id
                          and m.pod_event.pod_uid == pod_uid and m.pod_event.started, 5, "started event")
        f = m.pod_event.format
        return FileFormat(f.linktype, f.snaplen, f.nanosecond)
