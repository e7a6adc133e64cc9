"""``podcap.formats.bucket.blocks``: a segment compressed in independent zstd blocks with its index at the end is
still one valid zstd stream of the original pcap file; the index gives back the file header and every block's time
range; a reader over all blocks returns the segment byte for byte, and one over a window fetches only the blocks
that overlap it; a plain object (no index) is recognised as such. The range source here is a bytes object that
counts what is fetched."""

from __future__ import annotations

import io
import struct

import pytest
import zstandard

from podcap.formats.bucket import blocks
from podcap.formats.bucket.blocks import BlockReader, encode, read_index, window
from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat, PcapFormatError, iter_records

FMT = FileFormat(1, 262144, True)


def segment(n: int) -> bytes:
    out = [FMT.header()]
    for i in range(n):
        frame = i.to_bytes(4, "big") * 30  # compressible, like real headers
        ts = 1_000_000_000_000 + i * 1_000_000
        out.append(struct.pack("<IIII", ts // 10**9, ts % 10**9, len(frame), len(frame)) + frame)
    return b"".join(out)


class Objects:
    def __init__(self, data: bytes) -> None:
        self.data, self.fetched = data, 0
        self.ranges: list[tuple[int, int]] = []

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self.fetched += length
        self.ranges.append((start, length))
        return self.data[start:start + length]

    def get_tail(self, key: str, length: int) -> tuple[bytes, int]:
        self.fetched += min(length, len(self.data))
        return self.data[-length:], len(self.data)


def test_the_object_is_the_pcap_file_for_zstd_and_indexed_for_podcap() -> None:
    raw = segment(30000)  # ~4 MB
    obj, index = encode(raw)
    assert len(index) >= 3 and len(obj) < len(raw) / 3
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(obj), read_across_frames=True) as whole:
        assert whole.read() == raw  # every frame in turn; the index's skippable frame adds nothing
    found = read_index(Objects(obj), "k")
    assert found is not None
    header, read_back = found
    assert header == raw[:FILE_HEADER_LEN] and read_back == index
    assert sum(b.packets for b in index) == 30000
    assert [b.raw_offset for b in index][0] == FILE_HEADER_LEN and index[-1].raw_offset + index[-1].raw_len == len(raw)


def test_a_reader_over_all_blocks_is_the_segment() -> None:
    raw = segment(20000)
    obj, index = encode(raw)
    reader = BlockReader(Objects(obj), "k", raw[:FILE_HEADER_LEN], index)
    assert reader.length == len(raw)
    assert reader.read(100) == raw[:100]
    reader.seek(FILE_HEADER_LEN)
    assert reader.read() == raw[FILE_HEADER_LEN:]


def test_adjacent_blocks_come_in_a_few_large_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader fetches runs of adjacent blocks with one ranged GET each (up to FETCH_BYTES), each byte once, and
    returns the segment exactly; blocks that are not adjacent (a window's, of two segments) are not joined."""
    raw = segment(60000)
    obj, index = encode(raw)
    monkeypatch.setattr(blocks, "FETCH_BYTES", 3 * max(b.obj_len for b in index))
    source = Objects(obj)
    with BlockReader(source, "k", raw[:FILE_HEADER_LEN], index) as reader:
        reader.seek(FILE_HEADER_LEN)
        assert reader.read() == raw[FILE_HEADER_LEN:]
    assert len(index) >= 7 and len(source.ranges) == -(-len(index) // 3)
    assert sorted(source.ranges) == source.ranges and source.fetched == sum(b.obj_len for b in index)
    gapped = Objects(obj)
    with BlockReader(gapped, "k", raw[:FILE_HEADER_LEN], [index[0], index[2]]) as reader:
        reader.seek(FILE_HEADER_LEN)
        reader.read()
    assert sorted(gapped.ranges) == [(b.obj_offset, b.obj_len) for b in (index[0], index[2])]


def test_a_window_fetches_only_the_blocks_it_overlaps() -> None:
    raw = segment(40000)
    obj, index = encode(raw)
    source = Objects(obj)
    since = 1_000_000_000_000 + 20000 * 1_000_000
    until = since + 500 * 1_000_000
    chosen = window(index, since, until)
    assert 1 <= len(chosen) <= 2 < len(index)
    reader = BlockReader(source, "k", raw[:FILE_HEADER_LEN], chosen)
    reader.seek(FILE_HEADER_LEN)
    data = reader.read(reader.length - FILE_HEADER_LEN)
    inside = [r.ts_ns for r in iter_records(data, FMT) if since <= r.ts_ns <= until]
    assert len(inside) == 501
    assert source.fetched == sum(b.obj_len for b in chosen) < len(obj) / 2


def test_a_plain_object_has_no_index() -> None:
    assert read_index(Objects(segment(10)), "k") is None


def test_an_index_larger_than_the_first_tail_read_is_fetched_whole(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(blocks, "TAIL_GUESS", 16)
    raw = segment(20000)
    obj, index = encode(raw)
    found = read_index(Objects(obj), "k")
    assert found is not None and found[1] == index


class Trickle(io.BytesIO):
    """A file whose reads return at most ``most`` bytes, and that remembers how far it has been read."""

    def __init__(self, data: bytes, most: int) -> None:
        super().__init__(data)
        self.most = most

    def read(self, size: int | None = -1) -> bytes:
        return super().read(self.most if size is None or size < 0 else min(size, self.most))


def test_a_segment_is_compressed_as_it_is_read() -> None:
    """``encode_stream`` gives the object ``encode`` gives, whatever the file's reads return, and reads the file
    only a few blocks ahead of what it has yielded (memory stays bounded for a segment of any size)."""
    raw = segment(60000)  # ~8 MB
    f = Trickle(raw, 333_333)  # reads end mid-record
    index: list[blocks.Block] = []
    pieces = blocks.encode_stream(f, len(raw), index)
    out = next(pieces) + next(pieces)
    assert f.tell() <= 2 * blocks.BLOCK_BYTES + blocks.READ_BYTES
    out += b"".join(pieces)
    assert (out, index) == encode(raw) and len(index) >= 7


def test_a_segment_cut_mid_record_is_refused() -> None:
    raw = segment(100)
    with pytest.raises(PcapFormatError, match="truncated record"):
        b"".join(blocks.encode_stream(io.BytesIO(raw[:-7]), len(raw) - 7, []))
    with pytest.raises(PcapFormatError, match="ended 7 bytes early"):
        b"".join(blocks.encode_stream(io.BytesIO(raw[:-7]), len(raw), []))
