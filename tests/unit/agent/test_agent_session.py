"""The agent's collector session against an in-process Ingest servicer (gRPC on 127.0.0.1, fake capture handles,
no root): registration with the inventory, a start command opening a handle, the stream's STARTED event before its
first chunk, acknowledgements releasing chunks, a broken session re-sending every unacknowledged chunk behind its
stream's STARTED event, and a graceful shutdown ending with the stream's final counters (PENDING: the capture
outlives the agent).

The first test's servicer is a scripted stand-in: it acknowledges only when told, so the test decides which chunks
are unacknowledged when a session breaks. The second runs the session against the collector itself, in process."""

from __future__ import annotations

import time

from podcap.agent.session import AgentSession
from podcap.v1 import common_pb2, ingest_pb2
from tests.unit.agent.fake_handles import FakeHandles, packet_numbers
from tests.unit.agent.scripted_ingest import CID, NODE, POD, ScriptedIngest, agent_session, registered

CAPTURING = common_pb2.POD_CAPTURE_STATE_CAPTURING


def test_register_upload_ack_reconnect_and_shutdown(
    collector: tuple[ScriptedIngest, int], agent: tuple[AgentSession, FakeHandles]
) -> None:
    servicer, _ = collector
    session, handles = agent
    first = servicer.next_session()
    reg = registered(first)
    assert (reg.node, reg.pod_source, reg.instance_id) == (NODE, "fake", session.instance_id)
    assert list(reg.pods) == [POD.to_proto()]
    first.send(registered=ingest_pb2.Registered(session_id="s1"))
    first.send(start=ingest_pb2.StartPodCapture(capture_id=CID, pod=POD.to_proto(), pods_on_node=1))
    handle = handles.wait("veth-web0")
    handle.arrive(5)
    first.wait(lambda _r: len(first.chunks()) == 1)
    assert session.connected
    started = [e for e in first.events() if e.started and e.state == CAPTURING and e.HasField("format")]
    assert len(started) == 1 and started[0].stream_id and started[0].interface == "veth-web0"
    chunk = first.chunks()[0]
    assert (chunk.capture_id, chunk.pod_uid, chunk.stream_id, chunk.seq) == (CID, POD.uid, started[0].stream_id, 1)
    assert packet_numbers(chunk.records) == [1, 2, 3, 4, 5]
    # The started event went before the chunk.
    kinds = [m.WhichOneof("kind") for m in first.received]
    assert kinds.index("pod_event") < kinds.index("chunk")

    # The collector goes away before acknowledging: the next session re-sends the stream's start and the chunk.
    handle.arrive(3)
    first.wait(lambda _r: len(first.chunks()) == 2)
    first.send(ack=ingest_pb2.ChunkAck(capture_id=CID, pod_uid=POD.uid, stream_id=chunk.stream_id, seq=1))
    deadline = time.monotonic() + 5
    while session.out.pending()[0] != 1:  # chunk 1 released, chunk 2 still held
        assert time.monotonic() < deadline, session.out.pending()
        time.sleep(0.01)
    first.out.put(None)  # the collector ends the session
    servicer.auto_ack = True
    second = servicer.next_session()
    registered(second)
    second.send(registered=ingest_pb2.Registered(session_id="s2"))
    second.wait(lambda _r: len(second.chunks()) == 1)
    again = second.chunks()[0]
    assert (again.stream_id, again.seq) == (chunk.stream_id, 2)
    assert packet_numbers(again.records) == [6, 7, 8]
    resent = [m.WhichOneof("kind") for m in second.received]
    assert resent[:3] == ["register", "pod_event", "chunk"]
    assert second.events()[0] == started[0]  # the stream's STARTED event, as first sent
    deadline = time.monotonic() + 5
    while session.out.pending() != (0, 0):
        assert time.monotonic() < deadline, session.out.pending()
        time.sleep(0.01)

    # Graceful stop: the last packets are flushed, then the stream's final counters. The stream ends PENDING, not
    # DONE: the agent going away does not end the capture (the node's next agent re-attaches the pod).
    handle.arrive(2)
    session.shutdown()
    assert not [e for e in second.events() if e.state == common_pb2.POD_CAPTURE_STATE_DONE]
    final = [e for e in second.events() if e.state == common_pb2.POD_CAPTURE_STATE_PENDING]
    assert len(final) == 1 and final[0].delivered == 10 and final[0].kernel.received == 10
    assert "next agent" in final[0].message
    assert [n for c in second.chunks() for n in packet_numbers(c.records)] == [6, 7, 8, 9, 10]
    assert handle.frozen


def test_a_session_against_the_real_collector_in_process_stores_every_packet(tmp_path: str) -> None:
    """The same session against the collector itself (its servicers and capture manager on 127.0.0.1, a data dir
    under tmp): a capture started for the agent's pod is stored, acknowledged and ended, and the stored file holds
    exactly the packets the fake handle delivered, in order."""
    import os

    from podcap.collector.server import start_collector
    from podcap.collector.storage.local import list_segments
    from podcap.formats.pcap import read_file
    from podcap.v1 import control_pb2

    umask = os.umask(0o022)
    os.umask(umask)
    collector = start_collector("127.0.0.1:0", str(tmp_path), max_workers=8)
    try:
        with agent_session(collector.port) as (session, handles):
            deadline = time.monotonic() + 10
            while collector.registry.get(NODE) is None:
                assert time.monotonic() < deadline, "the agent never registered"
                time.sleep(0.02)
            cap = collector.captures.start(control_pb2.StartCaptureRequest(
                target=control_pb2.Target(namespace="shop", pod_names=["web-0"])))
            handle = handles.wait("veth-web0")
            for n in (40, 25, 35):
                handle.arrive(n)
                time.sleep(0.05)
            while session.out.pending() != (0, 0) or collector.captures.status(cap).pods[0].packets < 100:
                assert time.monotonic() < deadline + 20, (session.out.pending(), collector.captures.status(cap))
                time.sleep(0.05)
            ended = collector.captures.stop(cap.id)
            status = collector.captures.status(ended)
            assert status.state == control_pb2.CAPTURE_STATE_DONE
            (pod,) = status.pods
            assert (pod.packets, pod.kernel.received, pod.unaccounted) == (100, 100, 0)
            stored = [int.from_bytes(r.data[:4], "big")
                      for seg in list_segments(os.path.join(str(tmp_path), "captures", cap.id, "shop", "web-0"))
                      for r in read_file(seg)[1]]
            assert stored == list(range(1, 101))
    finally:
        collector.stop()
        os.umask(umask)
