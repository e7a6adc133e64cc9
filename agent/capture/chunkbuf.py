"""Record sinks for a pcap handle: where ``pcap_dispatch`` puts each packet, and how a chunk is cut from it.

Two implementations of one interface (``RecordSink``), both C all the way per packet:

- ``ChunkBuffer`` (``proto/podcap/native/chunks.c``, loaded as ``podcap._native_chunks``): our own ``pcap_handler``
  appends records to a buffer laid out as serialized ``AgentMessage{chunk}`` messages, closing a chunk whenever the next
  record would take it past the byte limit (so one dispatch of any size yields chunks that each fit); cutting a chunk
  copies it once into the bytes gRPC sends.
- ``MemoryDump`` (``podcap.agent.capture.libpcap``): libpcap's ``pcap_dump`` into a memory stream, then a protobuf
  message; the fallback when the C library was not built (about 15% more CPU per packet, two more copies). It
  cannot split what one dispatch wrote, so the engine asks it for no more packets per dispatch than a chunk holds
  of snaplen-sized records.

Why the cut is by bytes, in C: sizing a dispatch by a packet count derived from the average record size let one
dispatch after a run of small ACKs read thousands of 64 KiB GSO frames (a bulk TCP download between two pods)
into a single chunk larger than the collector accepts; the refused chunk wedged the agent's session.
"""

from __future__ import annotations

import ctypes
import threading
from ctypes import POINTER, Structure, byref, c_char_p, c_int, c_uint64, c_void_p
from dataclasses import dataclass
from typing import Protocol

from podcap import native
from podcap.agent.upload.encoded import EncodedChunk
from podcap.formats.pcap import FileFormat, first_timestamp_ns
from podcap.v1 import ingest_pb2

PREFIX = 12
INITIAL_BYTES = 64 << 10  # grows (doubling) to what the busiest moment of the stream needs, then stays


class RecordSink(Protocol):
    callback: int  # address of the C pcap_handler
    user: int  # its user argument
    # True when the sink cuts chunks by bytes itself (``set_limit``), however many packets one dispatch brings;
    # False when the caller must keep each dispatch small enough (``MemoryDump``: at most a chunk of snaplen-sized
    # records).
    splits: bool

    def set_limit(self, limit: int) -> None:
        """Record bytes per chunk at most, from the next record on (a chunk holds one record at least)."""

    def pending(self) -> int:
        """Record bytes held since the last cut (every chunk held)."""

    def ready(self) -> int:
        """Chunks closed at the limit and waiting to be cut (the open one not counted)."""

    def packets(self, dispatched: int) -> int:
        """Records of the chunk ``cut`` takes next, given the packet counts pcap_dispatch reported since the last
        cut."""

    def packets_left(self) -> int:
        """Records still held after a cut (chunks behind the one cut)."""

    def first_ts_ns(self, fmt: FileFormat) -> int:
        """Timestamp of the first record of the chunk ``cut`` takes next (only when it has one)."""

    def cut(self, meta: ingest_pb2.PcapChunk) -> EncodedChunk:
        """The oldest chunk held, with ``meta``'s other fields (``meta`` has no records and is kept by the chunk:
        pass a fresh message); it leaves the sink. MemoryError leaves the records held (``reset`` discards them)."""

    def reset(self) -> None:
        """Discard every record held."""

    def lost(self) -> int:
        """Packets dropped by the sink itself (out of memory), ever."""

    def close(self) -> None: ...


class _Chunk(Structure):
    _fields_ = [("data", c_void_p), ("len", c_uint64), ("cap", c_uint64), ("packets", c_uint64)]


class _Trigger(Structure):  # struct podcap_trigger (chunks.c), field for field
    _fields_ = [("match", c_void_p), ("prog", c_void_p), ("count", c_uint64), ("window_ns", c_uint64),
                ("ts_scale", c_uint64), ("ts", POINTER(ctypes.c_int64)), ("n", c_uint64), ("pos", c_uint64),
                ("total", c_uint64), ("fired", c_uint64), ("fired_ts_ns", ctypes.c_int64),
                ("first_ts_ns", ctypes.c_int64)]


class _Buf(Structure):  # struct podcap_chunkbuf (chunks.c), field for field
    _fields_ = [("open", _Chunk), ("lost", c_uint64), ("limit", c_uint64), ("records", c_uint64),
                ("held", c_uint64), ("closed", POINTER(_Chunk)), ("head", c_uint64), ("nclosed", c_uint64),
                ("closed_cap", c_uint64), ("initial", c_uint64), ("trigger", POINTER(_Trigger))]


@dataclass(frozen=True)
class TriggerState:
    """A packet trigger's counters as the handler left them (``struct podcap_trigger``, native/chunks.c)."""

    total: int  # every match so far
    fired: int  # firings so far
    fired_ts_ns: int  # the last firing: timestamp of the match that completed it (0: never fired)
    first_ts_ns: int  # ... and of the first of its matches


class PacketTriggerCounter:
    """A packet trigger evaluated in C by ``podcap_chunk_handler`` on every packet of one ``ChunkBuffer``: holds the
    C state (and the timestamps of the last ``count`` matches); ``state()`` reads it (once per loop wakeup)."""

    def __init__(self, *, match: int, prog: int, count: int, window_ns: int, nanosecond: bool) -> None:
        if count < 1:
            raise ValueError("a packet trigger needs a count of at least 1")
        self.count = count
        self._ts = (ctypes.c_int64 * count)()
        self.c = _Trigger(match=match, prog=prog, count=count, window_ns=window_ns,
                          ts_scale=1 if nanosecond else 1000, ts=ctypes.cast(self._ts, POINTER(ctypes.c_int64)))

    def state(self) -> TriggerState:
        t = self.c
        return TriggerState(int(t.total), int(t.fired), int(t.fired_ts_ns), int(t.first_ts_ns))


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.podcap_chunk_init.argtypes = [POINTER(_Buf), c_uint64]
    lib.podcap_chunk_init.restype = c_int
    lib.podcap_chunk_free.argtypes = [POINTER(_Buf)]
    lib.podcap_chunk_free.restype = None
    lib.podcap_chunk_head.argtypes = [POINTER(_Buf), POINTER(c_uint64), c_char_p]
    lib.podcap_chunk_head.restype = c_uint64
    lib.podcap_chunk_take_head.argtypes = [POINTER(_Buf), c_char_p, c_uint64, POINTER(c_void_p)]
    lib.podcap_chunk_take_head.restype = c_uint64
    lib.podcap_chunk_release.argtypes = [c_void_p]
    lib.podcap_chunk_release.restype = None
    lib.podcap_chunk_reset.argtypes = [POINTER(_Buf)]
    lib.podcap_chunk_reset.restype = None
    return lib


_NATIVE = native.library("chunks")
_LIB = _declare(_NATIVE) if _NATIVE is not None else None

# What a chunk's message adds beyond its records and prefix, at most: its other fields (three ids of at most 64 bytes,
# counters, drops), with a wide margin. The engine keeps chunks this far below the collector's message limit.
FIELDS_ROOM = 1024


class NativeWire:
    """A chunk's serialized message in the buffer ``chunks.c`` handed over, turned into the ``bytes`` gRPC sends
    only when first asked for — on the thread that sends or spools it, not the capture thread — and then freed."""

    __slots__ = ("_ptr", "_len", "_bytes", "_lock")

    def __init__(self, ptr: int, length: int) -> None:
        self._ptr = ptr
        self._len = length
        self._bytes: bytes | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._len

    def materialize(self) -> bytes:
        with self._lock:
            if self._bytes is None:
                assert _LIB is not None
                self._bytes = ctypes.string_at(self._ptr, self._len)
                _LIB.podcap_chunk_release(self._ptr)
                self._ptr = 0
            return self._bytes

    def __del__(self) -> None:
        if self._ptr and _LIB is not None:
            _LIB.podcap_chunk_release(self._ptr)
            self._ptr = 0


def available() -> bool:
    return _LIB is not None


def native_tags() -> tuple[int, int] | None:
    """The field tags ``chunks.c`` writes (AgentMessage.chunk, PcapChunk.records), as compiled; None without the
    C library. For the test that holds them to the generated descriptors."""
    if _NATIVE is None:
        return None
    return (ctypes.c_uint8.in_dll(_NATIVE, "podcap_chunk_message_tag").value,
            ctypes.c_uint8.in_dll(_NATIVE, "podcap_chunk_records_tag").value)


class ChunkBuffer:
    """Records appended in C by ``podcap_chunk_handler``, cut into chunks by bytes there; see ``chunks.c``."""

    splits = True

    def __init__(self, limit: int = 0) -> None:
        assert _LIB is not None, "podcap's C library is not built"
        self._lib = _LIB
        self._buf = _Buf()
        if self._lib.podcap_chunk_init(byref(self._buf), INITIAL_BYTES) != 0:
            raise MemoryError("cannot allocate a chunk buffer")
        self._buf.limit = limit
        self._trigger: PacketTriggerCounter | None = None
        self._first = ctypes.create_string_buffer(16)
        self.callback: int = ctypes.cast(self._lib.podcap_chunk_handler, c_void_p).value or 0
        self.user: int = ctypes.addressof(self._buf)

    def set_limit(self, limit: int) -> None:
        self._buf.limit = limit

    def set_trigger(self, trigger: PacketTriggerCounter | None) -> None:
        """Evaluate ``trigger`` on every packet from now on (None: no more); the caller keeps it alive while set."""
        self._trigger = trigger
        self._buf.trigger = ctypes.pointer(trigger.c) if trigger is not None else POINTER(_Trigger)()

    def pending(self) -> int:
        return int(self._buf.records)

    def ready(self) -> int:
        return int(self._buf.nclosed)

    def _head(self) -> tuple[int, int]:
        """(the oldest chunk's record bytes, its record count); its first record header in ``self._first``."""
        packets = c_uint64()
        size = self._lib.podcap_chunk_head(byref(self._buf), byref(packets), self._first)
        return int(size), packets.value

    def packets(self, dispatched: int) -> int:
        return self._head()[1]

    def packets_left(self) -> int:
        return int(self._buf.held)

    def lost(self) -> int:
        return int(self._buf.lost)

    def first_ts_ns(self, fmt: FileFormat) -> int:
        if self._head()[0] < 16:
            return 0
        return first_timestamp_ns(self._first.raw, fmt)

    def reset(self) -> None:
        if self._buf.open.data:
            self._lib.podcap_chunk_reset(byref(self._buf))

    def cut(self, meta: ingest_pb2.PcapChunk) -> EncodedChunk:
        size = self._head()[0]
        fields = meta.SerializeToString()
        data = c_void_p()
        total = self._lib.podcap_chunk_take_head(byref(self._buf), fields, len(fields), byref(data))
        if total == 0 or not data.value:
            raise MemoryError("cannot seal a chunk")
        return EncodedChunk(meta, size, NativeWire(data.value, int(total)))

    def close(self) -> None:
        if self._buf.open.data:
            self._lib.podcap_chunk_free(byref(self._buf))
