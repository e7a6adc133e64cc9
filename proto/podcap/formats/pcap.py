"""The classic PCAP file format, as carried in chunks and stored on disk: headers, and walking the records
(``podcap.formats``: the byte formats' one home).

Agents send *bare records* (16-byte record header + captured bytes), exactly what libpcap's ``pcap_dump`` writes
after the file header; the 24-byte file header is rebuilt from a ``FileFormat`` wherever a file starts. Files are
little-endian (the byte order every podcap agent writes on x86-64 and arm64). Microsecond and nanosecond
timestamps are both supported (magic ``0xa1b2c3d4`` / ``0xa1b23c4d``).

Records are walked in two ways, and only here (the C merge and the C walker apply the same checks; their
tests compare them with these):

- ``scan_records`` checks framing and counts, without looking at a packet: the collector uses it to validate a
  chunk before any byte reaches disk and to cut a chunk exactly at a packet or byte limit. It runs the C walker
  (``podcap.pcapwalk``) when that is built, else ``scan_records_python`` (same results and errors; tests compare
  them), which is kept as a line-by-line twin of the C code rather than built on the iterator below because it is
  the fallback on the ingest path and must not copy packets.
  ``count_file_records`` runs it over a whole file, mapped (a download's kept file, a benchmark's output).
- ``iter_records`` (a buffer) and ``iter_file_records`` (a file read in blocks, built on it) yield each
  ``Record`` for the read paths that need the packets: windowed reads (``podcap.formats.selection``), the CLI's
  pcapng merge and live order, recovery's valid prefix when the C walker is missing, tests and tools. Both apply
  the same checks as ``scan_records``.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from podcap import pcapwalk
from podcap.errors import InvalidInputError

MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
FILE_HEADER_LEN = 24
RECORD_HEADER_LEN = 16
MAX_SNAPLEN = 262144

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276

_FILE_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")


class PcapFormatError(InvalidInputError):
    """Bytes that are not well-formed PCAP (bad magic, a record longer than the snaplen, a truncated record)."""


@dataclass(frozen=True)
class FileFormat:
    linktype: int
    snaplen: int
    nanosecond: bool

    def header(self) -> bytes:
        """The 24-byte file header for this format (version 2.4, little-endian)."""
        magic = MAGIC_NSEC if self.nanosecond else MAGIC_USEC
        return _FILE_HEADER.pack(magic, 2, 4, 0, 0, self.snaplen, self.linktype)

    @property
    def ts_scale(self) -> int:
        """Nanoseconds per unit of the record's sub-second timestamp field."""
        return 1 if self.nanosecond else 1000


def parse_file_header(data: bytes) -> FileFormat:
    if len(data) < FILE_HEADER_LEN:
        raise PcapFormatError(f"pcap file header is {FILE_HEADER_LEN} bytes, got {len(data)}")
    magic, major, minor, _zone, _sigfigs, snaplen, linktype = _FILE_HEADER.unpack_from(data, 0)
    if magic not in (MAGIC_USEC, MAGIC_NSEC):
        raise PcapFormatError(f"not a little-endian pcap file (magic 0x{magic:08x})")
    if (major, minor) != (2, 4):
        raise PcapFormatError(f"unsupported pcap version {major}.{minor}")
    return FileFormat(linktype=linktype & 0x0FFFFFFF, snaplen=snaplen, nanosecond=magic == MAGIC_NSEC)


@dataclass(frozen=True)
class ScanResult:
    """What ``scan_records`` found: ``packets`` whole records in ``data[:length]``."""

    packets: int
    length: int
    last_ts_ns: int


def scan_records(
    data: bytes | memoryview,
    fmt: FileFormat,
    *,
    max_packets: int | None = None,
    max_bytes: int | None = None,
    until_ns: int | None = None,
) -> ScanResult:
    """Walk the records in ``data`` and check their framing.

    Stops before the record that would exceed ``max_packets`` records or ``max_bytes`` bytes, or whose timestamp
    is after ``until_ns``; otherwise every
    byte of ``data`` must belong to a whole record whose caplen is at most the snaplen and at most its wire
    length. Raises PcapFormatError on any violation, naming the offset.
    """
    if pcapwalk.available():
        return _scan_native(data, fmt, max_packets=max_packets, max_bytes=max_bytes, until_ns=until_ns)
    return scan_records_python(data, fmt, max_packets=max_packets, max_bytes=max_bytes, until_ns=until_ns)


def _scan_native(data: bytes | memoryview, fmt: FileFormat, *, max_packets: int | None, max_bytes: int | None,
                 until_ns: int | None) -> ScanResult:
    w = pcapwalk.walk(data, fmt.snaplen, fmt.ts_scale, max_packets=max_packets, max_bytes=max_bytes,
                      until_ns=until_ns)
    if w.code == pcapwalk.OK:
        return ScanResult(packets=w.packets, length=w.length, last_ts_ns=w.last_ts_ns)
    off = w.error_offset
    if w.code == pcapwalk.TRUNCATED_HEADER:
        raise PcapFormatError(f"truncated record header at offset {off}")
    if w.code == pcapwalk.BAD_CAPLEN:
        raise PcapFormatError(f"record at offset {off}: caplen {w.caplen} exceeds snaplen {fmt.snaplen} or length "
                              f"{w.wirelen}")
    raise PcapFormatError(f"truncated record at offset {off}: needs {RECORD_HEADER_LEN + w.caplen} bytes, "
                          f"{len(data) - off} left")


def scan_records_python(
    data: bytes | memoryview,
    fmt: FileFormat,
    *,
    max_packets: int | None = None,
    max_bytes: int | None = None,
    until_ns: int | None = None,
) -> ScanResult:
    """``scan_records`` in Python: the fallback when the C walker is not built, and its reference in tests."""
    if max_packets is None and max_bytes is None and until_ns is None:
        return _scan_all(data, fmt)
    unpack = _RECORD_HEADER.unpack_from
    end = len(data)
    snaplen = fmt.snaplen
    packet_cap = end if max_packets is None else max_packets
    byte_cap = end if max_bytes is None else min(end, max_bytes)
    scale = fmt.ts_scale
    off = 0
    last_off = 0
    n = 0
    while off < end and n < packet_cap:
        if off + RECORD_HEADER_LEN > end:
            raise PcapFormatError(f"truncated record header at offset {off}")
        sec, frac, incl, orig = unpack(data, off)
        nxt = off + RECORD_HEADER_LEN + incl
        if incl > snaplen or incl > orig:
            raise PcapFormatError(f"record at offset {off}: caplen {incl} exceeds snaplen {snaplen} or length {orig}")
        if nxt > end:
            raise PcapFormatError(f"truncated record at offset {off}: needs {nxt - off} bytes, {end - off} left")
        if nxt > byte_cap:
            break
        if until_ns is not None and sec * 1_000_000_000 + frac * scale > until_ns:
            break
        last_off = off
        off = nxt
        n += 1
    last = 0
    if n:
        sec, frac, _incl, _orig = unpack(data, last_off)
        last = sec * 1_000_000_000 + frac * scale
    return ScanResult(packets=n, length=off, last_ts_ns=last)


_LENGTHS = struct.Struct("<8xII")


def _scan_all(data: bytes | memoryview, fmt: FileFormat) -> ScanResult:
    """``scan_records_python`` without limits, kept as lean as Python allows."""
    unpack = _LENGTHS.unpack_from
    end = len(data)
    snaplen = fmt.snaplen
    off = last = n = 0
    try:
        while off < end:
            incl, orig = unpack(data, off)
            if incl > snaplen or incl > orig:
                raise PcapFormatError(f"record at offset {off}: caplen {incl} exceeds snaplen {snaplen} or length "
                                      f"{orig}")
            last = off
            off += 16 + incl
            n += 1
    except struct.error:
        raise PcapFormatError(f"truncated record header at offset {off}") from None
    if off > end:
        raise PcapFormatError(f"truncated record at offset {last}: needs {off - last} bytes, {end - last} left")
    ts = 0
    if n:
        sec, frac = struct.unpack_from("<II", data, last)
        ts = sec * 1_000_000_000 + frac * fmt.ts_scale
    return ScanResult(packets=n, length=off, last_ts_ns=ts)


def first_timestamp_ns(data: bytes | memoryview, fmt: FileFormat) -> int:
    """Timestamp of the first record in ``data`` (which must start at a record boundary)."""
    if len(data) < RECORD_HEADER_LEN:
        raise PcapFormatError("no record")
    sec, frac, _incl, _orig = _RECORD_HEADER.unpack_from(data, 0)
    return int(sec * 1_000_000_000 + frac * fmt.ts_scale)


@dataclass(slots=True, unsafe_hash=True)
class Record:
    """One record: its timestamp, captured and wire lengths, and captured bytes.

    ``offset`` is where its 16-byte header starts in the buffer that was walked (so that ``buf[offset:end]`` is the
    record as stored); it is left out of comparisons, so records read from different files compare by content.
    Treat it as immutable; it is not a frozen dataclass only because that would cost a merge of a million packets
    half a second (a frozen dataclass's constructor is three to four times slower).
    """

    ts_ns: int
    caplen: int
    wirelen: int
    data: bytes
    offset: int = field(default=0, compare=False)

    @property
    def end(self) -> int:
        """Offset just past this record in the buffer that was walked."""
        return self.offset + RECORD_HEADER_LEN + self.caplen


def iter_records(data: bytes | memoryview, fmt: FileFormat, *, partial_tail: bool = False,
                 base: int = 0) -> Iterator[Record]:
    """Yield every record of ``data``, a run of bare records, checking it as ``scan_records`` does.

    Raises PcapFormatError (naming the offset, ``base`` added: where ``data`` starts in its file) at a record whose
    caplen exceeds the snaplen or its wire length, and at a truncated record; with ``partial_tail`` a truncated
    record at the end ends the walk quietly instead (the caller reads more and resumes at the last ``end``).
    """
    unpack = _RECORD_HEADER.unpack_from
    end = len(data)
    snaplen = fmt.snaplen
    scale = fmt.ts_scale
    off = 0
    while off < end:
        if off + RECORD_HEADER_LEN > end:
            if partial_tail:
                return
            raise PcapFormatError(f"truncated record header at offset {base + off}")
        sec, frac, incl, orig = unpack(data, off)
        if incl > snaplen or incl > orig:
            raise PcapFormatError(f"record at offset {base + off}: caplen {incl} exceeds snaplen {snaplen} or length "
                                  f"{orig}")
        nxt = off + RECORD_HEADER_LEN + incl
        if nxt > end:
            if partial_tail:
                return
            raise PcapFormatError(f"truncated record at offset {base + off}: needs {nxt - off} bytes, {end - off} "
                                  "left")
        yield Record(sec * 1_000_000_000 + frac * scale, incl, orig, bytes(data[off + RECORD_HEADER_LEN : nxt]), off)
        off = nxt


class Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...

    def tell(self) -> int: ...


READ_BLOCK = 1 << 20


def iter_file_records(f: Readable, fmt: FileFormat, *, end: int | None = None, block_size: int = READ_BLOCK,
                      torn_tail_ok: bool = False) -> Iterator[tuple[bytes, Record]]:
    """Yield ``(block, record)`` for every record from ``f``'s position (after the file header) to ``end`` (the
    file offset to stop at; default: end of file), reading ``block_size`` bytes at a time.

    ``block[record.offset:record.end]`` is the record as stored. Memory stays at about one block whatever the
    file's size. Errors name file offsets; a truncated last record raises, or with ``torn_tail_ok`` (a segment
    still being written, a crash's torn tail) ends the walk.
    """
    base = f.tell()
    buf = b""
    while True:
        want = block_size if end is None else min(block_size, end - base - len(buf))
        block = f.read(want) if want > 0 else b""
        last = not block
        buf = buf + block if buf else block
        done = 0
        for rec in iter_records(buf, fmt, partial_tail=torn_tail_ok or not last, base=base):
            yield buf, rec
            done = rec.end
        if last:
            return
        base += done
        buf = buf[done:]


def count_file_records(path: str) -> int:
    """Records in the pcap file at ``path``, every one checked as ``scan_records`` does, without reading the file
    into memory (it is mapped and walked, in C when built). Raises PcapFormatError for a file that is not whole,
    well-formed pcap."""
    with open(path, "rb") as f:
        fmt = parse_file_header(f.read(FILE_HEADER_LEN))
        if os.fstat(f.fileno()).st_size == FILE_HEADER_LEN:
            return 0
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m, memoryview(m) as view:
            return scan_records(view[FILE_HEADER_LEN:], fmt).packets


def read_file(path: str) -> tuple[FileFormat, list[Record]]:
    """Read a whole pcap file: its format and its records."""
    with open(path, "rb") as f:
        blob = f.read()
    fmt = parse_file_header(blob)
    return fmt, list(iter_records(memoryview(blob)[FILE_HEADER_LEN:], fmt))


def valid_prefix_length(data: bytes | memoryview, fmt: FileFormat) -> int:
    """Length of the longest prefix of ``data`` made of whole, well-formed records (crash recovery)."""
    if pcapwalk.available():
        w = pcapwalk.walk(data, fmt.snaplen, fmt.ts_scale, max_packets=None, max_bytes=None, until_ns=None)
        return w.length if w.code == pcapwalk.OK else w.error_offset
    good = 0
    try:
        for rec in iter_records(data, fmt, partial_tail=True):
            good = rec.end
    except PcapFormatError:
        pass  # a bad caplen ends the prefix like a torn record
    return good
