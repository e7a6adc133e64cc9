"""The agent's upload log: chunks kept until acknowledged, re-sent after a reconnect behind their stream's STARTED
event, spilled to disk past the memory budget; past the cap every chunk still takes its place in its stream (as a
gap without records when it cannot be kept), and the room is shared fairly between the streams."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from podcap.agent.upload import upload_log
from podcap.agent.upload.encoded import EncodedChunk, serialize
from podcap.agent.upload.upload_log import UploadLog
from podcap.v1 import common_pb2, ingest_pb2


def started(stream: str) -> ingest_pb2.AgentMessage:
    return ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
        capture_id="c", pod_uid="u", stream_id=stream, state=common_pb2.POD_CAPTURE_STATE_CAPTURING,
        format=common_pb2.PcapFormat(linktype=1, snaplen=100, nanosecond=True)))


def chunk(stream: str, seq: int, size: int = 100) -> EncodedChunk:
    return EncodedChunk.from_message(ingest_pb2.PcapChunk(
        capture_id="c", pod_uid="u", stream_id=stream, seq=seq, records=b"x" * size, packets=1))


def messages(log: UploadLog) -> list[ingest_pb2.AgentMessage]:
    """Every message the current session would send (stops when the queue is empty), parsed from the bytes that
    would go on the wire."""
    it = log.iterate(ingest_pb2.AgentMessage(heartbeat=ingest_pb2.Heartbeat()))
    next(it)
    timer = threading.Timer(0.2, log.end_session)
    timer.start()
    out = [ingest_pb2.AgentMessage.FromString(serialize(m)) for m in it]
    timer.cancel()
    return out


def name(c: ingest_pb2.PcapChunk) -> str:
    """``chunk:SEQ``, or ``gap:SEQ:CAUSE=N`` for a chunk that travels without its records."""
    if c.records or c.packets:
        return f"chunk:{c.seq}"
    lost = ",".join(f"{f.name}={v}" for f, v in c.lost.ListFields())
    return f"gap:{c.seq}:{lost}"


def drain(log: UploadLog) -> list[str]:
    """What the current session would send, batches opened up into their chunks."""
    out: list[str] = []
    for m in messages(log):
        kind = m.WhichOneof("kind")
        if kind == "chunks":
            out += [name(c) for c in m.chunks.chunks]
        else:
            out.append(name(m.chunk) if kind == "chunk" else f"{kind}:{m.pod_event.state}")
    return out


def ack(log: UploadLog, stream: str, seq: int, rejected: bool = False) -> None:
    log.ack(ingest_pb2.ChunkAck(capture_id="c", pod_uid="u", stream_id=stream, seq=seq, rejected=rejected))


def test_unacknowledged_chunks_are_resent_after_their_started_event() -> None:
    log = UploadLog(memory_bytes=1 << 20)
    log.new_session()
    log.put(started("s1"))
    for seq in (1, 2, 3):
        assert log.put_chunk(chunk("s1", seq))
    assert drain(log) == ["pod_event:2", "chunk:1", "chunk:2", "chunk:3"]
    ack(log, "s1", 2)
    log.new_session()  # reconnect
    assert drain(log) == ["pod_event:2", "chunk:3"]
    ack(log, "s1", 3)
    assert log.pending() == (0, 0)


def test_rejected_chunk_is_dropped_and_counted() -> None:
    log = UploadLog(memory_bytes=1 << 20)
    log.put_chunk(chunk("s1", 1))
    ack(log, "s1", 1, rejected=True)
    assert log.pending() == (0, 0) and log.rejected_packets == 1


def test_spills_to_disk_then_keeps_gaps_in_the_places_of_the_newest(tmp_path: str) -> None:
    spool = os.path.join(tmp_path, "spool")
    lost: list[tuple[str, str, str, int]] = []
    log = UploadLog(memory_bytes=250, disk_bytes=250, spool_dir=spool, on_lost=lambda *a: lost.append(a))
    accepted = [log.put_chunk(chunk("s1", seq)) for seq in range(1, 7)]
    assert accepted == [True, True, True, True, False, False]  # 2 in memory, 2 on disk, then full
    assert log.wait_spooled()
    assert len(os.listdir(spool)) == 2
    assert lost == [("c", "s1", "buffer_full", 1), ("c", "s1", "buffer_full", 1)]
    log.new_session()
    # read back from disk in order; no sequence number is skipped: the chunks that did not fit are gaps
    assert drain(log) == ["chunk:1", "chunk:2", "chunk:3", "chunk:4", "gap:5:buffer_full=1", "gap:6:buffer_full=1"]
    ack(log, "s1", 6)
    assert log.wait_spooled()
    assert os.listdir(spool) == [] and log.pending() == (0, 0)
    assert log.put_chunk(chunk("s1", 7))  # room again


def test_finished_stream_forgets_its_start_once_acknowledged() -> None:
    log = UploadLog(memory_bytes=1 << 20)
    log.put(started("s1"))
    log.put_chunk(chunk("s1", 1))
    log.put(ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
        stream_id="s1", state=common_pb2.POD_CAPTURE_STATE_DONE)))
    log.new_session()
    assert drain(log) == ["pod_event:2", "chunk:1", "pod_event:3"]
    log.new_session()  # reconnect before the ack: the stream's start, its chunk and its final report again
    assert drain(log) == ["pod_event:2", "chunk:1", "pod_event:3"]
    ack(log, "s1", 1)
    log.new_session()
    # done and acknowledged: only the final report is sent again for a while (the old session may have lost it)
    assert drain(log) == ["pod_event:3"]


def test_small_chunks_queued_together_travel_as_one_message() -> None:
    log = UploadLog(memory_bytes=64 << 20)
    for seq in range(1, 201):
        log.put_chunk(chunk(f"s{seq % 7}", seq, size=1000))
    log.put_chunk(chunk("big", 1, size=2 << 20))  # a big chunk travels alone
    log.put_chunk(chunk("s1", 999, size=1000))
    msgs = messages(log)
    assert [m.WhichOneof("kind") for m in msgs] == ["chunks", "chunk", "chunk"]
    assert [c.seq for c in msgs[0].chunks.chunks] == list(range(1, 201))


def test_a_batch_of_acks_releases_each_stream_up_to_its_seq_and_counts_refusals() -> None:
    log = UploadLog(memory_bytes=1 << 20)
    log.new_session()
    for stream in ("s1", "s2"):
        log.put(started(stream))
        for seq in (1, 2, 3):
            assert log.put_chunk(chunk(stream, seq))
    log.ack(ingest_pb2.ChunkAck(capture_id="c", pod_uid="u", stream_id="s1", seq=2),
            ingest_pb2.ChunkAck(capture_id="c", pod_uid="u", stream_id="s2", seq=3, rejected=True, reason="bad"),
            ingest_pb2.ChunkAck(capture_id="c", pod_uid="u", stream_id="s2", seq=1))
    assert log.pending() == (2, 200)  # s1:3 and s2:2 are left
    assert log.rejected_packets == 1
    log.new_session()
    sent = drain(log)
    assert [m for m in sent if m.startswith("chunk:")] == ["chunk:3", "chunk:2"]


def test_every_stream_keeps_its_share_when_the_buffer_is_full() -> None:
    """Four busy streams and a 4000-byte buffer: a stream that arrives to a full buffer takes room from the stream
    holding the most beyond its share (its newest unsent chunk becomes a gap), so each keeps about a quarter."""
    lost: dict[str, int] = {}
    log = UploadLog(memory_bytes=4000, on_lost=lambda _c, s, _cause, n: lost.__setitem__(s, lost.get(s, 0) + n))
    for seq in range(1, 41):  # s0 alone fills the buffer (and loses what does not fit)
        log.put_chunk(chunk("s0", seq))
    assert log.held() == {"s0": 4000}
    for seq in range(1, 41):  # then three more streams, in turn
        for s in ("s1", "s2", "s3"):
            log.put_chunk(chunk(s, seq))
    assert log.held() == {"s0": 1000, "s1": 1000, "s2": 1000, "s3": 1000}
    assert sum(lost.values()) == 160 - 40  # every chunk is kept or counted, once
    log.new_session()
    sent: dict[str, list[int]] = {}
    for m in messages(log):
        for c in m.chunks.chunks if m.WhichOneof("kind") == "chunks" else [m.chunk]:
            if c.records:
                sent.setdefault(c.stream_id, []).append(c.seq)
            else:
                assert c.lost.buffer_full == 1
                sent.setdefault(c.stream_id + "-gaps", []).append(c.seq)
    for s in ("s0", "s1", "s2", "s3"):  # every stream kept 10 chunks; the other 30 places are gaps, none skipped
        assert len(sent[s]) == 10
        assert sorted(sent[s] + sent[s + "-gaps"]) == list(range(1, 41))


def test_a_quiet_stream_loses_nothing_to_a_busy_one() -> None:
    log = UploadLog(memory_bytes=10_000)
    kept = []
    for seq in range(1, 201):
        log.put_chunk(chunk("busy", seq))  # far more than fits
        if seq % 20 == 0:
            kept.append(log.put_chunk(chunk("quiet", seq // 20)))
    assert kept == [True] * 10
    assert log.held()["quiet"] == 1000


def test_chunks_already_sent_are_never_turned_into_gaps() -> None:
    log = UploadLog(memory_bytes=300)
    for seq in (1, 2, 3):
        log.put_chunk(chunk("a", seq))
    log.new_session()
    assert drain(log) == ["chunk:1", "chunk:2", "chunk:3"]  # sent, not yet acknowledged
    assert not log.put_chunk(chunk("b", 1))  # b is under its share, but nothing of a can give way
    log.new_session()
    assert drain(log) == ["chunk:1", "chunk:2", "chunk:3", "gap:1:buffer_full=1"]


def test_a_spool_file_that_cannot_be_read_back_becomes_a_gap(tmp_path: str) -> None:
    spool = os.path.join(tmp_path, "spool")
    lost: list[tuple[str, str, str, int]] = []
    log = UploadLog(memory_bytes=100, disk_bytes=1000, spool_dir=spool, on_lost=lambda *a: lost.append(a))
    for seq in (1, 2, 3):
        assert log.put_chunk(chunk("s", seq))
    assert log.wait_spooled()
    victim = sorted(os.listdir(spool))[0]
    with open(os.path.join(spool, victim), "wb") as f:
        f.write(b"\xff" * 50)  # not a PcapChunk any more
    log.new_session()
    assert drain(log) == ["chunk:1", "gap:2:spool_error=1", "chunk:3"]
    assert lost == [("c", "s", "spool_error", 1)]
    assert log.pending() == (3, 200)


def test_a_spool_write_that_fails_becomes_a_gap(tmp_path: str) -> None:
    spool = os.path.join(tmp_path, "spool")
    log = UploadLog(memory_bytes=100, disk_bytes=1000, spool_dir=spool)
    os.rmdir(spool)  # writes into it fail from now on
    assert log.put_chunk(chunk("s", 1))
    log.put_chunk(chunk("s", 2))  # written by the spool writer: its failure comes after
    assert log.wait_spooled()
    log.new_session()
    assert drain(log) == ["chunk:1", "gap:2:spool_error=1"]
    assert log.pending() == (2, 100)


def test_gaps_hold_no_room_and_count_no_stream_as_a_holder() -> None:
    log = UploadLog(memory_bytes=1000)
    gap = EncodedChunk.build(ingest_pb2.PcapChunk(capture_id="c", stream_id="g", seq=1,
                                                  lost=common_pb2.PodcapDrops(out_of_memory=3)))
    assert log.put_chunk(gap)
    assert log.held() == {} and log.pending() == (1, 0)


def test_nothing_is_given_up_when_it_would_not_make_room() -> None:
    """A holds the buffer, mostly already sent; B's chunk would not fit even if A's unsent chunk gave way: only
    B's chunk becomes a gap, A keeps its data."""
    log = UploadLog(memory_bytes=1000)
    for seq in range(1, 10):
        log.put_chunk(chunk("a", seq))
    log.new_session()
    drain(log)  # nine sent, not acknowledged
    log.put_chunk(chunk("a", 10))  # unsent
    assert not log.put_chunk(chunk("b", 1, size=300))
    log.new_session()
    assert drain(log)[-2:] == ["chunk:10", "gap:1:buffer_full=1"]


def test_no_spool_file_is_written_read_or_deleted_under_the_lock(
    tmp_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The capture loop, the sender and acknowledgements share the log's lock: the disk is touched only outside it
    (writes when a chunk spills, reads when it is sent, unlinks when it is acknowledged or evicted)."""
    spool = os.path.join(tmp_path, "spool")
    log = UploadLog(memory_bytes=100, disk_bytes=200, spool_dir=spool)
    touched: list[str] = []

    def checked(what: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            assert not log._cond._is_owned(), f"{what} under the upload log's lock"  # type: ignore[attr-defined]
            touched.append(what)
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(upload_log, "open", checked("open", open), raising=False)
    monkeypatch.setattr(upload_log.os, "unlink", checked("unlink", os.unlink))
    log.put(started("a"))
    log.put(started("b"))
    log.put_chunk(chunk("a", 1))  # memory
    log.put_chunk(chunk("a", 2))  # disk
    log.put_chunk(chunk("b", 1))  # disk
    assert log.wait_spooled()
    log.put_chunk(chunk("b", 2, size=50))  # disk, room made by evicting a:2 (a holds more than its share)
    assert log.wait_spooled()
    assert drain(log) == ["pod_event:2", "pod_event:2", "chunk:1", "gap:2:buffer_full=1", "chunk:1", "chunk:2"]
    ack(log, "a", 2)
    ack(log, "b", 2)
    assert log.pending() == (0, 0) and os.listdir(spool) == []
    assert touched.count("open") == 5 and touched.count("unlink") == 3  # 3 writes + 2 reads; 1 eviction + 2 acks


def test_a_chunk_larger_than_the_collector_accepts_goes_as_a_counted_gap() -> None:
    """A message past the collector's limit would end the session, and again after every reconnect: it travels as
    a gap counted ``rejected`` instead, and the stream goes on."""
    lost: list[tuple[str, str, str, int]] = []
    log = UploadLog(memory_bytes=1 << 20, on_lost=lambda *a: lost.append(a))
    log.max_message = 4000
    log.put(started("s"))
    log.put_chunk(chunk("s", 1, size=100))
    log.put_chunk(chunk("s", 2, size=5000))
    log.put_chunk(chunk("s", 3, size=100))
    assert drain(log) == ["pod_event:2", "chunk:1", "gap:2:rejected=1", "chunk:3"]
    assert lost == [("c", "s", "rejected", 1)]
    log.new_session()  # a reconnect re-sends the gap, never the chunk
    assert drain(log) == ["pod_event:2", "chunk:1", "gap:2:rejected=1", "chunk:3"]


def test_quarantine_turns_the_largest_sent_unacknowledged_chunk_into_a_gap() -> None:
    lost: list[tuple[str, str, str, int]] = []
    log = UploadLog(memory_bytes=1 << 20, on_lost=lambda *a: lost.append(a))
    log.put(started("s"))
    for seq, size in ((1, 100), (2, 3000), (3, 200)):
        log.put_chunk(chunk("s", seq, size=size))
    drain(log)  # all sent
    assert not log.acked_in_session()
    assert log.quarantine() == (2, 3000)
    log.new_session()
    assert drain(log) == ["pod_event:2", "chunk:1", "gap:2:rejected=1", "chunk:3"]
    assert lost == [("c", "s", "rejected", 1)]
    assert log.quarantine() == (3, 200)  # each refusal removes one suspect: it cannot go on for ever
    assert log.quarantine() == (1, 100)
    assert log.quarantine() is None


def test_held_data_is_reported_per_stream() -> None:
    log = UploadLog(memory_bytes=1000)
    log.put_chunk(chunk("a", 1, size=300))
    log.put_chunk(chunk("a", 2, size=300))
    log.put_chunk(chunk("b", 1, size=300))
    log.put_chunk(chunk("b", 2, size=300))  # no room: a gap, its packet lost, not held
    held = {h.stream_id: (h.capture_id, h.pod_uid, h.held.chunks, h.held.bytes, h.held.packets)
            for h in log.held_by_stream()}
    assert held == {"a": ("c", "u", 2, 600, 2), "b": ("c", "u", 2, 300, 1)}
    ack(log, "a", 2)
    assert [h.stream_id for h in log.held_by_stream()] == ["b"]


def test_a_chunk_waiting_for_its_spool_write_is_sent_from_memory_and_its_file_never_outlives_it(
    tmp_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool writer writes behind the capture loop: a chunk can be sent (and acknowledged) before its file is
    written; the file is then removed once written, and nothing is left on disk."""
    spool = os.path.join(tmp_path, "spool")
    log = UploadLog(memory_bytes=100, disk_bytes=1000, spool_dir=spool)
    gate = threading.Event()
    real_open = open

    def slow_open(*args: Any, **kwargs: Any) -> Any:
        gate.wait(5)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(upload_log, "open", slow_open, raising=False)
    log.put(started("s"))
    for seq in (1, 2, 3):
        assert log.put_chunk(chunk("s", seq))  # 2 and 3 wait for the writer
    assert drain(log) == ["pod_event:2", "chunk:1", "chunk:2", "chunk:3"]  # sent from memory meanwhile
    ack(log, "s", 3)
    gate.set()
    assert log.wait_spooled()
    assert os.listdir(spool) == [] and log.pending() == (0, 0)
