"""The flight recorder through the agent's session (no root: fake capture handles, a stand-in Ingest server on
loopback, rings in a temporary directory): a recording's packets go to the ring, never to the collector, and its
counters travel in heartbeats; a save of a past window brings back exactly its packets as a capture stream whose
final event accounts for the kernel's drops charged to the window's segment; a save of a pod without a ring fails
with the reason; a stop with delete_ring removes the ring's files."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from podcap.agent.capture.settings import EngineSettings
from podcap.agent.session import AgentConfig, AgentSession
from podcap.v1 import common_pb2, ingest_pb2
from tests.ingest_standin import IngestStandIn
from tests.unit.agent.fake_handles import FakeHandles, packet_numbers
from tests.unit.agent.scripted_ingest import NODE, POD, FakePodSource

REC = "rec-1"
T0 = 1_700_000_000 * 1_000_000_000  # the fake handle's packets: this second, nanosecond = packet number


@pytest.fixture
def standin() -> Iterator[IngestStandIn]:
    with IngestStandIn() as s:
        yield s


@pytest.fixture
def agent(standin: IngestStandIn, tmp_path: Path) -> Iterator[tuple[AgentSession, FakeHandles]]:
    handles = FakeHandles()
    cfg = AgentConfig(collector=standin.address, node=NODE, reconnect_min=0.05, reconnect_max=0.1,
                      inventory_interval=0.1, heartbeat_interval=0.3,
                      engine=EngineSettings(flush_interval=0.2, min_loop_period=0.0, stats_interval=0.2),
                      ring_dir=str(tmp_path / "rings"), ring_min_free_bytes=0)
    session = AgentSession(cfg, FakePodSource(), handles=handles)
    runner = threading.Thread(target=session.run, daemon=True)
    runner.start()
    yield session, handles
    session.shutdown()
    runner.join(timeout=20)


def ring_of(m: ingest_pb2.AgentMessage) -> ingest_pb2.RingStatus | None:
    if m.WhichOneof("kind") != "heartbeat":
        return None
    return next((r for r in m.heartbeat.rings if r.pod_uid == POD.uid), None)


def test_recording_to_ring_then_save(standin: IngestStandIn, agent: tuple[AgentSession, FakeHandles],
                                     tmp_path: Path) -> None:
    _session, handles = agent
    standin.wait_registered()
    standin.send(ingest_pb2.CollectorMessage(start_recording=ingest_pb2.StartPodRecording(
        recorder_id=REC, pod=POD.to_proto(), keep=ingest_pb2.RingLimits(max_bytes=1 << 20))))
    handle = handles.wait("veth-web0")
    handle.arrive(8)
    handle.drop(2)  # the kernel dropped two while the ring's segment was the newest
    hb = standin.wait_for(lambda m: (r := ring_of(m)) is not None and r.packets == 8 and r.kernel.dropped == 2,
                          what="heartbeat with the ring's 8 packets and 2 kernel drops")
    ring = ring_of(hb)
    assert ring is not None and ring.state == ingest_pb2.RING_STATE_RECORDING and ring.recorder_id == REC
    assert (ring.oldest_unix_ns, ring.newest_unix_ns, ring.written) == (T0 + 1, T0 + 8, 8)
    assert not standin.all("chunk") and not standin.all("chunks"), "a recording's packets stay on the node"
    assert not [m for m in standin.all("pod_event") if m.pod_event.capture_id == REC]

    # Save packets 3..6 of the past window.
    standin.send(ingest_pb2.CollectorMessage(save=ingest_pb2.SavePodWindow(
        recorder_id=REC, pod_uid=POD.uid, capture_id="save-1", from_unix_ns=T0 + 3, to_unix_ns=T0 + 7)))
    final = standin.final_event("save-1", POD.uid)
    assert final.state == common_pb2.POD_CAPTURE_STATE_DONE, final.message
    chunks = standin.chunks(final.stream_id)
    assert final.stream_id == f"save-save-1-{POD.uid}"
    assert [n for c in chunks for n in packet_numbers(c.records)] == [3, 4, 5, 6]
    # The segment's kernel drops are charged to any window that meets it: received = stored + dropped.
    assert (final.kernel.received, final.kernel.dropped, final.last_seq) == (6, 2, len(chunks))
    started = standin.started_format("save-1", POD.uid)
    assert started.linktype == 1

    # No ring for this pod under another recorder: a one-line reason.
    standin.send(ingest_pb2.CollectorMessage(save=ingest_pb2.SavePodWindow(
        recorder_id="rec-other", pod_uid=POD.uid, capture_id="save-2", from_unix_ns=T0, to_unix_ns=T0 + 9)))
    failed = standin.final_event("save-2", POD.uid)
    assert failed.state == common_pb2.POD_CAPTURE_STATE_FAILED
    assert failed.message == f"no ring of recorder rec-other for pod {POD.uid} on node {NODE}"

    # Stop with delete_ring: the handle closes, the ring's files go, heartbeats stop listing it.
    ring_path = tmp_path / "rings" / REC / POD.uid
    assert any(name.endswith(".pcap") for name in os.listdir(ring_path))
    standin.send(ingest_pb2.CollectorMessage(stop_recording=ingest_pb2.StopPodRecording(
        recorder_id=REC, delete_ring=True, reason="recorder stopped")))
    count = len(standin.all("heartbeat"))
    standin.wait_for(lambda m: m in standin.all("heartbeat")[count:] and ring_of(m) is None, 10,
                     "heartbeat without the ring")
    assert not ring_path.exists()
    assert not handles.opened["veth-web0"].sink, "handle closed"
