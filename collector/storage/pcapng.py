"""pcapng output: per-pod pcap files merged into one time-ordered pcapng file where each pod is an interface.

Why pcapng: a classic pcap file has one link type, one timestamp resolution and no room for metadata, so a
capture of many pods either loses which pod a packet belongs to or stays as one file per pod. In pcapng every pod
gets its own Interface Description Block (IDB): name ``<namespace>/<pod>``, a description with node, pod uid and
capture interface, the BPF filter, its own link type, snaplen and timestamp resolution (``if_tsresol`` 9 keeps
nanosecond inputs exact, 6 for microsecond inputs). Wireshark shows the pod as the frame's interface
(``frame.interface_name``), so a merged file can be filtered per pod.

Shape of a file written here (little-endian, one section)::

    SHB  shb_hardware, shb_os, shb_userappl "podcap <version>", opt_comment "podcap capture <id>", ...
    IDB  one per input, in input order (interface id = input index)
    EPB  every record of every input, merged by timestamp
    ISB  one per input that has statistics, at the end

Memory stays bounded whatever the capture size: inputs are read record by record through buffered files and
``heapq.merge`` holds one record per input. Ties (equal timestamps) keep input order, and each input's own order
is kept; an input whose records are not time-ordered (a clock step on a node) is merged as it is, never sorted
in memory.

Drop counters in the ISB: ``isb_ifdrop`` carries *every* packet lost on the way (kernel ring full, interface,
and every cause of ``podcap.drops``), as dumpcap does, because it is the number Wireshark shows as "Dropped
packets"; ``isb_osdrop`` carries the kernel ring part alone, ``isb_ifrecv`` libpcap's ``ps_recv``,
``isb_usrdeliv`` the packets stored, and an ``opt_comment`` spells out the breakdown by cause (and what retention
deleted), so that received = stored + deleted + every drop can be read off the file.

``read_pcapng`` is a small reader for files written here (tests and tools), not a general pcapng parser.
"""

from __future__ import annotations

import heapq
import os
import platform
import resource
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

from podcap import __version__
from podcap.drops import LABELS, Drops
from podcap.pcapfile import FILE_HEADER_LEN, FileFormat, PcapFormatError, iter_file_records, parse_file_header

BLOCK_SHB = 0x0A0D0D0A
BLOCK_IDB = 0x00000001
BLOCK_ISB = 0x00000005
BLOCK_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_HARDWARE = 2
SHB_OS = 3
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
IF_FILTER = 11
ISB_STARTTIME = 2
ISB_ENDTIME = 3
ISB_IFRECV = 4
ISB_IFDROP = 5
ISB_FILTERACCEPT = 6
ISB_OSDROP = 7
ISB_USRDELIV = 8

_OPT_MAX = 0xFFFF
_READ_BUFFER = 1 << 20
_BLOCK_HEADER = struct.Struct("<II")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_OPT_HEADER = struct.Struct("<HH")
_SHB_BODY = struct.Struct("<IHHq")
_IDB_BODY = struct.Struct("<HHI")
_EPB_HEAD = struct.Struct("<IIIIIII")
_ISB_BODY = struct.Struct("<III")


class PcapngError(ValueError):
    """A pcapng file that this module cannot read (or a value that cannot be written); the message says which."""


@dataclass(frozen=True)
class SectionInfo:
    """What the Section Header says about the whole file."""

    comments: tuple[str, ...] = ()
    userappl: str = f"podcap {__version__}"
    hardware: str = field(default_factory=platform.machine)
    os: str = field(default_factory=lambda: f"{platform.system()} {platform.release()}")


@dataclass(frozen=True)
class InterfaceInfo:
    """One interface (one pod): its IDB name, description and capture filter."""

    name: str
    description: str = ""
    filter: str = ""


@dataclass(frozen=True)
class InterfaceStats:
    """Counters for an ISB. Times are ns since the epoch; ``None`` leaves a counter out."""

    start_ns: int
    end_ns: int
    received: int | None = None
    kernel_dropped: int = 0
    if_dropped: int = 0
    drops: Drops = field(default_factory=Drops)
    delivered: int | None = None
    retired: int = 0  # deleted by retention (neither stored nor dropped)

    @property
    def lost(self) -> int:
        return self.kernel_dropped + self.if_dropped + self.drops.total()

    def comment(self) -> str:
        parts = [f"kernel ring full {self.kernel_dropped}", f"interface {self.if_dropped}"]
        parts += [f"{LABELS[c]} {n}" for c, n in self.drops.nonzero().items()]
        text = f"dropped {self.lost}: " + ", ".join(parts)
        if self.delivered is not None:
            text += f"; stored {self.delivered}"
        if self.retired:
            text += f"; deleted by retention {self.retired}"
        return text


@dataclass(frozen=True)
class MergeInput:
    """A classic pcap file (``podcap.pcapfile`` format) and the interface it becomes."""

    path: str
    interface: InterfaceInfo
    stats: InterfaceStats | None = None


# ---- writing ----


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8, cut to what one option can hold (at a character boundary)."""
    raw = text.encode()
    if len(raw) <= _OPT_MAX:
        return raw
    return raw[:_OPT_MAX].decode(errors="ignore").encode()


def _options(opts: Iterable[tuple[int, bytes]]) -> bytes:
    parts: list[bytes] = []
    for code, value in opts:
        if len(value) > _OPT_MAX:
            raise PcapngError(f"option {code} is {len(value)} bytes, at most {_OPT_MAX}")
        parts += (_OPT_HEADER.pack(code, len(value)), value, b"\0" * (-len(value) % 4))
    if parts:
        parts.append(_OPT_HEADER.pack(OPT_ENDOFOPT, 0))
    return b"".join(parts)


def _block(block_type: int, body: bytes) -> bytes:
    """A whole block: type, total length, body padded to 32 bits, total length again."""
    pad = b"\0" * (-len(body) % 4)
    total = 12 + len(body) + len(pad)
    return b"".join((_BLOCK_HEADER.pack(block_type, total), body, pad, _U32.pack(total)))


def _ts_words(ts: int) -> bytes:
    """A 64-bit timestamp as pcapng stores it: high 32 bits, then low 32 bits."""
    return struct.pack("<II", (ts >> 32) & 0xFFFFFFFF, ts & 0xFFFFFFFF)


class PcapngWriter:
    """Writes one section to a binary stream, block by block; never seeks, so ``out`` may be a pipe.

    Interfaces must all be added before the first packet (readers such as old Wireshark versions expect the IDBs
    up front); ``add_interface`` returns the interface id that ``write_packet`` and ``write_stats`` take.
    """

    def __init__(self, out: IO[bytes], section: SectionInfo | None = None) -> None:
        self._out = out
        self._divisors: list[int] = []
        self._packets_started = False
        section = section or SectionInfo()
        opts = [(OPT_COMMENT, _utf8(c)) for c in section.comments]
        opts += [(SHB_HARDWARE, _utf8(section.hardware)), (SHB_OS, _utf8(section.os)),
                 (SHB_USERAPPL, _utf8(section.userappl))]
        # Section length -1: not known in advance (the writer streams).
        out.write(_block(BLOCK_SHB, _SHB_BODY.pack(BYTE_ORDER_MAGIC, 1, 0, -1) + _options(opts)))

    def add_interface(self, info: InterfaceInfo, *, linktype: int, snaplen: int, nanosecond: bool) -> int:
        if self._packets_started:
            raise PcapngError("interfaces must be added before the first packet")
        opts = [(IF_NAME, _utf8(info.name))]
        if info.description:
            opts.append((IF_DESCRIPTION, _utf8(info.description)))
        opts.append((IF_TSRESOL, bytes([9 if nanosecond else 6])))
        if info.filter:
            # First byte 0: the filter is a libpcap filter string.
            opts.append((IF_FILTER, b"\0" + _utf8(info.filter)[: _OPT_MAX - 1]))
        body = _IDB_BODY.pack(linktype & 0xFFFF, 0, snaplen) + _options(opts)
        self._out.write(_block(BLOCK_IDB, body))
        self._divisors.append(1 if nanosecond else 1000)
        return len(self._divisors) - 1

    def write_packet(self, interface_id: int, ts_ns: int, data: bytes, wirelen: int) -> None:
        self._packets_started = True
        ts = ts_ns // self._divisors[interface_id]
        pad = -len(data) % 4
        total = 32 + len(data) + pad
        self._out.write(b"".join((
            _EPB_HEAD.pack(BLOCK_EPB, total, interface_id, (ts >> 32) & 0xFFFFFFFF, ts & 0xFFFFFFFF, len(data),
                           wirelen),
            data, b"\0" * pad, _U32.pack(total),
        )))

    def write_stats(self, interface_id: int, stats: InterfaceStats) -> None:
        self._packets_started = True
        div = self._divisors[interface_id]
        opts = [(OPT_COMMENT, _utf8(stats.comment())),
                (ISB_STARTTIME, _ts_words(stats.start_ns // div)), (ISB_ENDTIME, _ts_words(stats.end_ns // div))]
        if stats.received is not None:
            opts.append((ISB_IFRECV, _U64.pack(stats.received)))
        opts += [(ISB_IFDROP, _U64.pack(stats.lost)), (ISB_OSDROP, _U64.pack(stats.kernel_dropped))]
        if stats.delivered is not None:
            opts.append((ISB_USRDELIV, _U64.pack(stats.delivered)))
        ts = stats.end_ns // div
        body = _ISB_BODY.pack(interface_id, (ts >> 32) & 0xFFFFFFFF, ts & 0xFFFFFFFF) + _options(opts)
        self._out.write(_block(BLOCK_ISB, body))


# ---- merging ----


def _pcap_records(f: IO[bytes], path: str, fmt: FileFormat) -> Iterator[tuple[int, int, bytes]]:
    """(timestamp ns, wire length, captured bytes) of each record after the file header, read as needed."""
    try:
        for _block, rec in iter_file_records(f, fmt, block_size=_READ_BUFFER):
            yield rec.ts_ns, rec.wirelen, rec.data
    except PcapFormatError as e:
        raise PcapFormatError(f"{path}: {e}") from e


def _ensure_open_files(n: int) -> None:
    """Raise the soft limit on open files when a merge of many pods needs more than it allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise PcapngError(f"merging {n} files needs {want} open files; the limit is {hard} "
                              "(raise it with ulimit -n, or download fewer pods)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def merge_pcaps(inputs: Sequence[MergeInput], out: IO[bytes], *, section: SectionInfo | None = None) -> list[int]:
    """Write ``inputs`` to ``out`` as one pcapng section, packets ordered by time; return packets per input.

    Each input becomes interface ``i`` with the input's own link type, snaplen and timestamp resolution; the
    ISBs of inputs with ``stats`` follow the last packet. Raises PcapFormatError for a malformed input (naming
    the file) and OSError for I/O failures.
    """
    _ensure_open_files(len(inputs))
    files: list[IO[bytes]] = []
    try:
        writer = PcapngWriter(out, section)
        streams: list[Iterator[tuple[int, int, int, bytes]]] = []
        for inp in inputs:
            # Unbuffered: the record walk reads in blocks of its own (one block per input held at a time).
            f = open(inp.path, "rb", buffering=0)  # noqa: SIM115 (closed in finally)
            files.append(f)
            try:
                fmt = parse_file_header(f.read(FILE_HEADER_LEN))
            except PcapFormatError as e:
                raise PcapFormatError(f"{inp.path}: {e}") from e
            iface = writer.add_interface(inp.interface, linktype=fmt.linktype, snaplen=fmt.snaplen,
                                         nanosecond=fmt.nanosecond)
            streams.append(_tagged(iface, _pcap_records(f, inp.path, fmt)))
        counts = [0] * len(inputs)
        write = writer.write_packet
        for ts, iface, wirelen, data in heapq.merge(*streams, key=_timestamp):
            write(iface, ts, data, wirelen)
            counts[iface] += 1
        for i, inp in enumerate(inputs):
            if inp.stats is not None:
                writer.write_stats(i, inp.stats)
        return counts
    finally:
        for opened in files:
            opened.close()


def _tagged(iface: int, records: Iterator[tuple[int, int, bytes]]) -> Iterator[tuple[int, int, int, bytes]]:
    for ts, wirelen, data in records:
        yield ts, iface, wirelen, data


def _timestamp(item: tuple[int, int, int, bytes]) -> int:
    return item[0]


def pcap_to_pcapng(src: str, dst: str, interface: InterfaceInfo, *, stats: InterfaceStats | None = None,
                   section: SectionInfo | None = None) -> int:
    """Convert one pcap file into a one-interface pcapng file (written to ``dst.part``, then renamed)."""
    part = dst + ".part"
    try:
        with open(part, "wb") as out:
            n = merge_pcaps([MergeInput(src, interface, stats)], out, section=section)[0]
        os.replace(part, dst)
    except BaseException:
        if os.path.exists(part):
            os.unlink(part)
        raise
    return n


# ---- reading (files written here) ----


@dataclass
class Interface:
    linktype: int
    snaplen: int
    options: dict[int, list[bytes]]

    @property
    def name(self) -> str:
        return self.options.get(IF_NAME, [b""])[0].decode()

    @property
    def description(self) -> str:
        return self.options.get(IF_DESCRIPTION, [b""])[0].decode()

    @property
    def filter(self) -> str:
        raw = self.options.get(IF_FILTER, [b"\0"])[0]
        return raw[1:].decode()

    @property
    def tsresol(self) -> int:
        """Digits after the decimal point of the timestamp unit (6 = microseconds, 9 = nanoseconds)."""
        raw = self.options.get(IF_TSRESOL, [b"\x06"])[0]
        if raw[0] & 0x80:
            raise PcapngError("binary timestamp resolutions are not supported")
        return raw[0]


@dataclass(frozen=True)
class Packet:
    interface_id: int
    ts_ns: int
    wirelen: int
    data: bytes


@dataclass(frozen=True)
class Stats:
    interface_id: int
    ts_ns: int
    options: dict[int, list[bytes]]

    def counter(self, code: int) -> int | None:
        values = self.options.get(code)
        return int(_U64.unpack(values[0])[0]) if values else None

    def time_ns(self, code: int, tsresol: int) -> int | None:
        values = self.options.get(code)
        if not values:
            return None
        high, low = struct.unpack("<II", values[0])
        return int(((high << 32) | low) * 10 ** (9 - tsresol))


@dataclass
class PcapngFile:
    section_options: dict[int, list[bytes]]
    interfaces: list[Interface]
    packets: list[Packet]
    stats: list[Stats]

    @property
    def comments(self) -> list[str]:
        return [c.decode() for c in self.section_options.get(OPT_COMMENT, [])]


def _parse_options(body: bytes, offset: int) -> dict[int, list[bytes]]:
    opts: dict[int, list[bytes]] = {}
    while offset + 4 <= len(body):
        code, length = _OPT_HEADER.unpack_from(body, offset)
        if code == OPT_ENDOFOPT:
            break
        value = body[offset + 4 : offset + 4 + length]
        if len(value) != length:
            raise PcapngError(f"option {code} runs past the end of its block")
        opts.setdefault(code, []).append(value)
        offset += 4 + length + (-length % 4)
    return opts


def iter_blocks(f: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(block type, body) of each block of a little-endian pcapng stream."""
    while True:
        head = f.read(8)
        if not head:
            return
        if len(head) < 8:
            raise PcapngError("truncated block header")
        block_type, total = _BLOCK_HEADER.unpack(head)
        if total < 12 or total % 4:
            raise PcapngError(f"bad block length {total}")
        rest = f.read(total - 8)
        if len(rest) != total - 8:
            raise PcapngError("truncated block")
        if _U32.unpack_from(rest, len(rest) - 4)[0] != total:
            raise PcapngError("block trailer length does not match its header")
        yield block_type, rest[:-4]


def read_pcapng(path: str) -> PcapngFile:
    """Read a whole (single-section, little-endian) pcapng file into memory; for tests and small files."""
    result = PcapngFile({}, [], [], [])
    with open(path, "rb") as f:
        for block_type, body in iter_blocks(f):
            if block_type == BLOCK_SHB:
                magic, major, _minor, _length = _SHB_BODY.unpack_from(body, 0)
                if magic != BYTE_ORDER_MAGIC or major != 1:
                    raise PcapngError(f"not a little-endian pcapng 1.x section (magic 0x{magic:08x})")
                result.section_options = _parse_options(body, _SHB_BODY.size)
            elif block_type == BLOCK_IDB:
                linktype, _reserved, snaplen = _IDB_BODY.unpack_from(body, 0)
                result.interfaces.append(Interface(linktype, snaplen, _parse_options(body, _IDB_BODY.size)))
            elif block_type == BLOCK_EPB:
                iface, high, low, caplen, wirelen = struct.unpack_from("<IIIII", body, 0)
                scale = 10 ** (9 - result.interfaces[iface].tsresol)
                result.packets.append(Packet(iface, ((high << 32) | low) * scale, wirelen, body[20 : 20 + caplen]))
            elif block_type == BLOCK_ISB:
                iface, high, low = _ISB_BODY.unpack_from(body, 0)
                scale = 10 ** (9 - result.interfaces[iface].tsresol)
                result.stats.append(Stats(iface, ((high << 32) | low) * scale, _parse_options(body, _ISB_BODY.size)))
    return result
