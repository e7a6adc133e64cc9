"""Protobuf wire framing by hand, for the chunk path only: varints, field tags and length-delimited headers.

Chunks are the bulk of what crosses from agent to collector, so neither side lets protobuf copy their records: the
agent sends chunks as bytes it framed itself (``podcap.agent.upload.encoded``, and ``proto/podcap/native/chunks.c``
which writes the same headers in C), and the collector splits a received chunk without parsing its records
(``podcap.collector.api.wire``). Both sides frame with this module so there is one varint and one set of field
numbers; the numbers come from the generated descriptors, and ``tests/unit/shared/test_framing.py`` checks that the C
writer's hard-coded tags match them.
"""

from __future__ import annotations

from typing import Final

from podcap.errors import InvalidInputError
from podcap.v1 import ingest_pb2

# Wire types (https://protobuf.dev/programming-guides/encoding/#structure).
VARINT: Final = 0
I64: Final = 1
LEN: Final = 2
I32: Final = 5
FIXED_SIZE: Final[dict[int, int]] = {I64: 8, I32: 4}

# The fields the chunk path frames itself.
AGENT_MESSAGE_CHUNK: Final = ingest_pb2.AgentMessage.DESCRIPTOR.fields_by_name["chunk"].number
AGENT_MESSAGE_CHUNKS: Final = ingest_pb2.AgentMessage.DESCRIPTOR.fields_by_name["chunks"].number
CHUNK_BATCH_CHUNKS: Final = ingest_pb2.ChunkBatch.DESCRIPTOR.fields_by_name["chunks"].number
PCAP_CHUNK_RECORDS: Final = ingest_pb2.PcapChunk.DESCRIPTOR.fields_by_name["records"].number


class FramingError(InvalidInputError):
    """The bytes end inside a varint, or it runs past 64 bits."""


def tag(field: int, wire_type: int) -> int:
    return field << 3 | wire_type


def encode_varint(n: int) -> bytes:
    """``n`` (non-negative) as a base-128 varint."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if not n:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def decode_varint(data: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``data[pos:end]`` and the offset after it. Raises FramingError."""
    result = shift = 0
    while pos < end and shift < 64:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    raise FramingError("truncated or over-long varint")


def len_header(field: int, length: int) -> bytes:
    """Tag and length of a length-delimited field of ``length`` bytes."""
    return encode_varint(tag(field, LEN)) + encode_varint(length)


def skip_len_header(data: bytes | memoryview) -> int:
    """Offset of the payload of the length-delimited field ``data`` starts with (after its tag and length)."""
    _, pos = decode_varint(data, 0, len(data))
    _, pos = decode_varint(data, pos, len(data))
    return pos
