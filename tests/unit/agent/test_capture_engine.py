"""The capture engine with fake handles (no root, no libpcap): chunks cut at their size and in sequence, a full
upload log leaving gaps in the stream, the packet limit, and the graceful stop's accounting — the handle is frozen,
the ring drained, and every packet the kernel received is stored or counted (received == stored + drops)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from podcap.agent.capture.engine import CaptureEngine
from podcap.agent.capture.settings import EngineSettings
from podcap.agent.pods.source import PodNetwork
from podcap.agent.upload.encoded import EncodedChunk
from podcap.agent.upload.upload_log import UploadLog
from podcap.drops import Drops
from podcap.names import CaptureId, NodeName, PodUid
from podcap.pods import PodRef
from podcap.v1 import common_pb2, ingest_pb2
from tests.unit.agent.fake_handles import RECORD, FakeHandle, FakeHandles, packet_numbers

CID = CaptureId("cap-1")
POD = PodRef("shop", "web-0", PodUid("uid-0"), NodeName("node-a"))
NETWORK = PodNetwork(netns_path="/nonexistent", host_veth="veth-web0", sandbox_key="k1")
DONE = common_pb2.POD_CAPTURE_STATE_DONE


class RecordingSink:
    """The engine's ``StreamSink``: remembers chunks (and whether each was kept) and events."""

    def __init__(self, keep: Callable[[EncodedChunk], bool] = lambda _c: True) -> None:
        self.keep = keep
        self.chunks: list[tuple[EncodedChunk, bool]] = []
        self.events: list[ingest_pb2.PodCaptureEvent] = []
        self._cond = threading.Condition()

    def chunk(self, chunk: EncodedChunk) -> bool:
        kept = self.keep(chunk)
        with self._cond:
            self.chunks.append((chunk, kept))
        return kept

    def event(self, event: ingest_pb2.PodCaptureEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def trigger(self, key: tuple[str, str], state: object) -> None:
        pass

    def wait_event(self, state: int, timeout: float = 10.0) -> ingest_pb2.PodCaptureEvent:
        with self._cond:
            assert self._cond.wait_for(lambda: any(e.state == state for e in self.events), timeout), \
                f"no event {state} in {self.events}"
            return next(e for e in self.events if e.state == state)

    def stored(self) -> list[int]:
        """Numbers of the packets in the chunks that were kept, in stream order."""
        return [n for c, kept in self.chunks if kept for n in packet_numbers(c.message().records)]


@pytest.fixture
def handles() -> FakeHandles:
    return FakeHandles()


@pytest.fixture
def make_engine(handles: FakeHandles) -> Iterator[Callable[..., CaptureEngine]]:
    engines: list[CaptureEngine] = []

    def make(sink: RecordingSink, **settings: float) -> CaptureEngine:
        cfg = EngineSettings(**{"min_loop_period": 0.0, "stats_interval": 0.2, **settings})  # type: ignore[arg-type]
        engine = CaptureEngine(sink, instance_id="test", settings=cfg, handles=handles)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def start(engine: CaptureEngine, handles: FakeHandles, sink: RecordingSink, *, max_packets: int = 0) -> FakeHandle:
    engine.start(CID, POD, NETWORK, common_pb2.CaptureSettings(max_packets=max_packets))
    started = sink.wait_event(common_pb2.POD_CAPTURE_STATE_CAPTURING)
    assert started.interface == "veth-web0" and started.format.linktype == 1
    return handles.wait("veth-web0")


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def check_accounting(final: ingest_pb2.PodCaptureEvent, sink: RecordingSink, handle: FakeHandle) -> Drops:
    """Every packet the kernel received is stored, or counted by cause; returns the agent's drops."""
    drops = Drops.from_proto(final.drops)
    stored = len(sink.stored())
    assert final.kernel.received == handle.received
    assert final.kernel.received == stored + final.kernel.dropped + drops.total()
    assert final.delivered + final.kernel.dropped + drops.unread == final.kernel.received
    return drops


def test_chunks_are_cut_at_their_size_in_sequence_and_every_packet_is_stored(
    make_engine: Callable[..., CaptureEngine], handles: FakeHandles
) -> None:
    sink = RecordingSink()
    engine = make_engine(sink, chunk_bytes=20 * RECORD)
    handle = start(engine, handles, sink)
    for _ in range(10):
        handle.arrive(37)
        time.sleep(0.01)
    handle.drop(5)
    wait_for(lambda: len(sink.stored()) >= 20 * (370 // 20))  # every full chunk is out
    engine.stop(CID, None, "stopped by test")
    final = sink.wait_event(DONE)
    assert final.message == "stopped by test"
    assert handle.frozen and not check_accounting(final, sink, handle)
    assert sink.stored() == list(range(1, 371))  # each packet once, in order
    assert [c.seq for c, _ in sink.chunks] == list(range(1, len(sink.chunks) + 1))
    full = [len(c.message().records) for c, _ in sink.chunks[:-1]]
    assert full and all(20 * RECORD <= size < 21 * RECORD for size in full)  # cut as soon as a chunk is full
    assert final.kernel.dropped == 5 and final.delivered == 370
    assert engine.counters()[CID].captured == 370


def test_a_quiet_stream_is_flushed_after_the_flush_interval(
    make_engine: Callable[..., CaptureEngine], handles: FakeHandles
) -> None:
    sink = RecordingSink()
    engine = make_engine(sink, flush_interval=0.3)
    handle = start(engine, handles, sink)
    handle.arrive(3)
    wait_for(lambda: len(sink.chunks) == 1, timeout=3)
    assert sink.stored() == [1, 2, 3] and engine.active() == [(CID, POD.uid)]


def test_a_full_upload_log_leaves_gaps_in_the_stream_and_counts_them(
    make_engine: Callable[..., CaptureEngine], handles: FakeHandles
) -> None:
    log = UploadLog(memory_bytes=50 * RECORD)  # nobody acknowledges: room for two chunks and a half
    sink = RecordingSink(keep=log.put_chunk)
    engine = make_engine(sink, chunk_bytes=20 * RECORD)
    log.on_lost = engine.record_loss
    handle = start(engine, handles, sink)
    handle.arrive(200)
    wait_for(lambda: sum(c.packets + c.lost().buffer_full for c, _ in sink.chunks) >= 200)
    engine.stop(CID, None, "stopped by test")
    final = sink.wait_event(DONE)
    drops = check_accounting(final, sink, handle)
    kept = [c for c, ok in sink.chunks if ok]
    assert len(kept) == 2 and sink.stored() == list(range(1, 41))  # the first chunks stay; no room after them
    assert drops.buffer_full == 160 and drops.agent_total() == 160
    assert [c.seq for c, _ in sink.chunks] == list(range(1, len(sink.chunks) + 1))  # gaps keep their places
    pending, held = log.pending()
    assert pending == len(sink.chunks) and held == 40 * RECORD


def test_packets_past_the_limit_are_read_and_counted(
    make_engine: Callable[..., CaptureEngine], handles: FakeHandles
) -> None:
    sink = RecordingSink()
    engine = make_engine(sink)
    handle = start(engine, handles, sink, max_packets=10)
    handle.arrive(25)
    final = sink.wait_event(DONE)
    assert final.message == "max-packets reached"
    drops = check_accounting(final, sink, handle)
    assert sink.stored() == list(range(1, 11)) and drops.past_limit == 15


def test_a_stop_drains_what_the_kernel_queued_before_it_and_counts_nothing_after(
    make_engine: Callable[..., CaptureEngine], handles: FakeHandles
) -> None:
    sink = RecordingSink()
    engine = make_engine(sink)
    handle = start(engine, handles, sink)
    handle.arrive(10)
    handle.arrive(7, readable=False)  # in a ring block that retires only after the stop
    wait_for(lambda: sink.events[-1].delivered == 10 if len(sink.events) > 1 else False)
    engine.stop(CID, None, "stopped by test")
    wait_for(lambda: handle.frozen)
    handle.arrive(100)  # after the freeze: neither queued nor counted
    threading.Timer(0.3, handle.release).start()
    final = sink.wait_event(DONE)
    assert not check_accounting(final, sink, handle)
    assert sink.stored() == list(range(1, 18)) and final.kernel.received == 17


def test_what_never_becomes_readable_is_counted_unread(
    make_engine: Callable[..., CaptureEngine], handles: FakeHandles
) -> None:
    sink = RecordingSink()
    engine = make_engine(sink)
    handle = start(engine, handles, sink)
    handle.arrive(10)
    handle.arrive(4, readable=False)  # the interface vanished with its block unretired
    wait_for(lambda: len(sink.events) > 1 and sink.events[-1].delivered == 10)
    stopped = time.monotonic()
    engine.stop(CID, None, "stopped by test")
    final = sink.wait_event(DONE)
    assert time.monotonic() - stopped >= 1.0  # it waited two block timeouts for the ring before giving up
    drops = check_accounting(final, sink, handle)
    assert sink.stored() == list(range(1, 11)) and drops.unread == 4
