"""The system libpcap, called through ctypes, and where its packets go.

This module owns the hot path. ``pcap_dispatch(p, cnt, handler, user)`` makes libpcap call a C function for every
packet, so no Python runs per packet (~14% CPU at 600k pps, like ``tcpdump -w``). The handler is
podcap's own ``podcap_chunk_handler`` (``chunkbuf.ChunkBuffer``: records appended straight into the outgoing
message) or, when podcap's C library is not built, libpcap's ``pcap_dump`` into an ``open_memstream`` buffer
(``MemoryDump``). Either way, when ``pcap_dispatch`` returns the sink holds exactly the records it reported, so a
chunk is always whole records. ctypes releases the GIL around each foreign call, so busy Python threads cannot
starve the capture.

The handle and its dumper come from the same library (Debian's ``libpcap.so.0.8``); pcapy-ng bundles a different
libpcap whose ``pcap_t*`` is not exposed, so pcapy-ng is used only to compile filters without an interface.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from ctypes import POINTER, Structure, byref, c_char_p, c_int, c_size_t, c_uint, c_void_p
from dataclasses import dataclass

from podcap.agent.capture import chunkbuf
from podcap.agent.upload.encoded import EncodedChunk
from podcap.errors import ResourceError
from podcap.formats.pcap import FileFormat, first_timestamp_ns
from podcap.v1 import ingest_pb2

PCAP_ERRBUF_SIZE = 256
PCAP_TSTAMP_PRECISION_NANO = 1
PCAP_ERROR_NO_SUCH_DEVICE = -5
PCAP_ERROR_PERM_DENIED = -8


class PcapError(ResourceError):
    """A libpcap call failed; the message is libpcap's own text."""


class _PcapStat(Structure):
    _fields_ = [("ps_recv", c_uint), ("ps_drop", c_uint), ("ps_ifdrop", c_uint)]


class _BpfProgram(Structure):
    _fields_ = [("bf_len", c_uint), ("bf_insns", c_void_p)]


class _SockFilter(Structure):  # struct sock_filter (linux/filter.h)
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(Structure):  # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", POINTER(_SockFilter))]


SOL_SOCKET = 1
SO_ATTACH_FILTER = 26
BPF_RET_K = 0x06
_REJECT_ALL = (_SockFilter * 1)(_SockFilter(BPF_RET_K, 0, 0, 0))


def _load_libpcap() -> ctypes.CDLL:
    for name in ("libpcap.so.1", "libpcap.so.0.8", ctypes.util.find_library("pcap")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise PcapError("libpcap is not installed (Debian/Ubuntu: apt-get install libpcap0.8)")


_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)
_libc.open_memstream.restype = c_void_p
_libc.open_memstream.argtypes = [POINTER(c_void_p), POINTER(c_size_t)]
_libc.fflush.argtypes = [c_void_p]
_libc.fseek.argtypes = [c_void_p, ctypes.c_long, c_int]
_libc.fclose.argtypes = [c_void_p]
_libc.free.argtypes = [c_void_p]
_libc.setsockopt.argtypes = [c_int, c_int, c_int, c_void_p, ctypes.c_uint32]
_libc.setsockopt.restype = c_int


def lib() -> ctypes.CDLL:
    """The loaded libpcap with argument types declared (loaded on first use)."""
    global _lib
    if _lib is not None:
        return _lib
    lp = _load_libpcap()
    sigs: dict[str, tuple[object, list[object]]] = {
        "pcap_create": (c_void_p, [c_char_p, c_char_p]),
        "pcap_set_snaplen": (c_int, [c_void_p, c_int]),
        "pcap_set_promisc": (c_int, [c_void_p, c_int]),
        "pcap_set_timeout": (c_int, [c_void_p, c_int]),
        "pcap_set_buffer_size": (c_int, [c_void_p, c_int]),
        "pcap_set_tstamp_precision": (c_int, [c_void_p, c_int]),
        "pcap_activate": (c_int, [c_void_p]),
        "pcap_close": (None, [c_void_p]),
        "pcap_geterr": (c_char_p, [c_void_p]),
        "pcap_statustostr": (c_char_p, [c_int]),
        "pcap_compile": (c_int, [c_void_p, POINTER(_BpfProgram), c_char_p, c_int, c_uint]),
        "pcap_setfilter": (c_int, [c_void_p, POINTER(_BpfProgram)]),
        "pcap_freecode": (None, [POINTER(_BpfProgram)]),
        "pcap_setnonblock": (c_int, [c_void_p, c_int, c_char_p]),
        "pcap_get_selectable_fd": (c_int, [c_void_p]),
        "pcap_dispatch": (c_int, [c_void_p, c_int, c_void_p, c_void_p]),
        "pcap_dump_fopen": (c_void_p, [c_void_p, c_void_p]),
        "pcap_dump_close": (None, [c_void_p]),
        "pcap_dump_flush": (c_int, [c_void_p]),
        "pcap_stats": (c_int, [c_void_p, POINTER(_PcapStat)]),
        "pcap_datalink": (c_int, [c_void_p]),
        "pcap_snapshot": (c_int, [c_void_p]),
        "pcap_get_tstamp_precision": (c_int, [c_void_p]),
        "pcap_offline_filter": (c_int, [POINTER(_BpfProgram), c_void_p, c_void_p]),
    }
    for fname, (restype, argtypes) in sigs.items():
        fn = getattr(lp, fname)
        fn.restype = restype
        fn.argtypes = argtypes
    _lib = lp
    return lp


@dataclass(frozen=True)
class KernelCounters:
    received: int
    dropped: int
    if_dropped: int


@dataclass(frozen=True)
class TriggerSpec:
    """A flight recorder's packet trigger: ``count`` packets matching ``filter`` within ``window_ns``."""

    filter: str
    count: int
    window_ns: int


@dataclass(frozen=True)
class HandleOptions:
    """How to open one handle. ``buffer_bytes`` is the kernel ring; ``timeout_ms`` the ring block timeout."""

    device: str
    snaplen: int = 262144
    buffer_bytes: int = 2 << 20
    filter: str = ""
    # TPACKET_V3 block timeout: a partly filled block is handed over after this long. Longer means fewer wakeups
    # for quiet pods; shorter means less delay, and less lost when an interface vanishes with a block unretired.
    timeout_ms: int = 500
    promisc: bool = False
    # A packet trigger evaluated in C on every packet the handle delivers (recordings only; needs chunkbuf).
    trigger: TriggerSpec | None = None


class MemoryDump:
    """A libpcap dumper writing into an ``open_memstream`` buffer (the fallback ``chunkbuf.RecordSink``);
    ``take()`` returns and clears what it holds."""

    def __init__(self, pcap: c_void_p) -> None:
        self._ptr = c_void_p()
        self._size = c_size_t()
        self._fp = _libc.open_memstream(byref(self._ptr), byref(self._size))
        if not self._fp:
            raise PcapError(f"open_memstream failed (errno {ctypes.get_errno()})")
        self.dumper = lib().pcap_dump_fopen(pcap, self._fp)
        if not self.dumper:
            _libc.fclose(self._fp)
            _libc.free(self._ptr)
            raise PcapError("pcap_dump_fopen: " + (lib().pcap_geterr(pcap) or b"").decode(errors="replace"))
        self.file_header = self.take()
        self.callback: int = ctypes.cast(lib().pcap_dump, c_void_p).value or 0
        self.user: int = self.dumper

    splits = False  # one chunk per cut, whatever one dispatch wrote: the engine sizes dispatches for it

    def set_limit(self, limit: int) -> None:
        pass

    def ready(self) -> int:
        return 0

    def packets(self, dispatched: int) -> int:
        return dispatched

    def packets_left(self) -> int:
        return 0

    def lost(self) -> int:
        return 0

    def first_ts_ns(self, fmt: FileFormat) -> int:
        self.pending()
        return first_timestamp_ns(ctypes.string_at(self._ptr.value or 0, 16), fmt)

    def cut(self, meta: ingest_pb2.PcapChunk) -> EncodedChunk:
        return EncodedChunk.build(meta, self.take())

    def reset(self) -> None:
        self.take()

    def pending(self) -> int:
        """Bytes written since the last take (flushes the stdio buffer into the memory stream)."""
        _libc.fflush(self._fp)
        return self._size.value

    def take(self) -> bytes:
        size = self.pending()
        data = ctypes.string_at(self._ptr.value or 0, size) if size else b""
        _libc.fseek(self._fp, 0, 0)
        return data

    def close(self) -> None:
        if self.dumper:
            lib().pcap_dump_close(self.dumper)  # fclose()s the memory stream
            self.dumper = None
            _libc.free(self._ptr)


class Handle:
    """One activated, non-blocking libpcap handle writing into a record sink (``sink``)."""

    def __init__(self, opts: HandleOptions) -> None:
        lp = lib()
        errbuf = ctypes.create_string_buffer(PCAP_ERRBUF_SIZE)
        p = lp.pcap_create(opts.device.encode(), errbuf)
        if not p:
            raise PcapError(errbuf.value.decode(errors="replace"))
        self._p: c_void_p | None = c_void_p(p)
        self.sink: chunkbuf.RecordSink | None = None
        # The packet trigger's counters (None: no trigger), or why a trigger asked for is not evaluated.
        self.trigger: chunkbuf.PacketTriggerCounter | None = None
        self.trigger_error = ""
        self._trigger_prog: _BpfProgram | None = None
        try:
            self._check(lp.pcap_set_snaplen(p, opts.snaplen), "set snaplen")
            self._check(lp.pcap_set_promisc(p, int(opts.promisc)), "set promisc")
            self._check(lp.pcap_set_timeout(p, opts.timeout_ms), "set timeout")
            self._check(lp.pcap_set_buffer_size(p, opts.buffer_bytes), "set buffer size")
            lp.pcap_set_tstamp_precision(p, PCAP_TSTAMP_PRECISION_NANO)  # falls back to usec where unsupported
            rc = lp.pcap_activate(p)
            if rc < 0:
                detail = (lp.pcap_geterr(p) or b"").decode(errors="replace")
                if rc == PCAP_ERROR_NO_SUCH_DEVICE:
                    raise PcapError(f"no such interface {opts.device!r}")
                raise PcapError(f"cannot capture on {opts.device!r}: {detail or lp.pcap_statustostr(rc).decode()}")
            if opts.filter:
                self._set_filter(opts.filter)
            if lp.pcap_setnonblock(p, 1, errbuf) < 0:
                raise PcapError(errbuf.value.decode(errors="replace"))
            self.fd: int = lp.pcap_get_selectable_fd(p)
            if self.fd < 0:
                raise PcapError("handle has no selectable file descriptor")
            self.linktype: int = lp.pcap_datalink(p)
            self.snaplen: int = lp.pcap_snapshot(p)
            self.nanosecond: bool = lp.pcap_get_tstamp_precision(p) == PCAP_TSTAMP_PRECISION_NANO
            self.sink = chunkbuf.ChunkBuffer() if chunkbuf.available() else MemoryDump(c_void_p(p))
            if opts.trigger is not None:
                self._set_trigger(opts.trigger)
        except BaseException:
            self.close()
            raise

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise PcapError(f"{what}: {lib().pcap_statustostr(rc).decode()}")

    def _set_filter(self, expr: str) -> None:
        lp = lib()
        prog = _BpfProgram()
        if lp.pcap_compile(self._p, byref(prog), expr.encode(), 1, 0xFFFFFFFF) < 0:
            raise PcapError("bad filter: " + (lp.pcap_geterr(self._p) or b"").decode(errors="replace"))
        try:
            if lp.pcap_setfilter(self._p, byref(prog)) < 0:
                raise PcapError("setfilter: " + (lp.pcap_geterr(self._p) or b"").decode(errors="replace"))
        finally:
            lp.pcap_freecode(byref(prog))

    def _set_trigger(self, spec: TriggerSpec) -> None:
        """Compile the trigger's filter for this handle's link type and have the C handler run it on every packet.
        A trigger that cannot run leaves the handle capturing without it and says why in ``trigger_error``."""
        sink = self.sink
        if not isinstance(sink, chunkbuf.ChunkBuffer):
            self.trigger_error = "packet trigger not evaluated: podcap's C library is not built"
            return
        lp = lib()
        prog = _BpfProgram()
        if lp.pcap_compile(self._p, byref(prog), spec.filter.encode(), 1, 0xFFFFFFFF) < 0:
            detail = (lp.pcap_geterr(self._p) or b"").decode(errors="replace")
            self.trigger_error = f"packet trigger not evaluated: bad filter: {detail}"
            return
        self._trigger_prog = prog
        self.trigger = chunkbuf.PacketTriggerCounter(
            match=ctypes.cast(lp.pcap_offline_filter, c_void_p).value or 0, prog=ctypes.addressof(prog),
            count=spec.count, window_ns=spec.window_ns, nanosecond=self.nanosecond)
        sink.set_trigger(self.trigger)

    def dispatch(self, max_packets: int = -1) -> int:
        """Move what the ring holds (at most ``max_packets``; -1 = all) into the sink; return the packet count."""
        assert self._p is not None and self.sink is not None
        n: int = lib().pcap_dispatch(self._p, max_packets, self.sink.callback, self.sink.user)
        if n < 0:
            raise PcapError("pcap_dispatch: " + (lib().pcap_geterr(self._p) or b"").decode(errors="replace"))
        return n

    def freeze(self) -> None:
        """Make the kernel hand this handle no more packets: a socket filter that rejects everything, attached
        behind libpcap's back (``pcap_setfilter`` would also discard packets already in the ring). What the ring
        holds stays readable, and the kernel's counters stop with it (a rejected packet is not counted), so after
        the ring is drained ``received == dropped + delivered`` holds exactly. Raises PcapError."""
        prog = _SockFprog(1, ctypes.cast(_REJECT_ALL, POINTER(_SockFilter)))
        if _libc.setsockopt(self.fd, SOL_SOCKET, SO_ATTACH_FILTER, byref(prog), ctypes.sizeof(prog)) != 0:
            err = ctypes.get_errno()
            raise PcapError(f"cannot stop the handle's input: {os.strerror(err)}")

    def stats(self) -> KernelCounters | None:
        """libpcap's counters (32-bit, cumulative since the handle opened); None when they cannot be read."""
        st = _PcapStat()
        if self._p is None or lib().pcap_stats(self._p, byref(st)) < 0:
            return None
        return KernelCounters(st.ps_recv, st.ps_drop, st.ps_ifdrop)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()
            self.sink = None
        if self._trigger_prog is not None:
            lib().pcap_freecode(byref(self._trigger_prog))
            self._trigger_prog = None
        if self._p is not None:
            lib().pcap_close(self._p)
            self._p = None
