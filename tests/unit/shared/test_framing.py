"""podcap.framing, the one hand-written protobuf framing: its varints are protobuf's, its field numbers are the
generated descriptors', and the tags the C chunk writer (proto/podcap/native/chunks.c) hard-codes match them too."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given
from hypothesis import strategies as st

from podcap import framing
from podcap.agent.capture import chunkbuf
from podcap.v1 import ingest_pb2

_LEN_TYPES = (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_STRING)


def _field(message: type[ingest_pb2.AgentMessage] | type[ingest_pb2.PcapChunk], name: str) -> FieldDescriptor:
    return message.DESCRIPTOR.fields_by_name[name]


def test_the_c_writer_tags_match_the_descriptors() -> None:
    tags = chunkbuf.native_tags()
    assert tags is not None, "podcap's C library (podcap._native_*) is not built: is a C compiler installed?"
    chunk, records = _field(ingest_pb2.AgentMessage, "chunk"), _field(ingest_pb2.PcapChunk, "records")
    # Both are length-delimited on the wire (a message, bytes), so the C writer's wire type 2 is right ...
    assert chunk.type == FieldDescriptor.TYPE_MESSAGE and records.type == FieldDescriptor.TYPE_BYTES
    # ... and its numbers are the contract's.
    assert tags == (framing.tag(chunk.number, framing.LEN), framing.tag(records.number, framing.LEN))
    # The C prefix holds each tag in one byte.
    assert all(t < 0x80 for t in tags)


@pytest.mark.parametrize(("constant", "message", "name"), [
    (framing.AGENT_MESSAGE_CHUNK, ingest_pb2.AgentMessage, "chunk"),
    (framing.AGENT_MESSAGE_CHUNKS, ingest_pb2.AgentMessage, "chunks"),
    (framing.CHUNK_BATCH_CHUNKS, ingest_pb2.ChunkBatch, "chunks"),
    (framing.PCAP_CHUNK_RECORDS, ingest_pb2.PcapChunk, "records"),
])
def test_the_python_field_numbers_are_length_delimited_fields_of_the_contract(
    constant: int, message: type[ingest_pb2.AgentMessage], name: str
) -> None:
    field = message.DESCRIPTOR.fields_by_name[name]
    assert constant == field.number
    assert field.type in _LEN_TYPES


@given(st.integers(0, (1 << 64) - 1))
def test_varints_are_protobufs(n: int) -> None:
    # PcapChunk.seq is a uint64 field: its serialization is its tag, then the varint.
    wire = ingest_pb2.PcapChunk(seq=n).SerializeToString() if n else b""
    ours = framing.encode_varint(framing.tag(_field(ingest_pb2.PcapChunk, "seq").number, framing.VARINT))
    ours += framing.encode_varint(n)
    if n:
        assert ours == wire
    assert framing.decode_varint(ours, 1, len(ours)) == (n, len(ours))


@given(st.integers(1, (1 << 64) - 1))
def test_a_varint_cut_short_is_an_error(n: int) -> None:
    raw = framing.encode_varint(n)
    with pytest.raises(framing.FramingError):
        framing.decode_varint(raw, 0, len(raw) - 1)


def test_an_over_long_varint_is_an_error() -> None:
    with pytest.raises(framing.FramingError):
        framing.decode_varint(b"\xff" * 10 + b"\x01", 0, 11)


@given(st.binary(max_size=300))
def test_a_length_delimited_header_frames_a_field_protobuf_reads(body: bytes) -> None:
    chunk = ingest_pb2.PcapChunk(records=body)
    body_wire = chunk.SerializeToString()
    wire = framing.len_header(framing.AGENT_MESSAGE_CHUNK, len(body_wire)) + body_wire
    assert ingest_pb2.AgentMessage.FromString(wire).chunk == chunk
    assert wire[framing.skip_len_header(wire):] == body_wire
