"""The agent's upload log: chunks kept until acknowledged, re-sent after a reconnect behind their stream's STARTED
event, spilled to disk past the memory budget, and the newest refused (and counted by the caller) past the cap."""

from __future__ import annotations

import os
import threading

from podcap.agent.encoded import EncodedChunk, serialize
from podcap.agent.spool import UploadLog
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


def drain(log: UploadLog) -> list[str]:
    """What the current session would send, batches opened up into their chunks."""
    out: list[str] = []
    for m in messages(log):
        kind = m.WhichOneof("kind")
        if kind == "chunks":
            out += [f"chunk:{c.seq}" for c in m.chunks.chunks]
        else:
            out.append(f"chunk:{m.chunk.seq}" if kind == "chunk" else f"{kind}:{m.pod_event.state}")
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


def test_spills_to_disk_then_refuses_the_newest(tmp_path: str) -> None:
    spool = os.path.join(tmp_path, "spool")
    log = UploadLog(memory_bytes=250, disk_bytes=250, spool_dir=spool)
    accepted = [log.put_chunk(chunk("s1", seq)) for seq in range(1, 7)]
    assert accepted == [True, True, True, True, False, False]  # 2 in memory, 2 on disk, then full
    assert len(os.listdir(spool)) == 2
    log.new_session()
    assert drain(log) == ["chunk:1", "chunk:2", "chunk:3", "chunk:4"]  # read back from disk in order
    ack(log, "s1", 4)
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
    log.new_session()  # reconnect before the ack: the stream's start and its chunk again
    assert drain(log) == ["pod_event:2", "chunk:1"]
    ack(log, "s1", 1)
    log.new_session()
    assert drain(log) == []  # done and acknowledged: nothing of the stream is kept


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
