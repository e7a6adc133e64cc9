"""A scripted stand-in for the collector's Ingest service (``ScriptedIngest``: every Attach call recorded as a
``Session`` whose replies the test sends, acknowledging chunks only when told or ``auto_ack``) and the fake pod
source the agent sessions under test see, and an agent session on a thread (``agent_session``): what the agent session
tests share (fixtures in conftest.py)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from podcap.agent.capture.settings import EngineSettings
from podcap.agent.pods.source import PodNetwork, PodNotFoundError
from podcap.agent.session import AgentConfig, AgentSession
from podcap.names import CaptureId, NodeName, PodUid
from podcap.pods import PodRef
from podcap.v1 import ingest_pb2, ingest_pb2_grpc
from tests.unit.agent.fake_handles import FakeHandles

NODE = NodeName("node-a")
POD = PodRef("shop", "web-0", PodUid("uid-0"), NODE, {"app": "web"}, ip="10.0.0.5", sandbox_key="k1")
CID = CaptureId("cap-1")


class FakePodSource:
    name = "fake"

    def list_pods(self) -> list[PodRef]:
        return [POD]

    def locate(self, uid: PodUid) -> PodNetwork:
        if uid != POD.uid:
            raise PodNotFoundError(f"no pod {uid}")
        return PodNetwork(netns_path="/nonexistent", host_veth="veth-web0", sandbox_key="k1")


@dataclass
class Session:
    """One Attach call as the servicer saw it."""

    received: list[ingest_pb2.AgentMessage] = field(default_factory=list)
    out: queue.Queue[ingest_pb2.CollectorMessage | None] = field(default_factory=queue.Queue)
    auto_ack: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)

    def send(self, **kind: object) -> None:
        self.out.put(ingest_pb2.CollectorMessage(**kind))  # type: ignore[arg-type]

    def wait(self, what: Callable[[list[ingest_pb2.AgentMessage]], bool], timeout: float = 10.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: what(self.received), timeout), f"not received; got {self.received}"

    def chunks(self) -> list[ingest_pb2.PcapChunk]:
        out = []
        for m in self.received:
            if m.WhichOneof("kind") == "chunk":
                out.append(m.chunk)
            elif m.WhichOneof("kind") == "chunks":
                out.extend(m.chunks.chunks)
        return out

    def events(self) -> list[ingest_pb2.PodCaptureEvent]:
        return [m.pod_event for m in self.received if m.WhichOneof("kind") == "pod_event"]


class ScriptedIngest(ingest_pb2_grpc.IngestServicer):
    def __init__(self) -> None:
        self.sessions: queue.Queue[Session] = queue.Queue()
        self.auto_ack = False

    def Attach(  # noqa: N802 (gRPC method name)
        self, request_iterator: Iterator[ingest_pb2.AgentMessage], context: grpc.ServicerContext
    ) -> Iterator[ingest_pb2.CollectorMessage]:
        session = Session(auto_ack=self.auto_ack)

        def read() -> None:
            try:
                for msg in request_iterator:
                    with session.cond:
                        session.received.append(msg)
                        session.cond.notify_all()
                    if session.auto_ack and msg.WhichOneof("kind") == "chunk":
                        c = msg.chunk
                        session.send(ack=ingest_pb2.ChunkAck(capture_id=c.capture_id, pod_uid=c.pod_uid,
                                                             stream_id=c.stream_id, seq=c.seq))
            except grpc.RpcError:
                pass
            session.out.put(None)

        threading.Thread(target=read, daemon=True).start()
        self.sessions.put(session)
        while (reply := session.out.get()) is not None:
            yield reply

    def next_session(self, timeout: float = 10.0) -> Session:
        return self.sessions.get(timeout=timeout)


def registered(s: Session) -> ingest_pb2.Register:
    s.wait(lambda r: len(r) >= 1)
    first = s.received[0]
    assert first.WhichOneof("kind") == "register"
    return first.register


@contextmanager
def agent_session(port: int) -> Iterator[tuple[AgentSession, FakeHandles]]:
    """An agent session for ``NODE`` (one pod, fake handles) attached to the collector on 127.0.0.1:``port``,
    running on a thread; shut down at the end."""
    handles = FakeHandles()
    cfg = AgentConfig(collector=f"127.0.0.1:{port}", node=NODE, reconnect_min=0.05, reconnect_max=0.1,
                      inventory_interval=0.1, engine=EngineSettings(flush_interval=0.2, min_loop_period=0.0))
    session = AgentSession(cfg, FakePodSource(), handles=handles)
    runner = threading.Thread(target=session.run, daemon=True)
    runner.start()
    try:
        yield session, handles
    finally:
        if runner.is_alive():
            session.shutdown()
            runner.join(timeout=20)
