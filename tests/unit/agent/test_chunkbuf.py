"""The agent's C record sink (proto/podcap/native/chunks.c): byte-identical records to libpcap's own pcap_dump, and a
chunk that is the finished AgentMessage (parsed by protobuf and by the collector's zero-copy decoder)."""

from __future__ import annotations

import ctypes
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from podcap.agent.capture import chunkbuf
from podcap.agent.capture.libpcap import MemoryDump, lib
from podcap.agent.upload.encoded import EncodedChunk, batch
from podcap.collector.api.wire import IncomingChunk, decode_agent_message
from podcap.formats.pcap import FileFormat, iter_records
from podcap.v1 import ingest_pb2


class Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class PktHdr(ctypes.Structure):
    _fields_ = [("ts", Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


Handler = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(PktHdr), ctypes.c_char_p)
FMT = FileFormat(1, 65535, True)
Packet = tuple[int, int, bytes, int]  # seconds, nanoseconds, captured bytes, wire length - caplen
packets = st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 999_999_999), st.binary(max_size=3000),
                             st.integers(0, 100)), max_size=40)


def feed(sink: chunkbuf.RecordSink, pkts: list[Packet]) -> None:
    handler = Handler(sink.callback)
    for sec, frac, data, extra in pkts:
        hdr = PktHdr(Timeval(sec, frac), len(data), len(data) + extra)
        handler(sink.user, ctypes.byref(hdr), data)


def meta(seq: int, packets: int) -> ingest_pb2.PcapChunk:
    return ingest_pb2.PcapChunk(capture_id="cap-1", pod_uid="uid-1", stream_id="s-1", seq=seq, packets=packets,
                                first_ts_ns=12, last_ts_ns=34)


@settings(max_examples=150, deadline=None)
@given(packets, packets)
def test_records_match_pcap_dump_and_the_chunk_is_a_finished_message(first: list[Packet], second: list[Packet]) -> None:
    assert chunkbuf.available(), "podcap's C library (podcap._native_*) is not built: is a C compiler installed?"
    dead = lib().pcap_open_dead
    dead.restype, dead.argtypes = ctypes.c_void_p, [ctypes.c_int, ctypes.c_int]
    close = lib().pcap_close
    p = dead(1, 65535)
    buf, dump = chunkbuf.ChunkBuffer(), MemoryDump(ctypes.c_void_p(p))
    try:
        for seq, pkts in ((1, first), (2, second)):  # the second chunk reuses the emptied buffer
            feed(buf, pkts)
            feed(dump, pkts)
            assert buf.pending() == dump.pending() == sum(16 + len(d) for _, _, d, _ in pkts)
            assert buf.packets(len(pkts)) == len(pkts)
            if pkts:
                assert buf.first_ts_ns(FMT) == dump.first_ts_ns(FMT) == pkts[0][0] * 10**9 + pkts[0][1]
            ours, theirs = buf.cut(meta(seq, len(pkts))), dump.cut(meta(seq, len(pkts)))
            assert buf.pending() == 0 and dump.pending() == 0
            msg = ingest_pb2.AgentMessage.FromString(ours.wire)
            assert msg == ingest_pb2.AgentMessage.FromString(theirs.wire)  # same fields, same records
            assert msg.chunk.seq == seq and msg.chunk.stream_id == "s-1"
            assert (ours.stream_id, ours.seq, ours.packets, ours.size) == \
                (theirs.stream_id, theirs.seq, theirs.packets, theirs.size)
            recs = list(iter_records(msg.chunk.records, FMT))
            assert [(r.ts_ns, r.data, r.wirelen) for r in recs] == \
                [(s * 10**9 + f, d, len(d) + e) for s, f, d, e in pkts]
            decoded = decode_agent_message(ours.wire)
            assert isinstance(decoded, IncomingChunk) and decoded.records == msg.chunk.records
            assert decoded.meta.seq == seq
    finally:
        buf.close()
        dump.close()
        close(p)


def test_a_batch_of_encoded_chunks_parses_as_a_chunk_batch() -> None:
    chunks = [EncodedChunk.from_message(ingest_pb2.PcapChunk(stream_id=f"s{i}", seq=i, records=b"r" * i * 50,
                                                              packets=i)) for i in range(1, 5)]
    msg = ingest_pb2.AgentMessage.FromString(batch(chunks))
    assert [(c.stream_id, c.seq, len(c.records)) for c in msg.chunks.chunks] == \
        [(f"s{i}", i, i * 50) for i in range(1, 5)]
    again = EncodedChunk.from_body(bytes(chunks[2].body()))  # a spool file read back
    assert again == chunks[2]


def test_padded_length_varints_parse() -> None:
    """chunks.c writes both lengths as 5-byte varints; protobuf must read them as the same numbers."""
    buf = chunkbuf.ChunkBuffer()
    try:
        feed(buf, [(1, 2, b"x" * 5, 0)])
        wire = buf.cut(meta(1, 1)).wire
    finally:
        buf.close()
    assert wire[0] == wire[6] == 0x22  # AgentMessage.chunk, then PcapChunk.records
    assert all(b & 0x80 for b in wire[1:5]) and not wire[5] & 0x80  # a padded 5-byte varint
    assert ingest_pb2.AgentMessage.FromString(wire).chunk.records == struct.pack("<IIII", 1, 2, 5, 5) + b"x" * 5


sizes = st.lists(st.one_of(st.integers(0, 120), st.integers(1400, 1600), st.integers(8900, 9100),
                           st.integers(60000, 65535), st.integers(200000, 262144)), min_size=1, max_size=120)


@settings(max_examples=120, deadline=None)
@given(sizes, st.integers(1, 6 << 20), st.lists(st.integers(1, 50), min_size=1, max_size=6))
def test_no_chunk_exceeds_the_limit_whatever_the_mix(record_sizes: list[int], limit: int, dispatches: list[int]
                                                     ) -> None:
    """Any mix of record sizes, fed in dispatches of any length (as one pcap_dispatch can read a ring full of 64 KiB
    GSO frames after a run of ACKs), comes out as chunks of at most ``limit`` record bytes (or a single record, when
    one alone is larger), every record once, in order, each chunk a finished message."""
    buf = chunkbuf.ChunkBuffer(limit)
    pkts = [(i, i, bytes([i % 251]) * size, 0) for i, size in enumerate(record_sizes)]
    chunks: list[ingest_pb2.PcapChunk] = []
    try:
        pos = 0
        round_ = 0
        while pos < len(pkts):
            n = dispatches[round_ % len(dispatches)]
            feed(buf, pkts[pos:pos + n])
            pos += n
            round_ += 1
            while buf.ready():  # what the engine does after every dispatch
                chunks.append(ingest_pb2.AgentMessage.FromString(buf.cut(meta(len(chunks) + 1, 0)).wire).chunk)
        while buf.pending():
            chunks.append(ingest_pb2.AgentMessage.FromString(buf.cut(meta(len(chunks) + 1, 0)).wire).chunk)
        assert buf.packets_left() == 0 and buf.ready() == 0
    finally:
        buf.close()
    fmt = FileFormat(1, 262144, True)
    seen = []
    for c in chunks:
        recs = list(iter_records(c.records, fmt))
        assert recs, "a chunk holds one record at least"
        assert len(c.records) <= limit or len(recs) == 1, (len(c.records), limit)
        seen += [r.ts_ns for r in recs]
    assert seen == [i * 10**9 + i for i in range(len(pkts))]


def test_a_burst_of_large_frames_after_small_ones_is_cut_into_several_chunks() -> None:
    """The shape that wedged the agent: many ACK-sized records, then 64 KiB GSO frames, all in one dispatch."""
    limit = 4 << 20
    buf = chunkbuf.ChunkBuffer(limit)
    try:
        feed(buf, [(1, i, b"a" * 54, 0) for i in range(2000)] + [(2, i, b"b" * 65482, 0) for i in range(600)])
        assert buf.ready() >= 9  # ~39 MB of records
        sizes = []
        while buf.pending():
            sizes.append(buf.cut(meta(1, 0)).size)
        assert max(sizes) <= limit and len(sizes) >= 10 and sum(sizes) == 2000 * 70 + 600 * 65498
    finally:
        buf.close()


def test_rounds_of_closed_and_open_chunks_keep_every_record_intact() -> None:
    """Dispatches that each close some chunks and leave one open, taken round after round (each chunk in a buffer of
    its own, handed over whole): every chunk under the limit, the last one's records intact."""
    buf = chunkbuf.ChunkBuffer(10_000)
    try:
        for round_ in range(40):  # many rounds of 2.5 chunks each: closed chunks cut, the open one kept
            feed(buf, [(round_, i, bytes([i]) * 984, 0) for i in range(25)])
            while buf.ready():
                assert len(buf.cut(meta(1, 0)).wire) < 10_000 + 1100
        last = ingest_pb2.AgentMessage.FromString(buf.cut(meta(2, 0)).wire).chunk
        recs = list(iter_records(last.records, FMT))
        # 1000 records of 1000 bytes, ten to a chunk: the last chunk holds the last ten, intact.
        assert [(r.ts_ns, r.data) for r in recs] == [(39 * 10**9 + i, bytes([i]) * 984) for i in range(15, 25)]
        assert buf.pending() == 0
    finally:
        buf.close()
