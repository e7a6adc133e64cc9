"""Segments as they sit in the bucket: zstd-compressed in independent blocks, with a block index at the end.

An object is a sequence of zstd frames — the pcap file header as one frame, then the records in blocks of about
``BLOCK_BYTES`` (whole records), one frame each — followed by a zstd *skippable* frame holding the segment's 24-byte
file header and the block index (per block: raw offset and length, object offset and length, packets, first and last
timestamp) and, in its last 8 bytes, the index's length and a magic. Decompressors ignore skippable frames, so
``zstd -d`` of any object gives back the original pcap file; podcap instead reads the index (one ranged GET of the
object's tail) and then fetches and decompresses only the blocks a read needs — for a time window, only the blocks
whose time range overlaps it.

``encode`` turns a local segment into such an object (bytes, in memory: segments are at most a few tens of MiB);
``BlockReader`` is a seekable file over the *raw* bytes of a whole object or of a window of it; ``open_segment``
opens a stored segment either way. Objects written before compression (plain pcap files, keys not ending in
``.zst``) have no index and are read as they are. This module knows the object's bytes, not S3: it reads through a
``RangeSource`` (the collector's ``ObjectStore``, or a test's fake).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Protocol, cast

import zstandard

from podcap.errors import UnavailableError
from podcap.formats.bucket.seekable import SeekableReader
from podcap.formats.pcap import (
    FILE_HEADER_LEN,
    RECORD_HEADER_LEN,
    PcapFormatError,
    first_timestamp_ns,
    parse_file_header,
    scan_records,
)
from podcap.formats.selection import overlaps

BLOCK_BYTES = 1 << 20
READ_BYTES = 4 << 20  # what encode_stream reads of a segment file at a time
LEVEL = 3
_ENTRY = struct.Struct("<QIQIIqq")  # raw offset, raw length, object offset, object length, packets, first, last ts
_FOOTER = struct.Struct("<I4s")  # index length, magic
_MAGIC = b"PCX1"
_SKIPPABLE = struct.Struct("<II")  # zstd skippable frame: magic 0x184D2A5?, payload size
_SKIPPABLE_MAGIC = 0x184D2A5A
FETCH_BYTES = 4 << 20  # object bytes of adjacent blocks fetched with one ranged GET, at most
AHEAD = 3  # ranges fetched ahead of the one being read
TAIL_GUESS = 64 << 10  # bytes fetched from an object's end to find its index (more if the index is larger)


@dataclass(frozen=True)
class Block:
    raw_offset: int  # in the uncompressed segment (the first block starts after the 24-byte file header)
    raw_len: int
    obj_offset: int
    obj_len: int
    packets: int
    first_ts_ns: int
    last_ts_ns: int


class RangeSource(Protocol):
    def get_range(self, key: str, start: int, length: int) -> bytes: ...

    def get_tail(self, key: str, length: int) -> tuple[bytes, int]: ...


class SegmentSource(RangeSource, Protocol):
    def open(self, key: str, length: int) -> SeekableReader:
        """The object ``key`` as a seekable file of ``length`` bytes, read as it is."""
        ...


class SegmentIndexError(UnavailableError):
    """A compressed segment object without its block index (not one podcap wrote, or cut short)."""


def encode(raw: bytes) -> tuple[bytes, list[Block]]:
    """The object for a segment's bytes (file header included), and its block index (see ``encode_stream``)."""
    blocks: list[Block] = []
    return b"".join(encode_stream(io.BytesIO(raw), len(raw), blocks)), blocks


def encode_stream(f: BinaryIO, length: int, blocks: list[Block]) -> Iterator[bytes]:
    """The object for the first ``length`` bytes of the segment file ``f`` (file header included), piece by piece,
    reading the file as it goes: memory stays at a few blocks for a segment of any size. ``blocks`` receives the
    block index. Blocks are cut at record boundaries by the C walker (no Python per record); a file that does not end
    on a whole record raises ``PcapFormatError``."""
    header = f.read(FILE_HEADER_LEN)
    fmt = parse_file_header(header)
    cctx = zstandard.ZstdCompressor(level=LEVEL)
    first: bytes = cctx.compress(header)
    yield first
    obj_at, raw_at, left = len(first), FILE_HEADER_LEN, length - FILE_HEADER_LEN
    pending = bytearray()
    need = BLOCK_BYTES + RECORD_HEADER_LEN + fmt.snaplen  # at hand before cutting a block: a whole one, at least
    while left > 0 or pending:
        if left > 0 and len(pending) < need:
            data = f.read(min(READ_BYTES, left))
            if not data:
                raise PcapFormatError(f"the segment ended {left} bytes early")
            pending += data
            left -= len(data)
            continue
        with memoryview(pending) as view:  # PcapFormatError when the file does not end on a whole record
            scan = scan_records(view, fmt, max_bytes=BLOCK_BYTES)
            if scan.length == 0:  # one record larger than a block (not with snaplen <= 256 KiB): alone
                scan = scan_records(view, fmt, max_packets=1)
            frame: bytes = cctx.compress(view[:scan.length])
            first_ts = first_timestamp_ns(view[:scan.length], fmt)
        blocks.append(Block(raw_at, scan.length, obj_at, len(frame), scan.packets, first_ts, scan.last_ts_ns))
        del pending[:scan.length]
        raw_at += scan.length
        obj_at += len(frame)
        yield frame
    payload = header + pack_index(blocks) + _FOOTER.pack(len(blocks) * _ENTRY.size, _MAGIC)
    yield _SKIPPABLE.pack(_SKIPPABLE_MAGIC, len(payload)) + payload


def read_index(source: RangeSource, key: str) -> tuple[bytes, list[Block]] | None:
    """The segment's file header and the object's block index, or None for an object without them (a plain pcap
    file)."""
    tail, size = source.get_tail(key, TAIL_GUESS)
    if len(tail) < _FOOTER.size:
        return None
    index_len, magic = _FOOTER.unpack_from(tail, len(tail) - _FOOTER.size)
    if magic != _MAGIC:
        return None
    need = FILE_HEADER_LEN + index_len + _FOOTER.size
    if need > len(tail):
        tail = source.get_range(key, size - need, need)
    payload = tail[len(tail) - need:len(tail) - _FOOTER.size]
    return payload[:FILE_HEADER_LEN], unpack_index(payload[FILE_HEADER_LEN:])


def pack_index(blocks: list[Block]) -> bytes:
    """A block index as the object keeps it at its end (and the manifest's segment pages, base64-encoded)."""
    return b"".join(_ENTRY.pack(b.raw_offset, b.raw_len, b.obj_offset, b.obj_len, b.packets, b.first_ts_ns,
                                b.last_ts_ns) for b in blocks)


def unpack_index(index: bytes) -> list[Block]:
    if len(index) % _ENTRY.size:
        raise ValueError(f"a block index of {len(index)} bytes is not a whole number of {_ENTRY.size}-byte entries")
    return [Block(*_ENTRY.unpack_from(index, i)) for i in range(0, len(index), _ENTRY.size)]


class BlockReader(SeekableReader):
    """The raw bytes of a compressed object as a seekable file: the 24-byte file header, then the records of
    ``blocks`` (all of them, or those of a window) back to back; ``length`` is its size. Blocks that sit next to each
    other in the object are fetched together, up to ``FETCH_BYTES`` per ranged GET, and the next ``AHEAD`` such
    ranges are fetched while the current one is read (a window of many blocks costs a few requests, mostly in
    parallel); each block is decompressed when a read first needs it."""

    def __init__(self, source: RangeSource, key: str, header: bytes, blocks: list[Block]) -> None:
        super().__init__(FILE_HEADER_LEN + sum(b.raw_len for b in blocks))
        self.source, self.key, self.blocks = source, key, blocks
        self._header = header
        self._starts = []  # where each block starts in this file
        self._run_of: list[int] = []  # the range (run of adjacent blocks) each block is fetched with
        self._runs: list[tuple[int, int]] = []  # object offset and length of each range
        at = FILE_HEADER_LEN
        for b in blocks:
            self._starts.append(at)
            at += b.raw_len
            if self._runs and sum(self._runs[-1]) == b.obj_offset and self._runs[-1][1] + b.obj_len <= FETCH_BYTES:
                self._runs[-1] = (self._runs[-1][0], self._runs[-1][1] + b.obj_len)
            else:
                self._runs.append((b.obj_offset, b.obj_len))
            self._run_of.append(len(self._runs) - 1)
        self._fetches: dict[int, Future[bytes]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._cached: tuple[int, bytes] = (-1, b"")
        self.fetched = 0  # object bytes asked for (what a window read cost)

    def _block(self, i: int) -> bytes:
        if self._cached[0] != i:
            b = self.blocks[i]
            run = self._run_of[i]
            data = self._range(run)
            off = b.obj_offset - self._runs[run][0]
            frame = data[off:off + b.obj_len]
            self._cached = (i, zstandard.ZstdDecompressor().decompress(frame, max_output_size=b.raw_len))
        return self._cached[1]

    def _range(self, run: int) -> bytes:
        """The bytes of range ``run``, with the next ``AHEAD`` ranges on their way (earlier ones are dropped)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=AHEAD, thread_name_prefix="blocks")
        for r in list(self._fetches):
            if r < run:
                self._fetches.pop(r).cancel()
        for r in range(run, min(run + AHEAD + 1, len(self._runs))):
            if r not in self._fetches:
                start, length = self._runs[r]
                self._fetches[r] = self._pool.submit(self.source.get_range, self.key, start, length)
                self.fetched += length
        return self._fetches[run].result()

    def close(self) -> None:
        if self._pool is not None:
            for fut in self._fetches.values():
                fut.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None
            self._fetches.clear()
        super().close()

    def read(self, size: int | None = -1) -> bytes:
        size = self._wanted(size)
        out = bytearray()
        while size > 0:
            if self._pos < FILE_HEADER_LEN:
                piece = self._header[self._pos:self._pos + size]
            else:
                i = _find(self._starts, self._pos)
                data = self._block(i)
                off = self._pos - self._starts[i]
                piece = data[off:off + size]
            if not piece:
                break
            out += piece
            self._pos += len(piece)
            size -= len(piece)
        return bytes(out)


def open_segment(source: SegmentSource, key: str, length: int, since_ns: int = 0,
                 until_ns: int = 0) -> tuple[BinaryIO, int]:
    """A stored segment as a seekable file of its raw pcap bytes, and their length: for a compressed object only the
    blocks a window [since_ns, until_ns] overlaps (0: unbounded), fetched as they are read (one ranged GET of its
    tail first, for the index); a plain object as it is. (A ``SeekableReader`` is a binary file, though not
    declared as ``typing.BinaryIO``.)"""
    if not key.endswith(".zst"):
        return cast(BinaryIO, source.open(key, length)), length
    found = read_index(source, key)
    if found is None:
        raise SegmentIndexError(f"{key}: no block index at its end")
    header, blocks = found
    reader = BlockReader(source, key, header, window(blocks, since_ns, until_ns))
    return cast(BinaryIO, reader), reader.length


def window(blocks: list[Block], since_ns: int, until_ns: int) -> list[Block]:
    """The blocks whose time range overlaps [since_ns, until_ns] (0: unbounded)."""
    return [b for b in blocks if overlaps(b.first_ts_ns, b.last_ts_ns, since_ns, until_ns)]


def _find(starts: list[int], pos: int) -> int:
    lo, hi = 0, len(starts) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if starts[mid] <= pos:
            lo = mid
        else:
            hi = mid - 1
    return lo
