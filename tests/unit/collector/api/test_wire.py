"""collector.wire: the zero-copy decoder agrees with protobuf's parser on every input, and does not copy records."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from podcap.collector.api.wire import IncomingChunk, decode_agent_message
from podcap.framing import encode_varint as varint
from podcap.v1 import ingest_pb2


def _as_message(decoded: ingest_pb2.AgentMessage | IncomingChunk) -> ingest_pb2.AgentMessage:
    if isinstance(decoded, IncomingChunk):
        assert decoded.meta.records == b""
        chunk = ingest_pb2.PcapChunk()
        chunk.CopyFrom(decoded.meta)
        chunk.records = bytes(decoded.records)
        return ingest_pb2.AgentMessage(chunk=chunk)
    return decoded


def _same_as_protobuf(raw: bytes) -> None:
    try:
        expected = ingest_pb2.AgentMessage.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            decode_agent_message(raw)
        return
    got = _as_message(decode_agent_message(raw))
    assert got == expected


def test_a_lone_chunk_is_split_without_copying_its_records() -> None:
    records = bytes(range(256)) * 100
    raw = ingest_pb2.AgentMessage(chunk=ingest_pb2.PcapChunk(
        capture_id="c1", pod_uid="u1", stream_id="s1", seq=7, records=records, packets=3, first_ts_ns=-5,
        last_ts_ns=1 << 62)).SerializeToString()
    decoded = decode_agent_message(raw)
    assert isinstance(decoded, IncomingChunk)
    assert (decoded.meta.capture_id, decoded.meta.pod_uid, decoded.meta.stream_id, decoded.meta.seq) == \
        ("c1", "u1", "s1", 7)
    assert (decoded.meta.packets, decoded.meta.first_ts_ns, decoded.meta.last_ts_ns) == (3, -5, 1 << 62)
    assert decoded.records == records
    assert decoded.records.obj is raw  # a view into the received bytes, not a copy
    assert decoded.size == len(raw)  # what the collector's message limit applies to


def test_other_kinds_and_batches_go_through_protobuf() -> None:
    for msg in (ingest_pb2.AgentMessage(heartbeat=ingest_pb2.Heartbeat(sent_unix_ns=5)),
                ingest_pb2.AgentMessage(chunks=ingest_pb2.ChunkBatch(chunks=[ingest_pb2.PcapChunk(seq=1)])),
                ingest_pb2.AgentMessage()):
        decoded = decode_agent_message(msg.SerializeToString())
        assert isinstance(decoded, ingest_pb2.AgentMessage) and decoded == msg


def test_an_empty_chunk_has_empty_records() -> None:
    decoded = decode_agent_message(ingest_pb2.AgentMessage(chunk=ingest_pb2.PcapChunk(seq=1)).SerializeToString())
    assert isinstance(decoded, IncomingChunk) and decoded.records == b"" and decoded.meta.seq == 1


def _field(number: int, wire: int, payload: bytes) -> bytes:
    if wire == 2:
        payload = varint(len(payload)) + payload
    return varint(number << 3 | wire) + payload


# Chunk bodies built field by field: known and unknown fields, repeated records (the last wins), records with a
# wrong wire type, invalid UTF-8 in strings, fixed-size fields, truncated tails.
fields = st.one_of(
    st.tuples(st.sampled_from([1, 2, 8]), st.just(2), st.binary(max_size=8)),
    st.tuples(st.just(4), st.just(2), st.binary(max_size=64)),
    st.tuples(st.sampled_from([3, 5, 6, 7, 4, 99]), st.just(0), st.integers(0, 1 << 64 - 1).map(varint)),
    st.tuples(st.sampled_from([4, 9, 100]), st.sampled_from([1, 5]), st.binary(min_size=8, max_size=8)),
)
bodies = st.lists(fields, max_size=8).map(
    lambda fs: b"".join(_field(n, w, p[:4] if w == 5 else p) for n, w, p in fs))


@settings(max_examples=400, deadline=None)
@given(bodies, st.integers(0, 3), st.binary(max_size=6))
def test_decoder_agrees_with_protobuf(body: bytes, cut: int, tail: bytes) -> None:
    raw = _field(4, 2, body)
    _same_as_protobuf(raw)
    _same_as_protobuf(raw[: max(0, len(raw) - cut)])  # truncated
    _same_as_protobuf(raw + tail)  # trailing bytes: another top-level field (or garbage)
    _same_as_protobuf(_field(3, 2, b"") + raw)  # another kind first: the oneof's last field wins


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_fails_as_protobuf_fails(raw: bytes) -> None:
    _same_as_protobuf(raw)
