"""The native record walker (``proto/podcap/native/walk.c``, loaded as ``podcap._native_walk``), reached through ctypes.

The collector checks the framing of every chunk before it stores it; in Python that walk costs ~120 ns per record
(about a quarter of the collector's CPU at 600 kpps), in C ~1 ns. This module owns loading the library and passing
any buffer (bytes, memoryview, mmap) to it without copying. ``podcap.formats.pcap`` uses it when it is built
(``available()``: ``scan_records``, and ``valid_prefix_length`` for crash recovery) and otherwise walks in Python
with identical results.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from podcap import native
from podcap.native import Error

# The walker's answers (``podcap.native.Error``, the header's error codes), by the names ``podcap.formats.pcap`` uses.
OK, TRUNCATED_HEADER, BAD_CAPLEN, TRUNCATED_RECORD = Error.OK, Error.TRUNCATED_HEADER, Error.BAD_CAPLEN, \
    Error.TRUNCATED_RECORD
NO_LIMIT = (1 << 63) - 1
BufferLike = bytes | bytearray | memoryview  # or anything else with a contiguous buffer (mmap)


class _Scan(ctypes.Structure):  # struct podcap_scan (podcap_native.h), field for field
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("packets", "length", "last_ts_ns", "error_offset", "caplen", "wirelen")]


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (stable layout since 3.3)."""

    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


@dataclass(frozen=True)
class Walk:
    """The C walker's answer: ``code`` is OK or the error found at ``error_offset``."""

    code: Error
    packets: int
    length: int
    last_ts_ns: int
    error_offset: int
    caplen: int
    wirelen: int


def _load() -> ctypes.CDLL | None:
    lib = native.library("walk")
    if lib is None:
        return None
    fn = lib.podcap_scan_records
    fn.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_int, ctypes.c_int64, ctypes.POINTER(_Scan)]
    fn.restype = ctypes.c_int
    return lib


_LIB = _load()
_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
_PYBUF_SIMPLE = 0  # a contiguous, read-only view is all the walker needs


def available() -> bool:
    """Whether the C walker was built and loads."""
    return _LIB is not None


def walk(data: BufferLike, snaplen: int, ts_scale: int, *, max_packets: int | None, max_bytes: int | None,
         until_ns: int | None) -> Walk:
    """Run the C walker over ``data`` (any contiguous buffer; not copied; the GIL is released meanwhile)."""
    assert _LIB is not None, "the native walker is not built"
    out = _Scan()
    view = _PyBuffer()
    _get_buffer(data, ctypes.byref(view), _PYBUF_SIMPLE)  # raises BufferError for a non-contiguous buffer
    try:
        code = _LIB.podcap_scan_records(
            view.buf, view.len, min(snaplen, 0xFFFFFFFF), ts_scale,
            NO_LIMIT if max_packets is None else max(min(max_packets, NO_LIMIT), -1),
            NO_LIMIT if max_bytes is None else max(min(max_bytes, NO_LIMIT), -1),
            until_ns is not None, 0 if until_ns is None else max(-NO_LIMIT, min(until_ns, NO_LIMIT)), ctypes.byref(out))
    finally:
        _release_buffer(ctypes.byref(view))
    return Walk(Error(code), out.packets, out.length, out.last_ts_ns, out.error_offset, out.caplen, out.wirelen)
