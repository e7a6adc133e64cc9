"""The collector's chunk path without sockets: validation, de-duplication, durable acknowledgements, exact limits,
retention, stop, recovery after a crash, and the accounting of every packet (gaps are data: nothing about one
chunk stops its stream)."""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from podcap.collector.agents import AgentConnection, AgentRegistry
from podcap.collector.captures.chunks import ChunkRejectedError
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.filters import FilterError
from podcap.collector.storage.base import SegmentInfo
from podcap.collector.storage.catalog import CaptureStore
from podcap.collector.storage.gaps import read_gaps
from podcap.collector.storage.local import LocalPodLocation, LocalStorage, PodWriter, list_segments
from podcap.collector.targets import NoMatchError
from podcap.drops import total_of
from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat, iter_records, read_file
from podcap.names import NodeName, PodUid
from podcap.pods import PodRef
from podcap.v1 import common_pb2, control_pb2, ingest_pb2

NODE = NodeName("node-a")
PODS = [PodRef("shop", f"web-{i}", PodUid(f"uid-{i}"), NODE, {"app": "web"}) for i in range(2)]


def records(start: int, n: int, size: int = 60) -> bytes:
    return b"".join(struct.pack("<IIII", 10, i, size, size) + i.to_bytes(4, "big") * (size // 4)
                    for i in range(start, start + n))


@pytest.fixture
def env(tmp_path: str) -> Iterator[tuple[CaptureManager, AgentConnection, str]]:
    registry = AgentRegistry()
    conn = AgentConnection(node=NODE, instance_id="inst", version="t", pod_source="netns", pods=list(PODS))
    registry.register(conn)
    store = CaptureStore(os.path.join(tmp_path, "db"))
    mgr = CaptureManager(LocalStorage(str(tmp_path)), registry, store)
    yield mgr, conn, str(tmp_path)
    mgr.close()
    store.close()


def sent(conn: AgentConnection) -> list[ingest_pb2.CollectorMessage]:
    return conn.queued()


def start(mgr: CaptureManager, conn: AgentConnection, **limits: int) -> str:
    cap = mgr.start(control_pb2.StartCaptureRequest(
        target=control_pb2.Target(namespace="shop", selector="app=web"), limits=control_pb2.Limits(**limits)))
    starts = [m.start for m in sent(conn) if m.WhichOneof("kind") == "start"]
    assert sorted(s.pod.name for s in starts) == ["web-0", "web-1"]
    assert all(s.pods_on_node == 2 for s in starts)
    for p in PODS:
        mgr.on_pod_event(conn, ingest_pb2.PodCaptureEvent(
            capture_id=cap.id, pod_uid=p.uid, stream_id=f"s-{p.uid}", state=common_pb2.POD_CAPTURE_STATE_CAPTURING,
            format=common_pb2.PcapFormat(linktype=1, snaplen=262144, nanosecond=True), interface="veth-x"))
    return cap.id


def acked(mgr: CaptureManager, conn: AgentConnection, cid: str) -> dict[str, int]:
    """Force a commit and return the highest acknowledged seq per pod uid."""
    mgr.committer.commit(mgr.get(cid))
    out: dict[str, int] = {}
    for m in sent(conn):
        if m.WhichOneof("kind") == "ack" and not m.ack.rejected:
            out[m.ack.pod_uid] = max(out.get(m.ack.pod_uid, 0), m.ack.seq)
    return out


def chunk(cid: str, uid: str, seq: int, data: bytes, n: int) -> ingest_pb2.PcapChunk:
    return ingest_pb2.PcapChunk(capture_id=cid, pod_uid=uid, stream_id=f"s-{uid}", seq=seq, records=data, packets=n)


def publish(mgr: CaptureManager, cid: str) -> None:
    """Make the segment files hold everything appended, as every reader of the collector does first."""
    for ps in mgr.get(cid).pods.values():
        if ps.writer is not None:
            ps.writer.publish()


def stored(mgr: CaptureManager, data_dir: str, cid: str, pod: str) -> list[int]:
    """Records in a pod's segment files."""
    publish(mgr, cid)
    out = []
    for seg in list_segments(os.path.join(data_dir, "captures", cid, "shop", pod)):
        out += [int.from_bytes(r.data[:4], "big") for r in read_file(seg)[1]]
    return out


def test_chunks_stored_once_in_order(env: tuple[CaptureManager, AgentConnection, str]) -> None:
    mgr, conn, data = env
    cid = start(mgr, conn)
    assert mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 5), 5)) is None  # acknowledged once durable
    assert mgr.on_chunk(conn, chunk(cid, "uid-0", 2, records(5, 5), 5)) is None
    assert mgr.on_chunk(conn, chunk(cid, "uid-0", 2, records(5, 5), 5)) is None  # duplicate, not yet durable
    assert acked(mgr, conn, cid) == {"uid-0": 2}
    dup = mgr.on_chunk(conn, chunk(cid, "uid-0", 2, records(5, 5), 5))  # duplicate of something durable
    assert dup is not None and dup.seq == 2
    # A missing chunk (3) never stops the stream: what follows is stored.
    assert mgr.on_chunk(conn, chunk(cid, "uid-0", 4, records(10, 5), 5)) is None
    assert mgr.on_chunk(conn, chunk(cid, "uid-0", 5, records(15, 5), 5)) is None
    assert acked(mgr, conn, cid) == {"uid-0": 5}
    assert stored(mgr, data, cid, "web-0") == list(range(20))
    assert mgr.get(cid).status().pods[0].packets == 20


@pytest.mark.parametrize(
    "bad",
    [
        records(0, 3)[:-1],  # truncated
        records(0, 3) + b"\x00" * 5,  # trailing garbage
    ],
)
def test_malformed_chunk_is_counted_and_the_stream_goes_on(env: tuple[CaptureManager, AgentConnection, str],
                                                           bad: bytes) -> None:
    mgr, conn, data = env
    cid = start(mgr, conn)
    mgr.on_chunk(conn, chunk(cid, "uid-1", 1, records(0, 2), 2))
    assert mgr.on_chunk(conn, chunk(cid, "uid-1", 2, bad, 3)) is None  # not stored, acknowledged, counted
    mgr.on_chunk(conn, chunk(cid, "uid-1", 3, records(2, 2), 2))
    assert acked(mgr, conn, cid) == {"uid-1": 3}
    assert stored(mgr, data, cid, "web-1") == [0, 1, 2, 3]
    pod = mgr.get(cid).status().pods[1]
    assert pod.drops.rejected == 3 and pod.packets == 4


def test_chunk_from_another_node_or_capture_rejected(env: tuple[CaptureManager, AgentConnection, str]) -> None:
    mgr, conn, _ = env
    cid = start(mgr, conn)
    other = AgentConnection(node=NodeName("node-b"), instance_id="x", version="t", pod_source="netns", pods=[])
    with pytest.raises(ChunkRejectedError):
        mgr.on_chunk(other, chunk(cid, "uid-0", 1, records(0, 1), 1))
    with pytest.raises(ChunkRejectedError):
        mgr.on_chunk(conn, chunk("nosuchcapture", "uid-0", 1, records(0, 1), 1))
    with pytest.raises(ChunkRejectedError):  # a stream that never started: refused, and counted for the pod
        mgr.on_chunk(conn, ingest_pb2.PcapChunk(capture_id=cid, pod_uid="uid-0", stream_id="old", seq=1,
                                                records=records(0, 1), packets=1))
    assert mgr.get(cid).status().pods[0].drops.rejected == 1


def test_max_packets_is_exact_across_pods(env: tuple[CaptureManager, AgentConnection, str]) -> None:
    mgr, conn, data = env
    cid = start(mgr, conn, max_packets=7)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 4), 4))
    mgr.on_chunk(conn, chunk(cid, "uid-1", 1, records(100, 4), 4))
    mgr.on_chunk(conn, chunk(cid, "uid-0", 2, records(4, 4), 4))
    assert stored(mgr, data, cid, "web-0") + stored(mgr, data, cid, "web-1") == [0, 1, 2, 3, 100, 101, 102]
    cap = mgr.get(cid)
    cap.ended.wait(0.5)
    assert cap.status().packets == 7
    assert any(m.WhichOneof("kind") == "stop" for m in sent(conn))


@pytest.mark.parametrize("max_bytes", [24 + 76 * 3, 24 + 76 * 3 + 75, 2 * 24 + 76 * 5])
def test_max_bytes_never_exceeded(env: tuple[CaptureManager, AgentConnection, str], max_bytes: int) -> None:
    mgr, conn, data = env
    cid = start(mgr, conn, max_bytes=max_bytes)
    for seq in range(1, 4):
        mgr.on_chunk(conn, chunk(cid, "uid-0", seq, records(seq * 10, 2), 2))
        mgr.on_chunk(conn, chunk(cid, "uid-1", seq, records(seq * 10, 2), 2))
    publish(mgr, cid)
    total = sum(os.path.getsize(s) for p in ("web-0", "web-1")
                for s in list_segments(os.path.join(data, "captures", cid, "shop", p)))
    assert total <= max_bytes
    assert total + 24 + 76 > max_bytes  # used up to the last whole record (another pod needs a header too)
    assert mgr.get(cid).status().bytes == total


def test_unknown_pod_names_the_pods_that_exist(env: tuple[CaptureManager, AgentConnection, str]) -> None:
    mgr, _, _ = env
    with pytest.raises(NoMatchError, match="web-0, web-1"):
        mgr.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="shop", pod_names=["nope"])))
    with pytest.raises(NoMatchError, match="shop"):
        mgr.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="other")))
    assert mgr.all() == []


def test_bad_filter_starts_nothing(env: tuple[CaptureManager, AgentConnection, str]) -> None:
    mgr, conn, _ = env
    with pytest.raises(FilterError, match="filter"):
        mgr.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="shop"),
                                                  settings=common_pb2.CaptureSettings(filter="tcp port eighty")))
    assert mgr.all() == [] and sent(conn) == []


def test_stop_waits_for_final_reports_and_persists(env: tuple[CaptureManager, AgentConnection, str]) -> None:
    mgr, conn, data = env
    cid = start(mgr, conn)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 3), 3))
    import threading

    def agent_reports() -> None:
        for p in PODS:
            mgr.on_pod_event(conn, ingest_pb2.PodCaptureEvent(
                capture_id=cid, pod_uid=p.uid, stream_id=f"s-{p.uid}", state=common_pb2.POD_CAPTURE_STATE_DONE,
                kernel=common_pb2.KernelStats(received=3, dropped=1), message="stopped by collector"))

    threading.Timer(0.2, agent_reports).start()
    cap = mgr.stop(cid, wait=5)
    st = cap.status()
    assert st.state == control_pb2.CAPTURE_STATE_DONE and st.end_reason == "stopped by user"
    assert [p.kernel.dropped for p in st.pods] == [1, 1]
    # A new manager on the same data dir sees the same capture.
    mgr.close()
    again = CaptureManager(LocalStorage(data), AgentRegistry(), mgr.store)
    try:
        st2 = again.get(cid).status()
        assert st2.state == control_pb2.CAPTURE_STATE_DONE and st2.packets == 3
    finally:
        again.close()


def test_crash_recovery_cuts_unacknowledged_bytes_and_accepts_the_resend(
        env: tuple[CaptureManager, AgentConnection, str]) -> None:
    mgr, conn, data = env
    cid = start(mgr, conn)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 4), 4))
    assert acked(mgr, conn, cid) == {"uid-0": 1}
    # The process dies before its next commit: stopped here, the committer's loop cannot commit chunk 2 in the
    # moment before the "crash" (it did once on a loaded machine, every 50 ms it may).
    mgr.committer.stop()
    mgr.on_chunk(conn, chunk(cid, "uid-0", 2, records(4, 4), 4))  # written, never committed
    seg = list_segments(os.path.join(data, "captures", cid, "shop", "web-0"))[0]
    with open(seg, "ab") as f:
        f.write(records(8, 1)[:30])  # and a torn record, as a crash mid-write leaves it
    # "SIGKILL": a new manager on the same data dir, without closing the old one.
    registry = AgentRegistry()
    again = CaptureManager(LocalStorage(data), registry, mgr.store)
    try:
        assert stored(again, data, cid, "web-0") == [0, 1, 2, 3]
        assert again.get(cid).status().pods[0].state == common_pb2.POD_CAPTURE_STATE_NO_AGENT
        conn2 = AgentConnection(node=NODE, instance_id="inst2", version="t", pod_source="netns", pods=list(PODS))
        registry.register(conn2)  # the agent reconnects: the capture is sent to it again
        assert again.get(cid).status().pods[0].state == common_pb2.POD_CAPTURE_STATE_PENDING
        assert [m.start.capture_id for m in sent(conn2) if m.WhichOneof("kind") == "start"] == [cid, cid]
        # The agent re-sends its STARTED event (same stream) and everything unacknowledged.
        again.on_pod_event(conn2, ingest_pb2.PodCaptureEvent(
            capture_id=cid, pod_uid="uid-0", stream_id="s-uid-0", state=common_pb2.POD_CAPTURE_STATE_CAPTURING,
            format=common_pb2.PcapFormat(linktype=1, snaplen=262144, nanosecond=True)))
        dup = again.on_chunk(conn2, chunk(cid, "uid-0", 1, records(0, 4), 4))
        assert dup is not None and dup.seq == 1
        again.on_chunk(conn2, chunk(cid, "uid-0", 2, records(4, 4), 4))
        again.on_chunk(conn2, chunk(cid, "uid-0", 3, records(8, 4), 4))
        assert acked(again, conn2, cid)["uid-0"] == 3
        assert stored(again, data, cid, "web-0") == list(range(12))
        assert again.get(cid).status().pods[0].reattachments == 0
    finally:
        again.close()


def test_a_segment_missing_from_the_middle_is_said_at_a_restart_and_skipped_by_reads(
        env: tuple[CaptureManager, AgentConnection, str], caplog: pytest.LogCaptureFixture) -> None:
    """A closed segment's file gone from the middle of a pod's series (not the oldest: not retention's doing) is said
    as an error at the next start (how many, from the pod's count: naming them would cost a scan of the catalog), and
    a download skips it: the rest comes back."""
    mgr, conn, data = env
    cap = mgr.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="shop", pod_names=["web-0"]),
                                                    rotation=control_pb2.Rotation(segment_bytes=64 << 10)))
    mgr.on_pod_event(conn, ingest_pb2.PodCaptureEvent(
        capture_id=cap.id, pod_uid="uid-0", stream_id="s-uid-0", state=common_pb2.POD_CAPTURE_STATE_CAPTURING,
        format=common_pb2.PcapFormat(linktype=1, snaplen=262144, nanosecond=True)))
    for seq in range(1, 41):  # 4,000 records of 76 bytes: 5 segments of 64 KiB
        mgr.on_chunk(conn, chunk(cap.id, "uid-0", seq, records((seq - 1) * 100, 100), 100))
    assert acked(mgr, conn, cap.id) == {"uid-0": 40}
    files = list_segments(os.path.join(data, "captures", cap.id, "shop", "web-0"))
    assert len(files) >= 4
    first, lost = len(read_file(files[0])[1]), len(read_file(files[1])[1])
    os.unlink(files[1])
    again = CaptureManager(LocalStorage(data), AgentRegistry(), mgr.store)
    try:
        assert [r.getMessage() for r in caplog.records if "missing" in r.getMessage()] == [
            f"capture {cap.id}: pod shop/web-0: 1 of its {len(files)} segment files are missing (deleted by hand, a "
            "disk error?); reads skip them"]
        again_cap = again.get(cap.id)
        got = []
        for _ps, fmt, pod_files in again.pod_files(again_cap, []):
            for f, length in pod_files:
                with f:
                    f.seek(FILE_HEADER_LEN)
                    got += [int.from_bytes(r.data[:4], "big") for r in iter_records(f.read(length - FILE_HEADER_LEN),
                                                                                    fmt)]
        assert got == [i for i in range(4000) if not first <= i < first + lost]
    finally:
        again.close()


def test_retention_keeps_each_pod_under_its_byte_cap(tmp_path: str) -> None:
    registry = AgentRegistry()
    conn = AgentConnection(node=NODE, instance_id="inst", version="t", pod_source="netns", pods=list(PODS))
    registry.register(conn)
    store = CaptureStore(os.path.join(tmp_path, "db"))
    mgr = CaptureManager(LocalStorage(str(tmp_path)), registry, store)
    try:
        keep = 4 * 64 * 1024
        cap = mgr.start(control_pb2.StartCaptureRequest(
            target=control_pb2.Target(namespace="shop", pod_names=["web-0"]),
            retention=control_pb2.Retention(keep_bytes=keep)))
        mgr.on_pod_event(conn, ingest_pb2.PodCaptureEvent(
            capture_id=cap.id, pod_uid="uid-0", stream_id="s-uid-0", state=common_pb2.POD_CAPTURE_STATE_CAPTURING,
            format=common_pb2.PcapFormat(linktype=1, snaplen=262144, nanosecond=True)))
        n = 0
        for seq in range(1, 201):  # 200 chunks of 100 records x 76 bytes = ~1.5 MB through a 256 KiB window
            mgr.on_chunk(conn, chunk(cap.id, "uid-0", seq, records(n, 100), 100))
            n += 100
            on_disk = sum(os.path.getsize(s) for s in list_segments(os.path.join(str(tmp_path), "captures",
                                                                                cap.id, "shop", "web-0")))
            assert on_disk <= keep + 64 * 1024  # the open segment may exceed the target by at most one segment
        kept = stored(mgr, str(tmp_path), cap.id, "web-0")
        assert kept == list(range(n - len(kept), n))  # the newest packets, contiguous
        st = mgr.status(cap).pods[0]
        assert st.packets == len(kept) and st.retired_packets == n - len(kept)
        assert st.bytes + st.retired_bytes == mgr.get(cap.id).bytes_total
    finally:
        mgr.close()
        store.close()


def test_every_loss_is_recorded_as_a_gap_next_to_the_pod_files(
        env: tuple[CaptureManager, AgentConnection, str]) -> None:
    """The stored capture itself says where packets are missing and why (gaps.tsv), not only `podcap status`:
    in-band gaps where they happened, kernel drops as the agent reports them; per cause the lines add up to the
    counters."""
    mgr, conn, data = env
    cid = start(mgr, conn)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 2), 2))
    gap = chunk(cid, "uid-0", 2, b"", 0)  # a chunk the agent could not keep travels as a gap in its place
    gap.lost.buffer_full = 120
    mgr.on_chunk(conn, gap)
    after = chunk(cid, "uid-0", 3, records(2, 2), 2)  # and losses before a chunk ride with it
    after.lost.out_of_memory = 7
    mgr.on_chunk(conn, after)
    for dropped in (0, 30, 30):  # the kernel's cumulative counters in the agent's periodic reports
        mgr.on_pod_event(conn, ingest_pb2.PodCaptureEvent(
            capture_id=cid, pod_uid="uid-0", stream_id="s-uid-0", state=common_pb2.POD_CAPTURE_STATE_CAPTURING,
            kernel=common_pb2.KernelStats(received=4 + 127 + dropped, dropped=dropped), delivered=4 + 127))
    rows = read_gaps(os.path.join(data, "captures", cid, "shop", "web-0", "gaps.tsv"))
    assert [(r[2], r[3]) for r in rows] == [(120, "buffer_full"), (7, "out_of_memory"), (30, "kernel")]
    pod = mgr.status(mgr.get(cid)).pods[0]
    assert (pod.drops.buffer_full, pod.drops.out_of_memory, pod.kernel.dropped) == (120, 7, 30)
    assert pod.agent_dropped_packets == 127 and pod.packets == 4 and pod.unaccounted == 0
    assert stored(mgr, data, cid, "web-0") == [0, 1, 2, 3]


def report(mgr: CaptureManager, conn: AgentConnection, cid: str, uid: str, state: int, *, stream: str = "",
           received: int = 0, dropped: int = 0, delivered: int = 0, **drops: int) -> None:
    mgr.on_pod_event(conn, ingest_pb2.PodCaptureEvent(
        capture_id=cid, pod_uid=uid, stream_id=stream or f"s-{uid}", state=state,  # type: ignore[arg-type]
        kernel=common_pb2.KernelStats(received=received, dropped=dropped), delivered=delivered,
        drops=common_pb2.PodcapDrops(**drops)))


def test_every_packet_is_stored_or_counted_by_cause(env: tuple[CaptureManager, AgentConnection, str]) -> None:
    """received == stored + kernel drops + every kind of podcap drop, exactly, with a limit cutting a chunk and
    the agent's own causes."""
    mgr, conn, data = env
    cid = start(mgr, conn, max_packets=9)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 5), 5))
    gap = chunk(cid, "uid-0", 2, b"", 0)
    gap.lost.buffer_full = 40
    mgr.on_chunk(conn, gap)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 3, records(5, 6), 6))  # 4 stored, 2 past the capture's limit
    cap = mgr.get(cid)
    assert cap.ended.wait(5) or cap.state == control_pb2.CAPTURE_STATE_STOPPING
    report(mgr, conn, cid, "uid-0", common_pb2.POD_CAPTURE_STATE_DONE, received=5 + 40 + 6 + 3 + 11 + 2,
           dropped=11, delivered=5 + 40 + 6 + 3 + 2, unread=2, past_limit=3, buffer_full=40)
    report(mgr, conn, cid, "uid-1", common_pb2.POD_CAPTURE_STATE_DONE)
    assert cap.ended.wait(5)
    pod = cap.status().pods[0]
    assert stored(mgr, data, cid, "web-0") == list(range(9))
    assert (pod.packets, pod.kernel.dropped, pod.drops.buffer_full, pod.drops.past_limit, pod.drops.unread) == \
        (9, 11, 40, 2 + 3, 2)
    assert pod.kernel.received == pod.packets + pod.kernel.dropped + total_of(pod.drops)
    assert pod.unaccounted == 0


def test_chunks_of_an_older_stream_still_count_after_a_newer_one_started(
        env: tuple[CaptureManager, AgentConnection, str]) -> None:
    """A pod re-attached (new stream) while the old stream's unacknowledged chunks come again after a reconnect:
    both are stored, the re-sent start of the old stream does not make it current again, and the pod's counters
    are the sums of both streams."""
    mgr, conn, data = env
    cid = start(mgr, conn)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 2), 2))
    report(mgr, conn, cid, "uid-0", common_pb2.POD_CAPTURE_STATE_PENDING, received=5, delivered=5)
    fmt = common_pb2.PcapFormat(linktype=1, snaplen=262144, nanosecond=True)
    mgr.on_pod_event(conn, ingest_pb2.PodCaptureEvent(capture_id=cid, pod_uid="uid-0", stream_id="new",
                                                      state=common_pb2.POD_CAPTURE_STATE_CAPTURING, format=fmt))
    mgr.on_chunk(conn, ingest_pb2.PcapChunk(capture_id=cid, pod_uid="uid-0", stream_id="new", seq=1,
                                            records=records(100, 2), packets=2))
    # the reconnect: the old stream's start and its chunks 1 (duplicate) to 2 again
    mgr.on_pod_event(conn, ingest_pb2.PodCaptureEvent(capture_id=cid, pod_uid="uid-0", stream_id="s-uid-0",
                                                      state=common_pb2.POD_CAPTURE_STATE_CAPTURING, format=fmt))
    mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 2), 2))
    mgr.on_chunk(conn, chunk(cid, "uid-0", 2, records(2, 3), 3))
    mgr.on_chunk(conn, ingest_pb2.PcapChunk(capture_id=cid, pod_uid="uid-0", stream_id="new", seq=2,
                                            records=records(102, 1), packets=1))
    assert sorted(stored(mgr, data, cid, "web-0")) == [0, 1, 2, 3, 4, 100, 101, 102]
    ps = mgr.get(cid).pods[PodUid("uid-0")]
    assert ps.current == "new" and ps.reattachments == 1
    pod = mgr.get(cid).status().pods[0]
    assert pod.state == common_pb2.POD_CAPTURE_STATE_CAPTURING and pod.packets == 8


def test_a_stream_whose_agent_died_is_accounted_from_its_last_report(
        env: tuple[CaptureManager, AgentConnection, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent was killed: its final report never comes. At the end, what its last report said it had read but
    never arrived is counted as lost with the agent."""
    from podcap.collector.captures import table

    monkeypatch.setattr(table, "STOP_GRACE_S", 0.3)
    mgr, conn, _ = env
    cid = start(mgr, conn)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 6), 6))
    # 100 queued for the agent by the kernel, of which 90 read (10 still in a ring block when it died)
    report(mgr, conn, cid, "uid-0", common_pb2.POD_CAPTURE_STATE_CAPTURING, received=110, dropped=10,
           delivered=90)
    cap = mgr.stop(cid, wait=5)
    assert cap.state == control_pb2.CAPTURE_STATE_DONE
    pod = cap.status().pods[0]
    assert pod.drops.lost_with_agent == 94 and pod.unaccounted == 0 and pod.kernel.received == 110


def test_a_stopping_capture_waits_while_its_agents_keep_delivering(
        env: tuple[CaptureManager, AgentConnection, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop grace counts silence, not time since the stop: a backlog still draining is stored, not cut off."""
    import time

    from podcap.collector.captures import table

    monkeypatch.setattr(table, "STOP_GRACE_S", 0.5)
    mgr, conn, data = env
    cid = start(mgr, conn)
    cap = mgr.get(cid)
    mgr._begin_stop(cap, "stopped by user")
    for seq in range(1, 9):  # 1.6 s of chunks, each within the grace of the one before
        time.sleep(0.2)
        assert cap.live, f"ended while chunk {seq} was coming"
        mgr.on_chunk(conn, chunk(cid, "uid-0", seq, records(seq, 1), 1))
    assert cap.ended.wait(5)
    assert cap.status().pods[0].drops.late == 0
    assert stored(mgr, data, cid, "web-0") == list(range(1, 9))
    late = chunk(cid, "uid-0", 9, records(9, 1), 1)  # after the end: acknowledged, counted, not stored
    assert mgr.on_chunk(conn, late) is None
    assert cap.status().pods[0].drops.late == 1


@contextlib.contextmanager
def commit_in_flush(mgr: CaptureManager, cid: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A commit of the capture running in another thread, held inside its fdatasync for the body of the ``with``;
    it completes when the body ends."""
    from podcap.collector.storage import local

    flushing, release = threading.Event(), threading.Event()
    real = os.fdatasync

    def slow(fd: int) -> None:
        flushing.set()
        assert release.wait(10)
        real(fd)

    monkeypatch.setattr(local.os, "fdatasync", slow)
    committer = threading.Thread(target=mgr.committer.commit, args=(mgr.get(cid),))
    committer.start()
    try:
        assert flushing.wait(5)
        yield
    finally:
        release.set()
        committer.join(10)
        monkeypatch.setattr(local.os, "fdatasync", real)


def test_a_chunk_sent_again_during_a_commit_is_acknowledged_to_the_new_connection(
        env: tuple[CaptureManager, AgentConnection, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent reconnects while a commit flushes and sends the chunk being committed again: the new session gets
    the acknowledgement too (the old one is gone), or the agent would hold the chunk forever."""
    mgr, conn, _ = env
    cid = start(mgr, conn)
    sent(conn)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 2), 2))
    conn2 = AgentConnection(node=NODE, instance_id="inst", version="t", pod_source="netns", pods=list(PODS))
    with commit_in_flush(mgr, cid, monkeypatch):
        assert mgr.on_chunk(conn2, chunk(cid, "uid-0", 1, records(0, 2), 2)) is None  # written, not yet durable
    assert [m.ack.seq for m in sent(conn2) if m.WhichOneof("kind") == "ack"] == [1]


def test_commits_do_not_hold_the_capture_while_the_disk_flushes(
        env: tuple[CaptureManager, AgentConnection, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks are stored while a commit waits for fdatasync; they are acknowledged by the next commit, not this
    one (it flushed only what was appended before it began)."""
    mgr, conn, data = env
    cid = start(mgr, conn)
    sent(conn)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 2), 2))
    with commit_in_flush(mgr, cid, monkeypatch):
        mgr.on_chunk(conn, chunk(cid, "uid-0", 2, records(2, 2), 2))  # not blocked by the flush in progress
    acks = [m.ack.seq for m in sent(conn) if m.WhichOneof("kind") == "ack"]
    assert acks == [1]
    assert acked(mgr, conn, cid) == {"uid-0": 2}


def test_bytes_that_cannot_reach_the_disk_are_never_acknowledged(env: tuple[CaptureManager, AgentConnection, str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod ends while the disk is full: its segment cannot be completed (the last partial block is still in
    memory), so nothing is acknowledged; once space returns the commit completes it and acknowledges."""
    import errno

    from podcap.collector.storage import appender
    from podcap.collector.storage.base import StorageError

    mgr, conn, data = env
    cid = start(mgr, conn)
    sent(conn)
    mgr.on_chunk(conn, chunk(cid, "uid-0", 1, records(0, 5), 5))
    real_pwrite = os.pwrite

    def full(fd: int, buf: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(appender.os, "pwrite", full)
    mgr.on_pod_event(conn, ingest_pb2.PodCaptureEvent(
        capture_id=cid, pod_uid="uid-0", stream_id="s-uid-0", state=common_pb2.POD_CAPTURE_STATE_DONE,
        last_seq=1))
    with pytest.raises(StorageError):
        mgr.committer.commit(mgr.get(cid))
    assert not [m for m in sent(conn) if m.WhichOneof("kind") in ("ack", "acks")]
    monkeypatch.setattr(appender.os, "pwrite", real_pwrite)
    assert acked(mgr, conn, cid) == {"uid-0": 1}
    assert stored(mgr, data, cid, "web-0") == [0, 1, 2, 3, 4]
    assert mgr.get(cid).pods[PodUid("uid-0")].writer is None  # the close was retried and completed


class _GatedWriter(PodWriter):
    """A segment writer whose appends wait for a gate: a disk that hangs under one pod."""

    gate = threading.Event()
    entered = threading.Event()

    def append(self, records: bytes | memoryview, **kw: Any) -> tuple[int, SegmentInfo | None]:
        type(self).entered.set()
        assert type(self).gate.wait(10)
        return super().append(records, **kw)


class _OnePodOnASlowDisk(LocalStorage):
    def pod(self, capture_id: str, namespace: str, pod_dir_name: str) -> LocalPodLocation:
        loc = super().pod(capture_id, namespace, pod_dir_name)
        if pod_dir_name != "web-0":
            return loc

        class Gated(LocalPodLocation):
            def writer(self, fmt: FileFormat, *, segment_bytes: int, segment_seconds: int,
                       next_index: int) -> PodWriter:
                return _GatedWriter(self.directory, fmt, segment_bytes=segment_bytes,
                                    segment_seconds=segment_seconds, next_index=next_index)

        return Gated(loc.directory)


def test_a_pod_stuck_in_an_append_holds_up_neither_the_other_pods_nor_the_committer(tmp_path: str) -> None:
    """The capture's lock is not held across I/O: while web-0's append hangs, web-1's chunks are stored and
    acknowledged by the committer's loop, status answers, and once the disk returns web-0's chunk is stored too."""
    registry = AgentRegistry()
    conn = AgentConnection(node=NODE, instance_id="inst", version="t", pod_source="netns", pods=list(PODS))
    registry.register(conn)
    store = CaptureStore(os.path.join(tmp_path, "db"))
    mgr = CaptureManager(_OnePodOnASlowDisk(str(tmp_path)), registry, store)
    _GatedWriter.gate.clear()
    _GatedWriter.entered.clear()
    try:
        cid = start(mgr, conn)
        slow = threading.Thread(target=mgr.on_chunk, args=(conn, chunk(cid, "uid-0", 1, records(0, 5), 5)))
        slow.start()
        assert _GatedWriter.entered.wait(5)
        fast = threading.Thread(target=lambda: [mgr.on_chunk(conn, chunk(cid, "uid-1", s, records(10 * s, 10), 10))
                                                for s in (1, 2, 3)])
        fast.start()
        fast.join(timeout=5)
        assert not fast.is_alive(), "web-1 waited for web-0's disk"
        assert mgr.status(mgr.get(cid)).pods[1].packets == 30
        acks: dict[str, int] = {}
        deadline = time.monotonic() + 5
        while acks.get("uid-1") != 3 and time.monotonic() < deadline:  # the committer's own loop
            for m in sent(conn):
                if m.WhichOneof("kind") in ("ack", "acks"):
                    for a in [m.ack] if m.WhichOneof("kind") == "ack" else list(m.acks.acks):
                        acks[a.pod_uid] = max(acks.get(a.pod_uid, 0), a.seq)
            time.sleep(0.02)
        assert acks.get("uid-1") == 3 and "uid-0" not in acks
        _GatedWriter.gate.set()
        slow.join(timeout=5)
        assert not slow.is_alive()
        assert acked(mgr, conn, cid).get("uid-0") == 1
        assert stored(mgr, str(tmp_path), cid, "web-0") == list(range(5))
        assert stored(mgr, str(tmp_path), cid, "web-1") == list(range(10, 40))
    finally:
        _GatedWriter.gate.set()
        mgr.close()
        store.close()
