"""A message the collector will never take cannot wedge the agent's session (issue 21).

Against a scripted Ingest servicer on 127.0.0.1 whose gRPC receive limit is small: when the collector declares
its limit (``Registered.max_message_bytes``) every chunk is cut below it, whatever arrives; when it does not (an
older collector) and a chunk is refused by its transport (RESOURCE_EXHAUSTED, "larger than max"), the agent learns
the limit, sends that chunk as a gap counted ``rejected`` — never the chunk again — and the stream goes on: every
packet is stored or counted."""

from __future__ import annotations

import time

import pytest

from podcap.agent.session import AgentSession
from podcap.v1 import ingest_pb2
from tests.unit.agent.fake_handles import FakeHandle, FakeHandles, packet_numbers
from tests.unit.agent.scripted_ingest import CID, POD, ScriptedIngest, Session, registered

LIMIT = 256 << 10


@pytest.fixture
def ingest_options() -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", LIMIT)]


@pytest.fixture
def ingest_auto_ack() -> bool:
    return True


def burst(servicer: ScriptedIngest, handles: FakeHandles,
          reply: ingest_pb2.Registered) -> tuple[Session, FakeHandle]:
    """The agent's first session answered with ``reply`` and given a capture of ``POD``, then 20000 packets
    (~1.5 MB) in one go, once the limit (declared or not) is in force."""
    first = servicer.next_session()
    registered(first)
    first.send(registered=reply)
    first.send(start=ingest_pb2.StartPodCapture(capture_id=CID, pod=POD.to_proto(), pods_on_node=1))
    handle = handles.wait("veth-web0")
    time.sleep(0.3)
    handle.arrive(20000)
    return first, handle


def stored_and_rejected(sessions: list[Session]) -> tuple[list[int], int, int]:
    """Packet numbers stored (chunks with records, deduplicated by (stream, seq)), packets counted rejected in
    gaps, and the largest message received."""
    seen: dict[tuple[str, int], ingest_pb2.PcapChunk] = {}
    largest = 0
    for s in sessions:
        for m in s.received:
            largest = max(largest, m.ByteSize())
        for c in s.chunks():
            seen.setdefault((c.stream_id, c.seq), c)
    numbers = [n for _, c in sorted(seen.items()) for n in packet_numbers(c.records)]
    return numbers, sum(c.lost.rejected for c in seen.values()), largest


def test_chunks_are_cut_below_the_limit_the_collector_declares(
    collector: tuple[ScriptedIngest, int], agent: tuple[AgentSession, FakeHandles]
) -> None:
    servicer, _ = collector
    _session, handles = agent
    first, _handle = burst(servicer, handles, ingest_pb2.Registered(session_id="s1", max_message_bytes=LIMIT))
    first.wait(lambda _r: sum(c.packets for c in first.chunks()) == 20000, timeout=20)
    numbers, rejected, largest = stored_and_rejected([first])
    assert numbers == list(range(1, 20001)) and rejected == 0
    assert largest <= LIMIT and len(first.chunks()) >= 6
    assert servicer.sessions.empty()  # one session throughout


def test_a_chunk_refused_by_the_transport_becomes_a_counted_gap_and_the_stream_goes_on(
    collector: tuple[ScriptedIngest, int], agent: tuple[AgentSession, FakeHandles]
) -> None:
    servicer, _ = collector
    session, handles = agent
    # An older collector (no declared limit): the 1.5 MB chunk ends the session at the collector's transport.
    first, handle = burst(servicer, handles, ingest_pb2.Registered(session_id="s1"))
    sessions = [first]
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "the stream never got going again"
        try:
            nxt = servicer.next_session(timeout=0.5)
        except Exception:
            nxt = None
        if nxt is not None:
            registered(nxt)
            nxt.send(registered=ingest_pb2.Registered(session_id=f"s{len(sessions) + 1}"))
            sessions.append(nxt)
        numbers, rejected, _ = stored_and_rejected(sessions)
        if len(numbers) + rejected == 20000:
            break
    assert len(sessions) <= 3, "the refused chunk was sent again"
    handle.arrive(5000)  # later traffic is stored: the session was not wedged
    last = sessions[-1]
    last.wait(lambda _r: stored_and_rejected(sessions)[0][-1:] == [25000], timeout=20)
    numbers, rejected, largest = stored_and_rejected(sessions)
    assert rejected > 0 and len(numbers) + rejected == 25000
    assert numbers == sorted(set(numbers)) and numbers[-5000:] == list(range(20001, 25001))
    assert session.out.max_message == LIMIT  # learnt from the refusal
    assert largest <= LIMIT
