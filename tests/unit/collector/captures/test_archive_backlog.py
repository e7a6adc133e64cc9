"""What ``podcap status`` says waits for the bucket, with tiered storage, driven by a fake clock and an object store
in memory whose uploads can hang or fail: the bytes of every closed segment not yet archived (whatever an archiving
round is doing), the age of the oldest of them from when it closed (growing while nothing uploads), and why they
wait (an upload hung past ``stalled_s``, the store's own error text); retention, a stream's end and a restart keep
it right, and a status call does not walk the capture's segments."""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pytest

from podcap.collector.agents import AgentConnection, AgentRegistry
from podcap.collector.bucket.objects import BucketUrl, ObjectNotFoundError, ObjectStoreError
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.captures.model import Capture
from podcap.collector.storage.base import SegmentInfo
from podcap.collector.storage.catalog import CaptureStore, SegmentRow
from podcap.collector.storage.local import list_segments
from podcap.collector.storage.tiered import TieredStorage
from podcap.formats.pcap import read_file
from podcap.names import NodeName, PodUid
from podcap.pods import PodRef
from podcap.v1 import common_pb2, control_pb2, ingest_pb2

NODE = NodeName("node-a")
PODS = [PodRef("shop", f"web-{i}", PodUid(f"uid-{i}"), NODE, {"app": "web"}) for i in range(2)]
SEGMENT = 64 << 10  # the smallest rotation size: a segment holds three chunks of ``records(_, 100)``
T0 = 1_000_000.0


def records(start: int, n: int, size: int = 200) -> bytes:
    """Records stamped 10 s + i ns after the epoch (so a recovered segment's newest packet is at 10 s)."""
    return b"".join(struct.pack("<IIII", 10, i, size, size) + i.to_bytes(4, "big") * (size // 4)
                    for i in range(start, start + n))


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeBucket:
    """The parts of ``ObjectStore`` tiered storage uses, in memory. Uploads wait for ``gate`` (a frozen gateway)
    and raise ``fail`` when set (the store's error)."""

    url: BucketUrl = field(default_factory=lambda: BucketUrl("bucket", "prefix"))
    objects: dict[str, bytes] = field(default_factory=dict)
    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    fail: Exception | None = None

    def __post_init__(self) -> None:
        self.gate.set()

    def upload_stream(self, pieces: Iterable[bytes], key: str) -> int:
        body = b"".join(pieces)
        self.entered.set()
        assert self.gate.wait(30)
        if self.fail is not None:
            raise self.fail
        self.objects[key] = body
        return len(body)

    def put_bytes(self, key: str, body: bytes, content_type: str = "") -> None:
        self.objects[key] = body

    def get(self, key: str) -> bytes:
        if key not in self.objects:
            raise ObjectNotFoundError(key)
        return self.objects[key]

    def delete(self, keys: Iterable[str]) -> None:
        for k in keys:
            self.objects.pop(k, None)


@dataclass
class Env:
    mgr: CaptureManager
    conn: AgentConnection
    bucket: FakeBucket
    clock: FakeClock
    data: str
    store: CaptureStore
    seqs: dict[str, int] = field(default_factory=dict)

    def start(self, **retention: int) -> Capture:
        cap = self.mgr.start(control_pb2.StartCaptureRequest(
            target=control_pb2.Target(namespace="shop", selector="app=web"),
            rotation=control_pb2.Rotation(segment_bytes=SEGMENT), retention=control_pb2.Retention(**retention)))
        for p in PODS:
            self.mgr.on_pod_event(self.conn, ingest_pb2.PodCaptureEvent(
                capture_id=cap.id, pod_uid=p.uid, stream_id=f"s-{p.uid}",
                state=common_pb2.POD_CAPTURE_STATE_CAPTURING,
                format=common_pb2.PcapFormat(linktype=1, snaplen=262144, nanosecond=True)))
        return cap

    def send(self, cap: Capture, uid: str, chunks: int) -> None:
        for _ in range(chunks):
            seq = self.seqs[uid] = self.seqs.get(uid, 0) + 1
            self.mgr.on_chunk(self.conn, ingest_pb2.PcapChunk(
                capture_id=cap.id, pod_uid=uid, stream_id=f"s-{uid}", seq=seq,
                records=records(seq * 100, 100), packets=100))
        self.mgr.committer.commit(cap)

    def status(self, cap: Capture) -> tuple[int, float, str]:
        st = self.mgr.status(cap)
        return st.archive_backlog_bytes, st.archive_oldest_seconds, st.archive_error

    def reopen(self) -> None:
        self.mgr.close()
        self.mgr = manager(self.data, self.store, self.conn, self.bucket, self.clock)


def manager(data: str, store: CaptureStore, conn: AgentConnection, bucket: FakeBucket,
            clock: FakeClock) -> CaptureManager:
    registry = AgentRegistry()
    registry.register(conn)
    storage = TieredStorage(data, bucket)  # type: ignore[arg-type]  # (FakeBucket has what TieredStorage uses)
    return CaptureManager(storage, registry, store, archive_interval_s=0, clock=clock)


@pytest.fixture
def env(tmp_path: str) -> Iterator[Env]:
    conn = AgentConnection(node=NODE, instance_id="inst", version="t", pod_source="netns", pods=list(PODS))
    store = CaptureStore(os.path.join(tmp_path, "db"))
    bucket, clock = FakeBucket(), FakeClock()
    e = Env(manager(str(tmp_path), store, conn, bucket, clock), conn, bucket, clock, str(tmp_path), store)
    yield e
    e.bucket.gate.set()
    e.mgr.close()
    store.close()


def closed_waiting(mgr: CaptureManager, cap: Capture) -> list[SegmentInfo]:
    """The definition, walked the long way: every pod's segments (memory and the catalog, as a download lists
    them) that are closed (not its writer's current one) and not archived."""
    out = []
    for ps in cap.pods.values():
        listed = mgr.index.listing(cap, ps, mgr.index.in_memory(cap, ps))
        with cap.lock:
            current = ps.writer.current if ps.writer is not None else None
            out += [s for s, _n in listed if s is not current and not s.archived]
    return out


def closed_on_disk(data: str, cap: Capture) -> int:
    """Bytes of the segment files in the data dir but each pod's newest (its open segment, while it has one)."""
    total = 0
    for ps in cap.pods.values():
        files = list_segments(os.path.join(data, "captures", cap.id, "shop", ps.dir_name))
        if ps.writer is not None and ps.writer.current is not None:
            files = files[:-1]
        total += sum(os.path.getsize(f) for f in files)
    return total


def test_every_closed_segment_waits_from_when_it_closed(env: Env) -> None:
    cap = env.start()
    assert env.status(cap) == (0, 0.0, "")
    env.send(cap, "uid-0", 7)  # segments of three chunks: two closed, the third open
    assert len(closed_waiting(env.mgr, cap)) == 2
    env.clock.now = T0 + 5
    nbytes, age, error = env.status(cap)
    assert nbytes == sum(s.bytes for s in closed_waiting(env.mgr, cap)) == closed_on_disk(env.data, cap) > 0
    assert (age, error) == (5.0, "")
    env.clock.now = T0 + 9
    env.send(cap, "uid-1", 4)  # web-1's first segment closes now: more bytes, the oldest is still web-0's
    assert env.status(cap) == (sum(s.bytes for s in closed_waiting(env.mgr, cap)), 9.0, "")
    assert env.status(cap)[0] == closed_on_disk(env.data, cap) and len(closed_waiting(env.mgr, cap)) == 3
    env.clock.now = T0 + 20
    assert env.status(cap)[1] == 20.0  # nothing uploads: the age grows with the clock
    # web-1's stream ends: its writer closes, and its last segment waits too.
    env.mgr.on_pod_event(env.conn, ingest_pb2.PodCaptureEvent(
        capture_id=cap.id, pod_uid="uid-1", stream_id="s-uid-1", state=common_pb2.POD_CAPTURE_STATE_DONE))
    assert env.mgr.get(cap.id).pods[PodUid("uid-1")].writer is None
    assert env.status(cap)[0] == sum(s.bytes for s in closed_waiting(env.mgr, cap)) == closed_on_disk(env.data, cap)
    assert len(closed_waiting(env.mgr, cap)) == 4


def test_a_hung_upload_is_named_while_the_backlog_keeps_growing_and_ageing(env: Env) -> None:
    cap = env.start()
    env.send(cap, "uid-0", 7)
    env.bucket.gate.clear()  # the gateway freezes: the round's first upload hangs
    uploading = threading.Thread(target=env.mgr.archiver.run_once)
    uploading.start()
    try:
        assert env.bucket.entered.wait(5)
        env.clock.now = T0 + 3
        env.send(cap, "uid-0", 6)  # two more segments close while the round hangs: they wait too
        env.send(cap, "uid-1", 4)
        waiting = sum(s.bytes for s in closed_waiting(env.mgr, cap))
        assert len(closed_waiting(env.mgr, cap)) == 5 and waiting == closed_on_disk(env.data, cap)
        assert env.status(cap) == (waiting, 3.0, "")  # hanging for 3 s: not yet worth a word
        env.clock.now = T0 + 35
        nbytes, age, error = env.status(cap)
        assert (nbytes, age) == (waiting, 35.0)
        assert error == "upload of segment 1 of shop/web-0 in progress for 35 s"
        env.clock.now = T0 + 47
        assert env.status(cap)[1:] == (47.0, "upload of segment 1 of shop/web-0 in progress for 47 s")
    finally:
        env.bucket.gate.set()
    uploading.join(timeout=10)
    assert not uploading.is_alive()
    # The round archived what it had taken (web-0's first two segments); what closed meanwhile still waits, its age
    # from when the oldest of those closed.
    assert len(closed_waiting(env.mgr, cap)) == 3
    assert env.status(cap) == (sum(s.bytes for s in closed_waiting(env.mgr, cap)), 47.0 - 3.0, "")
    assert env.mgr.archiver.run_once() == 3
    assert env.status(cap) == (0, 0.0, "") and closed_on_disk(env.data, cap) == 0


def test_a_failed_upload_says_what_the_store_said_until_one_succeeds(env: Env) -> None:
    cap = env.start()
    env.send(cap, "uid-0", 4)
    env.bucket.fail = ObjectStoreError("PUT prefix/x/000001.pcap.zst: ReadTimeoutError: Read timeout on endpoint URL")
    assert env.mgr.archiver.run_once() == 0
    env.clock.now = T0 + 12
    nbytes, age, error = env.status(cap)
    assert nbytes == sum(s.bytes for s in closed_waiting(env.mgr, cap)) > 0 and age == 12.0
    assert error == "PUT prefix/x/000001.pcap.zst: ReadTimeoutError: Read timeout on endpoint URL"
    env.bucket.fail = None
    assert env.mgr.archiver.run_once() == 1
    assert env.status(cap) == (0, 0.0, "")
    env.send(cap, "uid-0", 3)  # a new segment waits: the old error is not shown for it
    assert env.status(cap)[0] > 0 and env.status(cap)[2] == ""


def test_retention_takes_deleted_segments_out_of_the_backlog(env: Env) -> None:
    cap = env.start(keep_bytes=4 * SEGMENT)
    env.bucket.fail = ObjectStoreError("PUT k: EndpointConnectionError")
    env.send(cap, "uid-0", 30)  # ten segments through a window of four: the oldest are deleted unarchived
    with cap.lock:
        retired = cap.pods[PodUid("uid-0")].retired_bytes
    assert retired > 0
    assert env.status(cap)[0] == sum(s.bytes for s in closed_waiting(env.mgr, cap)) == closed_on_disk(env.data, cap)
    env.bucket.fail = None
    env.mgr.archiver.run_once()
    assert env.status(cap) == (0, 0.0, "")


def test_a_restarted_collector_finds_what_still_waits(env: Env) -> None:
    """After a restart the closed segments' closing times are unknown: their age counts from their newest packet
    (10 s after the epoch here), the least they have waited."""
    cap = env.start()
    env.send(cap, "uid-0", 7)
    env.bucket.fail = ObjectStoreError("PUT k: EndpointConnectionError")
    env.mgr.archiver.run_once()
    env.reopen()  # the shutdown closes both pods' open segments: everything waits now
    cap = env.mgr.get(cap.id)
    waiting = closed_waiting(env.mgr, cap)
    assert len(waiting) == 3 and closed_on_disk(env.data, cap) == sum(s.bytes for s in waiting)
    nbytes, age, error = env.status(cap)
    assert nbytes == closed_on_disk(env.data, cap) and age == pytest.approx(T0 - 10, abs=1) and error == ""
    env.bucket.fail = None
    assert env.mgr.archiver.run_once() == 3 and env.status(cap) == (0, 0.0, "")


def test_a_waiting_segment_missing_at_a_restart_is_said_and_does_not_stop_archiving(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """A segment waiting for the bucket whose file is gone from the middle of the pod's series (deleted by hand, a
    disk error) is named at the next start, leaves the backlog and is counted as retired: the archiver moves the
    others instead of failing on it for good."""
    cap = env.start()
    env.send(cap, "uid-0", 7)
    env.bucket.fail = ObjectStoreError("PUT k: EndpointConnectionError")
    env.mgr.archiver.run_once()
    files = list_segments(os.path.join(env.data, "captures", cap.id, "shop", "web-0"))
    assert len(files) >= 3
    lost, size = len(read_file(files[1])[1]), os.path.getsize(files[1])
    os.unlink(files[1])
    env.reopen()
    cap = env.mgr.get(cap.id)
    waiting = closed_waiting(env.mgr, cap)
    assert files[1] not in [s.locator for s in waiting] and len(waiting) >= len(files) - 1
    assert [r.getMessage() for r in caplog.records if "is missing" in r.getMessage()] == [
        f"capture {cap.id}: pod shop/web-0: segment {files[1]} is missing ({lost} packets, "
        f"{size} bytes): counted as deleted"]
    env.bucket.fail = None
    assert env.mgr.archiver.run_once() == len(waiting) and env.status(cap) == (0, 0.0, "")
    (web0,) = [p for p in env.mgr.status(cap).pods if p.pod.name == "web-0"]
    assert web0.retired_packets == lost and web0.packets == 700 - lost


def test_status_does_not_walk_the_segments(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22: nothing per status call grows with the capture's length; the backlog is running totals."""
    cap = env.start()
    env.send(cap, "uid-0", 30)
    expected = sum(s.bytes for s in closed_waiting(env.mgr, cap))

    def unwalkable(*_a: object) -> list[SegmentRow]:
        raise AssertionError("a status call walked a pod's segments")

    monkeypatch.setattr(env.store, "_segments", unwalkable)  # every read of the segment index goes through it
    env.clock.now = T0 + 1
    assert env.status(cap) == (expected, 1.0, "")
