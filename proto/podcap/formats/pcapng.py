"""pcapng, the one encoder: every block podcap writes (SHB, IDB, EPB, ISB) and their options, here and only here.

Why pcapng: a classic pcap file has one link type, one timestamp resolution and no room for metadata, so a
capture of many pods either loses which pod a packet belongs to or stays as one file per pod. In pcapng every pod
gets its own Interface Description Block (IDB): name ``<namespace>/<pod>``, a description with node, pod uid and
capture interface, the BPF filter, its own link type, snaplen and timestamp resolution (``if_tsresol`` 9 keeps
nanosecond inputs exact, 6 for microsecond inputs). Wireshark shows the pod as the frame's interface
(``frame.interface_name``), so a merged file can be filtered per pod.

Shape of a file written with ``PcapngWriter`` (little-endian, one section)::

    SHB  shb_hardware, shb_os, shb_userappl "podcap <version>", opt_comment "podcap capture <id>", ...
    IDB  one per input, in input order (interface id = input index)
    EPB  every record of every input, merged by timestamp; a packet may carry opt_comment (a recorder's trigger)
    ISB  one per input that has statistics, at the end

Drop counters in the ISB: ``isb_ifdrop`` carries *every* packet lost on the way (kernel ring full, interface,
and every cause of ``podcap.drops``), as dumpcap does, because it is the number Wireshark shows as "Dropped
packets"; ``isb_osdrop`` carries the kernel ring part alone, ``isb_ifrecv`` libpcap's ``ps_recv``,
``isb_usrdeliv`` the packets stored, and an ``opt_comment`` spells out the breakdown by cause (and what retention
deleted), so that received = stored + deleted + every drop can be read off the file.

Every writer of pcapng uses these functions: the CLI's file writer (``PcapngWriter``: ``get --merge``, ``get --format
pcapng``), the live stream (``podcap.collector.cli.live.stream``: the extcap and ``podcap follow``, which writes IDBs
and ISBs between packets and so calls ``idb``/``isb`` itself) and the live order's EPBs
(``podcap.collector.cli.live.order``). The C merge (``proto/podcap/native/merge.c``) writes EPBs without Python per
packet; its layout is the one of ``epb`` here, and the tests compare the two byte for byte. Which pod becomes which
interface, with what description and counters, is the CLI's (``podcap.collector.cli.get.pcapng``): this module knows
blocks, not captures.
"""

from __future__ import annotations

import platform
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO

from podcap import __version__
from podcap.drops import LABELS, Drops
from podcap.errors import InvalidInputError

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
_BLOCK_HEADER = struct.Struct("<II")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_OPT_HEADER = struct.Struct("<HH")
_SHB_BODY = struct.Struct("<IHHq")
_IDB_BODY = struct.Struct("<HHI")
_EPB_HEAD = struct.Struct("<IIIIIII")
_ISB_BODY = struct.Struct("<III")


class PcapngError(InvalidInputError):
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
    duplicates: int = 0  # second sightings of packets (seen first on another pod) this view left out


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
        if self.duplicates:
            text += (f"; {self.duplicates} packets seen first on another pod left out of this view (one copy per "
                     "packet; --all-copies keeps them)")
        return text


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


def shb(section: SectionInfo) -> bytes:
    """The Section Header Block; its section length is -1 (not known in advance: writers stream)."""
    opts = [(OPT_COMMENT, _utf8(c)) for c in section.comments]
    opts += [(SHB_HARDWARE, _utf8(section.hardware)), (SHB_OS, _utf8(section.os)),
             (SHB_USERAPPL, _utf8(section.userappl))]
    return _block(BLOCK_SHB, _SHB_BODY.pack(BYTE_ORDER_MAGIC, 1, 0, -1) + _options(opts))


def idb(info: InterfaceInfo, *, linktype: int, snaplen: int, nanosecond: bool) -> bytes:
    """An Interface Description Block: name, description, timestamp resolution (9: ns, 6: us) and filter."""
    opts = [(IF_NAME, _utf8(info.name))]
    if info.description:
        opts.append((IF_DESCRIPTION, _utf8(info.description)))
    opts.append((IF_TSRESOL, bytes([9 if nanosecond else 6])))
    if info.filter:
        # First byte 0: the filter is a libpcap filter string.
        opts.append((IF_FILTER, b"\0" + _utf8(info.filter)[: _OPT_MAX - 1]))
    return _block(BLOCK_IDB, _IDB_BODY.pack(linktype & 0xFFFF, 0, snaplen) + _options(opts))


def comment_bytes(text: str) -> bytes:
    """A comment as an option holds it: UTF-8, cut to 65535 bytes at a character boundary (what ``epb`` writes, and
    what the C merge is given for its packet comments)."""
    return _utf8(text)


def epb(interface_id: int, ts: int, data: bytes, wirelen: int, *, comments: Sequence[str] = ()) -> bytes:
    """One Enhanced Packet Block; ``ts`` in the interface's resolution; ``comments`` become its ``opt_comment``
    options, in order (Wireshark's ``frame.comment``). The C writes this layout too (``podcap_epb_write_opts`` in
    ``proto/podcap/native/podcap_native.h``: 28-byte head, data padded to 32 bits, the options, total length again);
    tests/unit/collector/cli/test_native_epb.py compares the two byte for byte."""
    pad = -len(data) % 4
    opts = _options((OPT_COMMENT, _utf8(c)) for c in comments)
    total = 32 + len(data) + pad + len(opts)
    return b"".join((_EPB_HEAD.pack(BLOCK_EPB, total, interface_id, (ts >> 32) & 0xFFFFFFFF, ts & 0xFFFFFFFF,
                                    len(data), wirelen), data, b"\0" * pad, opts, _U32.pack(total)))


def isb(interface_id: int, stats: InterfaceStats, *, divisor: int) -> bytes:
    """An Interface Statistics Block for ``stats``, timestamped at its end; times in the interface's units
    (ns // ``divisor``: 1 for nanosecond interfaces, 1000 for microsecond ones)."""
    opts = [(OPT_COMMENT, _utf8(stats.comment())),
            (ISB_STARTTIME, _ts_words(stats.start_ns // divisor)), (ISB_ENDTIME, _ts_words(stats.end_ns // divisor))]
    if stats.received is not None:
        opts.append((ISB_IFRECV, _U64.pack(stats.received)))
    opts += [(ISB_IFDROP, _U64.pack(stats.lost)), (ISB_OSDROP, _U64.pack(stats.kernel_dropped))]
    if stats.delivered is not None:
        opts.append((ISB_USRDELIV, _U64.pack(stats.delivered)))
    ts = stats.end_ns // divisor
    return _block(BLOCK_ISB, _ISB_BODY.pack(interface_id, (ts >> 32) & 0xFFFFFFFF, ts & 0xFFFFFFFF) + _options(opts))


def _ts_divisor(nanosecond: bool) -> int:
    """Nanoseconds per unit of an interface's timestamps (``if_tsresol`` 9 or 6)."""
    return 1 if nanosecond else 1000


class PcapngWriter:
    """Writes one section to a binary stream, block by block; never seeks, so ``out`` may be a pipe.

    Interfaces must all be added before the first packet (readers such as old Wireshark versions expect the IDBs
    up front), unless ``interfaces_first`` is off: a live view announces pods as they come, which the format allows
    and dumpcap/tshark handle. ``add_interface`` returns the interface id that ``write_packet`` and ``write_stats``
    take.
    """

    def __init__(self, out: IO[bytes], section: SectionInfo | None = None, *, interfaces_first: bool = True) -> None:
        self._out = out
        self._divisors: list[int] = []
        self._packets_started = False
        self._interfaces_first = interfaces_first
        out.write(shb(section or SectionInfo()))

    def add_interface(self, info: InterfaceInfo, *, linktype: int, snaplen: int, nanosecond: bool) -> int:
        if self._packets_started and self._interfaces_first:
            raise PcapngError("interfaces must be added before the first packet")
        self._out.write(idb(info, linktype=linktype, snaplen=snaplen, nanosecond=nanosecond))
        self._divisors.append(_ts_divisor(nanosecond))
        return len(self._divisors) - 1

    def write_packet(self, interface_id: int, ts_ns: int, data: bytes, wirelen: int, *,
                     comments: Sequence[str] = ()) -> None:
        self._packets_started = True
        self._out.write(epb(interface_id, ts_ns // self._divisors[interface_id], data, wirelen, comments=comments))

    def write_stats(self, interface_id: int, stats: InterfaceStats) -> None:
        self._packets_started = True
        self._out.write(isb(interface_id, stats, divisor=self._divisors[interface_id]))
