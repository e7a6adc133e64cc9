"""Chunks serialized once, where they are made.

A chunk's records are the bulk of what the agent sends. The capture engine produces each chunk as the finished wire
bytes of ``AgentMessage{chunk: PcapChunk}`` (``proto/podcap/native/chunks.c``), and everything downstream (the upload
log, the disk spool, batching, gRPC) moves those bytes as they are: ``EncodedChunk`` carries them with the few fields
the agent itself needs (its other fields, ``meta``). ``serialize`` is the session's gRPC request serializer: bytes pass
through, messages are serialized as usual. The framing (varints, tags) is ``podcap.framing``'s, shared with the
collector's decoder.

A chunk whose records cannot be kept (no room in the upload buffer, its spool file unreadable) still takes its
place in the stream: ``EncodedChunk.gap`` is the same chunk without records, its packets counted in ``lost`` under
the cause. The collector records the gap and stores what follows; no sequence number is ever skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from podcap import framing
from podcap.drops import Drops
from podcap.v1 import ingest_pb2


class LazyWire(Protocol):
    """A serialized message made into ``bytes`` only when first asked for (``chunkbuf.NativeWire``: the capture
    thread hands over its C buffer, and the thread that sends or spools the chunk makes the bytes)."""

    def __len__(self) -> int: ...

    def materialize(self) -> bytes: ...


@dataclass(frozen=True)
class EncodedChunk:
    """A chunk as it travels: ``wire`` is the serialized ``AgentMessage`` holding exactly this chunk (given as bytes,
    or as a ``LazyWire`` made into bytes on first use); ``meta`` is the chunk's every field but ``records`` (never
    modified); ``size`` its record bytes (what the upload log's memory and disk caps count; 0 for a gap)."""

    meta: ingest_pb2.PcapChunk
    size: int
    source: bytes | LazyWire

    @property
    def wire(self) -> bytes:
        src = self.source
        return src if isinstance(src, bytes) else src.materialize()

    @property
    def wire_len(self) -> int:
        """The message's length (without making its bytes)."""
        return len(self.source)

    @property
    def stream_id(self) -> str:
        return self.meta.stream_id

    @property
    def seq(self) -> int:
        return self.meta.seq

    @property
    def packets(self) -> int:
        return self.meta.packets

    @classmethod
    def build(cls, meta: ingest_pb2.PcapChunk, records: bytes = b"") -> EncodedChunk:
        """Serialize ``meta`` (no records) with these records (the fallback path, gaps, tests)."""
        full = ingest_pb2.PcapChunk()
        full.CopyFrom(meta)
        full.records = records
        return cls(_without_records(meta), len(records), ingest_pb2.AgentMessage(chunk=full).SerializeToString())

    @classmethod
    def from_message(cls, chunk: ingest_pb2.PcapChunk) -> EncodedChunk:
        """Serialize a chunk built as a protobuf message, records included (tests)."""
        return cls(_without_records(chunk), len(chunk.records),
                   ingest_pb2.AgentMessage(chunk=chunk).SerializeToString())

    @classmethod
    def from_body(cls, body: bytes) -> EncodedChunk:
        """From a serialized PcapChunk (a spool file)."""
        chunk = ingest_pb2.PcapChunk.FromString(body)
        wire = framing.len_header(framing.AGENT_MESSAGE_CHUNK, len(body)) + body
        return cls(_without_records(chunk), len(chunk.records), wire)

    def body(self) -> memoryview:
        """The serialized PcapChunk alone."""
        return memoryview(self.wire)[framing.skip_len_header(self.wire):]

    def message(self) -> ingest_pb2.PcapChunk:
        """Parsed back (tests and diagnostics only: it copies the records)."""
        return ingest_pb2.AgentMessage.FromString(self.wire).chunk

    def lost(self) -> Drops:
        """What this chunk reports lost before its records (or, for a gap, instead of them)."""
        return Drops.from_proto(self.meta.lost)

    def gap(self, cause: str) -> EncodedChunk:
        """This chunk's stand-in when its records cannot be kept: same stream and sequence number, no records, its
        packets added to ``lost`` under ``cause`` (to what it already carried)."""
        return gap_chunk(self.meta, cause, self.meta.packets)


def _without_records(chunk: ingest_pb2.PcapChunk) -> ingest_pb2.PcapChunk:
    meta = ingest_pb2.PcapChunk()
    meta.CopyFrom(chunk)
    meta.ClearField("records")
    return meta


def gap_chunk(meta: ingest_pb2.PcapChunk, cause: str, packets: int) -> EncodedChunk:
    """A chunk without records at ``meta``'s place in its stream, reporting ``packets`` more lost to ``cause``."""
    gap = ingest_pb2.PcapChunk()
    gap.CopyFrom(meta)
    gap.ClearField("records")
    gap.packets = 0
    setattr(gap.lost, cause, getattr(gap.lost, cause) + packets)
    return EncodedChunk.build(gap)


def batch(chunks: list[EncodedChunk]) -> bytes:
    """The serialized ``AgentMessage{chunks: ChunkBatch}`` of these chunks, built from their bytes."""
    inner = b"".join(framing.len_header(framing.CHUNK_BATCH_CHUNKS, len(body)) + body
                     for body in (c.body() for c in chunks))
    return framing.len_header(framing.AGENT_MESSAGE_CHUNKS, len(inner)) + inner


def serialize(msg: ingest_pb2.AgentMessage | bytes) -> bytes:
    """gRPC request serializer of the agent's session: pre-serialized messages pass through."""
    return msg if isinstance(msg, bytes) else msg.SerializeToString()
