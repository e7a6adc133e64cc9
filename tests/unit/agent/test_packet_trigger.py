"""The flight recorder's packet trigger in C (``struct podcap_trigger`` in proto/podcap/native/chunks.c): the real
handler fed crafted frames, the real BPF program compiled by libpcap (``pcap_open_dead``, no interface, no root). It
fires once ``count`` matches fall within ``window_ns`` of each other (packet timestamps), not before; not when they
are spread wider; the matches are consumed by a firing; non-matching packets count nothing; every packet is still
stored."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator
from ctypes import POINTER, byref, c_char_p, c_int, c_long, c_uint32, c_void_p

import pytest

from podcap.agent.capture import chunkbuf
from podcap.agent.capture.libpcap import _BpfProgram, lib

pytestmark = pytest.mark.skipif(not chunkbuf.available(), reason="podcap's C library is not built")
SEC = 1_000_000_000
RST = "tcp[tcpflags] & tcp-rst != 0"


class _Hdr(ctypes.Structure):  # struct pcap_pkthdr
    _fields_ = [("tv_sec", c_long), ("tv_usec", c_long), ("caplen", c_uint32), ("len", c_uint32)]


def tcp_frame(flags: int) -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    tcp = struct.pack("!HHIIBBHHH", 40000, 81, 1, 0, 5 << 4, flags, 1000, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, bytes([10, 0, 0, 1]),
                     bytes([10, 0, 0, 2]))
    return eth + ip + tcp


SYN, RST_ACK = tcp_frame(0x02), tcp_frame(0x14)


@pytest.fixture
def program() -> Iterator[_BpfProgram]:
    lp = lib()
    lp.pcap_open_dead.restype = c_void_p
    lp.pcap_open_dead.argtypes = [c_int, c_int]
    dead = lp.pcap_open_dead(1, 262144)
    prog = _BpfProgram()
    assert lp.pcap_compile(dead, byref(prog), RST.encode(), 1, 0xFFFFFFFF) == 0
    yield prog
    lp.pcap_freecode(byref(prog))
    lp.pcap_close(dead)


class Feeder:
    def __init__(self, prog: _BpfProgram, count: int, window_ns: int) -> None:
        self.buf = chunkbuf.ChunkBuffer()
        self.trigger = chunkbuf.PacketTriggerCounter(
            match=ctypes.cast(lib().pcap_offline_filter, c_void_p).value or 0, prog=ctypes.addressof(prog),
            count=count, window_ns=window_ns, nanosecond=True)
        self.buf.set_trigger(self.trigger)
        handler = chunkbuf._NATIVE.podcap_chunk_handler  # type: ignore[union-attr]
        handler.argtypes = [c_void_p, POINTER(_Hdr), c_char_p]
        handler.restype = None
        self._handler = handler
        self.fed = 0

    def packet(self, frame: bytes, ts_ns: int) -> None:
        hdr = _Hdr(ts_ns // SEC, ts_ns % SEC, len(frame), len(frame))
        self._handler(self.buf.user, byref(hdr), frame)
        self.fed += 1

    def close(self) -> None:
        self.buf.set_trigger(None)
        self.buf.close()


def test_fires_at_the_count_within_the_window_and_consumes(program: _BpfProgram) -> None:
    f = Feeder(program, count=3, window_ns=10 * SEC)
    try:
        t = 1000 * SEC
        f.packet(RST_ACK, t)
        f.packet(SYN, t + 1 * SEC)  # not a match
        f.packet(RST_ACK, t + 2 * SEC)
        assert f.trigger.state().fired == 0
        f.packet(RST_ACK, t + 4 * SEC)  # the third within 10 s
        st = f.trigger.state()
        assert (st.total, st.fired, st.fired_ts_ns, st.first_ts_ns) == (3, 1, t + 4 * SEC, t)
        # Consumed: two more do not fire again; a third does.
        f.packet(RST_ACK, t + 5 * SEC)
        f.packet(RST_ACK, t + 6 * SEC)
        assert f.trigger.state().fired == 1
        f.packet(RST_ACK, t + 7 * SEC)
        st = f.trigger.state()
        assert (st.total, st.fired, st.first_ts_ns) == (6, 2, t + 5 * SEC)
        assert f.buf.packets_left() == f.fed  # the trigger stores nothing less
    finally:
        f.close()


def test_matches_spread_wider_than_the_window_never_fire(program: _BpfProgram) -> None:
    f = Feeder(program, count=3, window_ns=2 * SEC)
    try:
        for i in range(20):  # one RST every 1.5 s: any three span 3 s > 2 s
            f.packet(RST_ACK, 1000 * SEC + i * 3 * SEC // 2)
        st = f.trigger.state()
        assert (st.total, st.fired) == (20, 0)
        f.packet(RST_ACK, 1000 * SEC + 19 * 3 * SEC // 2 + SEC // 10)  # two close together + the one before
        assert f.trigger.state().fired == 1
    finally:
        f.close()
