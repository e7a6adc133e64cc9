"""What agents hold unacknowledged (their reports at registration and with every heartbeat), when a pod's counters
are final, and chunks refused in-band (too large for the collector): status says what is on its way, never claims
exact counters it has not had, and counts every refused packet once."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from podcap.collector.agents import AgentConnection, AgentRegistry
from podcap.collector.captures import table
from podcap.collector.captures.chunks import ChunkRejectedError
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.storage.catalog import CaptureStore
from podcap.collector.storage.local import LocalStorage
from podcap.drops import total_of
from podcap.names import NodeName
from podcap.v1 import common_pb2, control_pb2, ingest_pb2
from tests.unit.collector.captures.test_capture_manager import NODE, PODS, acked, chunk, records, start, stored

LIMIT = 16 << 20


@pytest.fixture
def env(tmp_path: str) -> Iterator[tuple[CaptureManager, AgentRegistry, AgentConnection, str]]:
    registry = AgentRegistry()
    conn = AgentConnection(node=NODE, instance_id="inst", version="t", pod_source="netns", pods=list(PODS))
    registry.register(conn)
    store = CaptureStore(os.path.join(tmp_path, "db"))
    mgr = CaptureManager(LocalStorage(str(tmp_path)), registry, store)
    yield mgr, registry, conn, str(tmp_path)
    mgr.close()
    store.close()


def held(uid: str, chunks: int, nbytes: int, packets: int, *, cid: str, stream: str = "") -> ingest_pb2.StreamHeld:
    return ingest_pb2.StreamHeld(capture_id=cid, pod_uid=uid, stream_id=stream or f"s-{uid}",
                                 held=common_pb2.HeldData(chunks=chunks, bytes=nbytes, packets=packets))


def final_report(mgr: CaptureManager, conn: AgentConnection, cid: str, uid: str, *, last_seq: int,
                 received: int, **drops: int) -> None:
    mgr.on_pod_event(conn, ingest_pb2.PodCaptureEvent(
        capture_id=cid, pod_uid=uid, stream_id=f"s-{uid}", state=common_pb2.POD_CAPTURE_STATE_DONE,
        last_seq=last_seq, kernel=common_pb2.KernelStats(received=received), delivered=received,
        drops=common_pb2.PodcapDrops(**drops)))


def pod(mgr: CaptureManager, cid: str, uid: str) -> control_pb2.PodStatus:
    return next(p for p in mgr.status(mgr.get(cid)).pods if p.pod.uid == uid)


def test_held_data_per_pod_follows_the_agents_reports_and_is_kept_while_it_is_away(
        env: tuple[CaptureManager, AgentRegistry, AgentConnection, str]) -> None:
    mgr, registry, conn, _ = env
    cid = start(mgr, conn)
    mgr.on_held(conn, [held("uid-0", 2, 2 << 20, 1500, cid=cid), held("uid-0", 1, 100, 10, cid=cid, stream="other"),
                       held("uid-1", 5, 5 << 20, 4000, cid=cid)])
    p0, p1 = pod(mgr, cid, "uid-0"), pod(mgr, cid, "uid-1")
    assert (p0.held.chunks, p0.held.bytes, p0.held.packets) == (3, (2 << 20) + 100, 1510)  # summed over streams
    assert p1.held.packets == 4000 and not p0.final and p0.agent == "connected"
    # A report is complete: what it omits holds nothing.
    mgr.on_held(conn, [held("uid-1", 1, 1 << 20, 800, cid=cid)])
    assert pod(mgr, cid, "uid-0").held.chunks == 0 and pod(mgr, cid, "uid-1").held.packets == 800
    # The agent goes away: the last report stands (the last thing known), and status says where the agent is.
    registry.unregister(conn, "the call was cancelled")
    p1 = pod(mgr, cid, "uid-1")
    assert p1.held.packets == 800 and p1.state == common_pb2.POD_CAPTURE_STATE_NO_AGENT
    assert p1.agent.startswith("disconnected 0s ago: the call was cancelled")
    # It comes back and its registration says it holds nothing any more.
    back = AgentConnection(node=NODE, instance_id="inst", version="t", pod_source="netns", pods=list(PODS))
    registry.register(back)
    mgr.on_held(back, [])
    assert pod(mgr, cid, "uid-1").held.chunks == 0 and pod(mgr, cid, "uid-1").agent == "connected"


def test_a_pod_is_final_only_once_its_final_report_came_everything_arrived_and_nothing_is_held(
        env: tuple[CaptureManager, AgentRegistry, AgentConnection, str]) -> None:
    mgr, _, conn, _ = env
    cid = start(mgr, conn)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 3), 3))
    assert not pod(mgr, cid, "uid-0").final  # capturing
    mgr.on_held(conn, [held("uid-0", 1, 76, 1, cid=cid)])
    final_report(mgr, conn, cid, "uid-0", last_seq=2, received=4)
    p = pod(mgr, cid, "uid-0")
    assert p.state == common_pb2.POD_CAPTURE_STATE_DONE and not p.final  # chunk 2 announced, not arrived, held
    assert p.held.chunks == 1
    mgr.on_chunk(conn, chunk(cid, "uid-0", 2, records(3, 1), 1))
    p = pod(mgr, cid, "uid-0")
    # Everything the final report announced is written: what the agent still says it holds waits only for its
    # acknowledgement, not on its way.
    assert p.final and p.held.chunks == 0 and p.unaccounted == 0
    mgr.on_held(conn, [held("uid-0", 1, 76, 1, cid=cid)])  # a report that crossed the acknowledgement
    assert pod(mgr, cid, "uid-0").final


def test_a_pod_the_collector_gave_up_on_is_not_final_and_what_its_agent_held_counts_as_lost(
        env: tuple[CaptureManager, AgentRegistry, AgentConnection, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21: the agent held ~180 MB it could not deliver when the capture's grace ran out. Not '0 packets, all
    accounted for': the pod is not final, and at least what the agent held is lost with it."""
    monkeypatch.setattr(table, "STOP_GRACE_S", 0.3)
    mgr, registry, conn, data = env
    cid = start(mgr, conn)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 5), 5))
    # The last counters the agent managed to report are older than its last word on what it held.
    mgr.on_pod_event(conn, ingest_pb2.PodCaptureEvent(
        capture_id=cid, pod_uid="uid-0", stream_id="s-uid-0", state=common_pb2.POD_CAPTURE_STATE_CAPTURING,
        kernel=common_pb2.KernelStats(received=5), delivered=5))
    mgr.on_held(conn, [held("uid-0", 9, 55 << 20, 38000, cid=cid)])
    registry.unregister(conn, "the call was cancelled")
    cap = mgr.stop(cid, wait=5)
    assert cap.state == control_pb2.CAPTURE_STATE_DONE
    p = pod(mgr, cid, "uid-0")
    assert not p.final and p.drops.lost_with_agent == 38000 and p.unaccounted == 0
    assert p.kernel.received == 5 + 38000 and p.held.chunks == 0  # lost, no longer "on its way"
    p1 = pod(mgr, cid, "uid-1")  # never delivered anything and never reported its end
    assert not p1.final and p1.kernel.received == 0
    # What the agent held is recorded with the stream: the same after a restart.
    mgr.close()
    again = CaptureManager(LocalStorage(data), AgentRegistry(), mgr.store)
    try:
        p = again.status(again.get(cid)).pods[0]
        assert not p.final and p.drops.lost_with_agent == 38000 and p.unaccounted == 0
    finally:
        again.close()


def test_a_pod_whose_agent_reported_its_failure_without_a_stream_is_final(
        env: tuple[CaptureManager, AgentRegistry, AgentConnection, str]) -> None:
    mgr, _, conn, _ = env
    cap = mgr.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="shop",
                                                                              pod_names=["web-0"])))
    mgr.on_pod_event(conn, ingest_pb2.PodCaptureEvent(capture_id=cap.id, pod_uid="uid-0",
                                                      state=common_pb2.POD_CAPTURE_STATE_FAILED,
                                                      message="no network namespace for the pod"))
    p = pod(mgr, cap.id, "uid-0")
    assert p.state == common_pb2.POD_CAPTURE_STATE_FAILED and p.final


def test_an_oversized_chunk_is_refused_counted_once_and_the_stream_goes_on(
        env: tuple[CaptureManager, AgentRegistry, AgentConnection, str]) -> None:
    """The agent drops a chunk the collector refuses and sends nothing in its place: the collector counts it, and
    a copy that comes again (from an agent that did send something in its place) is a duplicate, not a second
    loss."""
    mgr, _, conn, data = env
    cid = start(mgr, conn)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 2), 2))
    big = chunk(cid, "uid-0", 2, b"", 900)
    big.lost.buffer_full = 4  # losses it carried are counted with it
    with pytest.raises(ChunkRejectedError, match=rf"^chunk of {LIMIT + 5} bytes exceeds the collector's limit of "
                                                 rf"{LIMIT} bytes$"):
        mgr.on_oversized(conn, big, LIMIT + 5, LIMIT)
    p = pod(mgr, cid, "uid-0")
    assert (p.drops.rejected, p.drops.buffer_full) == (900, 4)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 3, records(2, 2), 2))  # the stream goes on
    assert acked(mgr, conn, cid) == {"uid-0": 3}
    gap = chunk(cid, "uid-0", 2, b"", 0)
    gap.lost.rejected = 900
    again = mgr.on_chunk(conn, gap)
    assert again is not None and again.seq == 3 and not again.rejected  # a duplicate: acknowledged, not counted
    final_report(mgr, conn, cid, "uid-0", last_seq=3, received=4 + 900 + 4, buffer_full=4, rejected=900)
    p = pod(mgr, cid, "uid-0")
    assert (p.drops.rejected, p.packets, p.unaccounted) == (900, 4, 0) and p.final
    assert stored(mgr, data, cid, "web-0") == [0, 1, 2, 3]


def test_a_malformed_chunk_a_refused_one_and_an_agents_gap_are_counted_each_once(
        env: tuple[CaptureManager, AgentRegistry, AgentConnection, str]) -> None:
    """`rejected` comes from three places: a malformed chunk (the collector counts it and acknowledges it), a chunk
    over the collector's limit (the collector counts it and refuses it), a chunk the agent found too large itself
    (a gap counting it). Each once."""
    mgr, _, conn, _ = env
    cid = start(mgr, conn)
    mgr.on_chunk(conn, chunk(cid, "uid-1", 1, records(0, 3)[:-1], 3))  # malformed: 3
    with pytest.raises(ChunkRejectedError):
        mgr.on_oversized(conn, chunk(cid, "uid-1", 2, b"", 7), LIMIT + 1, LIMIT)  # refused: 7
    gap = chunk(cid, "uid-1", 3, b"", 0)
    gap.lost.rejected = 5  # the agent's own: 5
    gap.lost.buffer_full = 2
    mgr.on_chunk(conn, gap)
    p = pod(mgr, cid, "uid-1")
    assert (p.drops.rejected, p.drops.buffer_full, total_of(p.drops)) == (15, 2, 17)
    assert acked(mgr, conn, cid) == {"uid-1": 3}


def test_an_oversized_copy_of_a_chunk_already_stored_is_not_refused(
        env: tuple[CaptureManager, AgentRegistry, AgentConnection, str]) -> None:
    """Refusing it would bring a gap counting packets that are stored."""
    mgr, _, conn, _ = env
    cid = start(mgr, conn)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 2), 2))
    acked(mgr, conn, cid)
    ack = mgr.on_oversized(conn, chunk(cid, "uid-0", 1, b"", 2), LIMIT + 1, LIMIT)
    assert ack is not None and ack.seq == 1 and not ack.rejected
    assert pod(mgr, cid, "uid-0").drops.rejected == 0


def test_held_reports_name_only_the_agents_own_pods(
        env: tuple[CaptureManager, AgentRegistry, AgentConnection, str]) -> None:
    mgr, registry, conn, _ = env
    cid = start(mgr, conn)
    other = AgentConnection(node=NodeName("node-b"), instance_id="x", version="t", pod_source="netns", pods=[])
    registry.register(other)
    mgr.on_held(other, [held("uid-0", 1, 1, 1, cid=cid), held("uid-9", 1, 1, 1, cid=cid),
                        held("uid-0", 1, 1, 1, cid="nosuchcapture")])
    assert pod(mgr, cid, "uid-0").held.chunks == 0
