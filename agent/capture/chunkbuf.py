"""Record sinks for a pcap handle: where ``pcap_dispatch`` puts each packet, and how a chunk is cut from it.

Two implementations of one interface (``RecordSink``), both C all the way per packet:

- ``ChunkBuffer`` (``chunkbuf.c`` in podcap's C library): our own ``pcap_handler`` appends records to a buffer
  laid out as the serialized ``AgentMessage{chunk}``; cutting a chunk copies it once into the bytes gRPC sends.
- ``MemoryDump`` (``podcap.agent.capture.libpcap``): libpcap's ``pcap_dump`` into a memory stream, then a protobuf
  message; the fallback when the C library was not built (about 15% more CPU per packet, two more copies).
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, Structure, byref, c_char_p, c_int, c_uint64, c_void_p
from typing import Protocol

from podcap import native
from podcap.agent.upload.encoded import EncodedChunk
from podcap.pcapfile import FileFormat, first_timestamp_ns
from podcap.v1 import ingest_pb2

PREFIX = 12
INITIAL_BYTES = 64 << 10  # grows (doubling) to what the busiest moment of the stream needs, then stays


class RecordSink(Protocol):
    callback: int  # address of the C pcap_handler
    user: int  # its user argument

    def pending(self) -> int:
        """Record bytes held since the last cut."""

    def packets(self, dispatched: int) -> int:
        """Records held, given the packet counts pcap_dispatch reported since the last cut."""

    def first_ts_ns(self, fmt: FileFormat) -> int:
        """Timestamp of the first record held (only when one is)."""

    def cut(self, meta: ingest_pb2.PcapChunk) -> EncodedChunk:
        """The records held as a chunk with ``meta``'s other fields (``meta`` has no records and is kept by the
        chunk: pass a fresh message); the sink is empty afterwards. MemoryError leaves the records held (``reset``
        discards them)."""

    def reset(self) -> None:
        """Discard the records held."""

    def lost(self) -> int:
        """Packets dropped by the sink itself (out of memory), ever."""

    def close(self) -> None: ...


class _Buf(Structure):
    _fields_ = [("data", c_void_p), ("len", c_uint64), ("cap", c_uint64), ("packets", c_uint64),
                ("lost", c_uint64)]


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.podcap_chunk_init.argtypes = [POINTER(_Buf), c_uint64]
    lib.podcap_chunk_init.restype = c_int
    lib.podcap_chunk_free.argtypes = [POINTER(_Buf)]
    lib.podcap_chunk_free.restype = None
    lib.podcap_chunk_seal.argtypes = [POINTER(_Buf), c_char_p, c_uint64]
    lib.podcap_chunk_seal.restype = c_uint64
    lib.podcap_chunk_reset.argtypes = [POINTER(_Buf)]
    lib.podcap_chunk_reset.restype = None
    return lib


_NATIVE = native.library()
_LIB = _declare(_NATIVE) if _NATIVE is not None else None


def available() -> bool:
    return _LIB is not None


def native_tags() -> tuple[int, int] | None:
    """The field tags ``chunkbuf.c`` writes (AgentMessage.chunk, PcapChunk.records), as compiled; None without the
    C library. For the test that holds them to the generated descriptors."""
    if _NATIVE is None:
        return None
    return (ctypes.c_uint8.in_dll(_NATIVE, "podcap_chunk_message_tag").value,
            ctypes.c_uint8.in_dll(_NATIVE, "podcap_chunk_records_tag").value)


class ChunkBuffer:
    """Records appended in C by ``podcap_chunk_handler``; see ``chunkbuf.c``."""

    def __init__(self) -> None:
        assert _LIB is not None, "podcap's C library is not built"
        self._lib = _LIB
        self._buf = _Buf()
        if self._lib.podcap_chunk_init(byref(self._buf), INITIAL_BYTES) != 0:
            raise MemoryError("cannot allocate a chunk buffer")
        self.callback: int = ctypes.cast(self._lib.podcap_chunk_handler, c_void_p).value or 0
        self.user: int = ctypes.addressof(self._buf)

    def pending(self) -> int:
        return int(self._buf.len) - PREFIX

    def packets(self, dispatched: int) -> int:
        return int(self._buf.packets)

    def lost(self) -> int:
        return int(self._buf.lost)

    def first_ts_ns(self, fmt: FileFormat) -> int:
        if not self._buf.data or self.pending() < 8:
            return 0
        return first_timestamp_ns(ctypes.string_at(self._buf.data + PREFIX, 8) + bytes(8), fmt)

    def reset(self) -> None:
        if self._buf.data:
            self._lib.podcap_chunk_reset(byref(self._buf))

    def cut(self, meta: ingest_pb2.PcapChunk) -> EncodedChunk:
        size = self.pending()
        fields = meta.SerializeToString()
        total = self._lib.podcap_chunk_seal(byref(self._buf), fields, len(fields))
        if total == 0:
            raise MemoryError("cannot seal a chunk")
        wire = ctypes.string_at(self._buf.data or 0, total)
        self._lib.podcap_chunk_reset(byref(self._buf))
        return EncodedChunk(meta, size, wire)

    def close(self) -> None:
        if self._buf.data:
            self._lib.podcap_chunk_free(byref(self._buf))
