"""The collector's end of an agent session, with a hand-written fake capture manager and gRPC context (no
sockets): it declares its message limit, refuses a chunk over it in-band and goes on, hands the agent's held
reports on, and logs why a session ended and what happens next."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from podcap.collector.agents import AgentConnection, AgentRegistry
from podcap.collector.api.ingest import MAX_MESSAGE_BYTES, RECEIVE_LIMIT_BYTES, IngestServicer
from podcap.collector.api.wire import IncomingChunk
from podcap.collector.captures.chunks import ChunkRejectedError, oversized_reason
from podcap.v1 import common_pb2, ingest_pb2


@dataclass
class FakeCaptures:
    """Stands in for CaptureManager; each call a test cares about is a replaceable callable, and recorded."""

    calls: list[tuple[str, Any]] = field(default_factory=list)

    def on_chunk(self, conn: AgentConnection, chunk: ingest_pb2.PcapChunk,
                 records: memoryview | None = None) -> ingest_pb2.ChunkAck | None:
        self.calls.append(("chunk", chunk.seq))
        return None

    def on_oversized(self, conn: AgentConnection, chunk: ingest_pb2.PcapChunk, size: int,
                     limit: int) -> ingest_pb2.ChunkAck | None:
        self.calls.append(("oversized", chunk.seq))
        raise ChunkRejectedError(oversized_reason(size, limit))

    def on_held(self, conn: AgentConnection, report: Any) -> None:
        self.calls.append(("held", [h.held.packets for h in report]))

    def on_pod_event(self, conn: AgentConnection, ev: ingest_pb2.PodCaptureEvent) -> None:
        self.calls.append(("event", ev.state))


class FakeContext:
    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"

    def add_callback(self, cb: Callable[[], None]) -> bool:
        self.callbacks.append(cb)
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


class Requests:
    """The agent's side of the stream: messages put by the test, then an end (EOF or a cancelled call)."""

    def __init__(self) -> None:
        self._items: list[object] = []
        self._cond = threading.Condition()

    def put(self, item: object) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def __iter__(self) -> Iterator[Any]:
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                item = self._items.pop(0)
            if item is StopIteration:
                return
            if isinstance(item, Exception):
                raise item
            yield item


def register(node: str = "node-1") -> ingest_pb2.AgentMessage:
    return ingest_pb2.AgentMessage(register=ingest_pb2.Register(
        node=node, instance_id="i", held=[ingest_pb2.StreamHeld(capture_id="c", pod_uid="u", stream_id="s")]))


def session(end: object, *messages: object) -> tuple[list[ingest_pb2.CollectorMessage], FakeCaptures]:
    registry = AgentRegistry()
    captures = FakeCaptures()
    servicer = IngestServicer(registry, captures, require_agent_cert=False)  # type: ignore[arg-type]
    requests = Requests()
    requests.put(register())
    for m in messages:
        requests.put(m)
    requests.put(end)
    out = list(servicer.Attach(iter(requests), FakeContext()))  # type: ignore[arg-type]
    return out, captures


def test_the_limit_is_declared_and_a_chunk_over_it_is_refused_in_band(caplog: pytest.LogCaptureFixture) -> None:
    assert RECEIVE_LIMIT_BYTES > MAX_MESSAGE_BYTES  # the transport takes what the servicer refuses in-band
    big = IncomingChunk(ingest_pb2.PcapChunk(capture_id="c", pod_uid="u", stream_id="s", seq=2),
                        memoryview(b""), MAX_MESSAGE_BYTES + 1)
    small = IncomingChunk(ingest_pb2.PcapChunk(capture_id="c", pod_uid="u", stream_id="s", seq=3),
                          memoryview(b""), MAX_MESSAGE_BYTES)
    out, captures = session(StopIteration, big, small)
    assert out[0].registered.max_message_bytes == MAX_MESSAGE_BYTES
    acks = [m.ack for m in out if m.WhichOneof("kind") == "ack"]
    assert len(acks) == 1 and acks[0].rejected and acks[0].seq == 2
    assert acks[0].reason == (f"chunk of {MAX_MESSAGE_BYTES + 1} bytes exceeds the collector's limit of "
                              f"{MAX_MESSAGE_BYTES} bytes")
    assert ("oversized", 2) in captures.calls and ("chunk", 3) in captures.calls  # the session went on


def test_held_reports_come_with_the_registration_and_every_heartbeat() -> None:
    beat = ingest_pb2.AgentMessage(heartbeat=ingest_pb2.Heartbeat(held=[ingest_pb2.StreamHeld(
        capture_id="c", pod_uid="u", stream_id="s", held=common_pb2.HeldData(chunks=1, packets=7))]))
    _, captures = session(StopIteration, beat)
    assert [c for c in captures.calls if c[0] == "held"] == [("held", [0]), ("held", [7])]


@pytest.mark.parametrize("end,why", [
    (StopIteration, "the agent ended the session"),
    (grpc.RpcError(), "the call was cancelled: the agent cancelled it or stopped, the connection broke, or a "
                      f"message was over the collector's receive limit of {RECEIVE_LIMIT_BYTES} bytes"),
    (RuntimeError("bug"), "the collector's session reader failed: RuntimeError: bug"),
])
def test_the_end_of_a_session_is_logged_with_its_cause_and_what_happens_next(
        end: object, why: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="podcap.collector"):
        session(end)
    line = next(r.getMessage() for r in caplog.records if "disconnected" in r.getMessage())
    assert line.startswith("agent for node node-1 disconnected (session ")
    assert why in line and line.endswith("its 0 pods stay known for 30 s, captures wait for it")
