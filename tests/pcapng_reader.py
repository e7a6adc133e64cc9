"""A small reader for the pcapng files ``podcap.collector.cli.get.pcapng`` writes, for tests: not a general pcapng
parser (one little-endian section, the blocks and options podcap writes). It lives with the tests because nothing
in podcap reads pcapng (it was ``read_pcapng`` in the writer's module)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from podcap.formats.pcapng import (
    BLOCK_EPB,
    BLOCK_IDB,
    BLOCK_ISB,
    BLOCK_SHB,
    BYTE_ORDER_MAGIC,
    IF_DESCRIPTION,
    IF_FILTER,
    IF_NAME,
    IF_TSRESOL,
    OPT_COMMENT,
    OPT_ENDOFOPT,
    PcapngError,
)

# The block layouts again, spelled out from the pcapng specification rather than taken from the writer, so that a
# layout mistake in the writer shows up here.
_BLOCK_HEADER = struct.Struct("<II")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_OPT_HEADER = struct.Struct("<HH")
_SHB_BODY = struct.Struct("<IHHq")
_IDB_BODY = struct.Struct("<HHI")
_ISB_BODY = struct.Struct("<III")


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
    comments: tuple[str, ...] = ()  # its opt_comment options, in order


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


def parse_options(body: bytes, offset: int) -> dict[int, list[bytes]]:
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
                result.section_options = parse_options(body, _SHB_BODY.size)
            elif block_type == BLOCK_IDB:
                linktype, _reserved, snaplen = _IDB_BODY.unpack_from(body, 0)
                result.interfaces.append(Interface(linktype, snaplen, parse_options(body, _IDB_BODY.size)))
            elif block_type == BLOCK_EPB:
                iface, high, low, caplen, wirelen = struct.unpack_from("<IIIII", body, 0)
                scale = 10 ** (9 - result.interfaces[iface].tsresol)
                opts = parse_options(body, 20 + caplen + (-caplen % 4))
                result.packets.append(Packet(iface, ((high << 32) | low) * scale, wirelen, body[20 : 20 + caplen],
                                             tuple(c.decode() for c in opts.get(OPT_COMMENT, []))))
            elif block_type == BLOCK_ISB:
                iface, high, low = _ISB_BODY.unpack_from(body, 0)
                scale = 10 ** (9 - result.interfaces[iface].tsresol)
                result.stats.append(Stats(iface, ((high << 32) | low) * scale, parse_options(body, _ISB_BODY.size)))
    return result
