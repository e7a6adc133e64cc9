"""The C merge core (``pcapmerge.c``, part of podcap's C library), reached through ctypes.

``podcap get --merge`` of a 1 GB capture is a few million packets: merged in Python (``heapq.merge`` over record
iterators, one ``write`` per packet) that took 2.4-3× as long as Wireshark's ``mergecap`` on the same files. In C
the whole k-way merge, the record checks and the pcapng Enhanced Packet Blocks run without Python; this module
only declares the functions, feeds the C side the open inputs and the output descriptor, and turns its error
report into the same ``PcapFormatError`` (naming the file and offset) or ``OSError`` the Python path raises.
``podcap.collector.cli.merge`` decides which path runs (``available()``; ``PODCAP_NO_NATIVE=1`` forces Python).

Inputs are files (``NativeInput``: C reads them) or fed (``FedInput``: an iterator of blocks, such as one pod's
Download stream; C asks for the next block of whichever input it needs, so the merge runs as the data arrives and
no file is written but the merged one).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from podcap import native
from podcap.pcapfile import FILE_HEADER_LEN, RECORD_HEADER_LEN, FileFormat, PcapFormatError

(TRUNCATED_HEADER, BAD_CAPLEN, TRUNCATED_RECORD, READ_ERROR, WRITE_ERROR, NO_MEMORY) = range(1, 7)
DONE, MORE, NEED = 0, 1, 2  # podcap_merge_run: finished; call again; feed podcap_merge_needed's input
# Per input: the read block (one pread fills it). Memory of a merge: inputs x BLOCK + OUT_BLOCK.
BLOCK = 256 << 10
# Output writes of 256 KiB: fresh page cache on these VMs is slow to touch with multi-MiB writes (NOTES.md).
OUT_BLOCK = 256 << 10
# Bytes written per call into C before Python looks at signals again (Ctrl+C during a merge of gigabytes).
STEP = 64 << 20


class _Error(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int32), ("errno_value", ctypes.c_int32), ("input", ctypes.c_uint64),
                ("offset", ctypes.c_uint64), ("caplen", ctypes.c_uint64), ("wirelen", ctypes.c_uint64),
                ("left", ctypes.c_uint64)]


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL | None:
    try:
        lib.podcap_merge_new.argtypes = [ctypes.c_uint32, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64]
    except AttributeError:  # a library built before the merge core existed
        return None
    lib.podcap_merge_new.restype = ctypes.c_void_p
    lib.podcap_merge_free.argtypes = [ctypes.c_void_p]
    lib.podcap_merge_free.restype = None
    lib.podcap_merge_add.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint32,
                                     ctypes.c_uint32, ctypes.c_uint64]
    lib.podcap_merge_add.restype = ctypes.c_int
    lib.podcap_merge_add_fed.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
                                         ctypes.c_uint64]
    lib.podcap_merge_add_fed.restype = ctypes.c_int
    lib.podcap_merge_feed.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p, ctypes.c_uint64]
    lib.podcap_merge_feed.restype = ctypes.c_int
    lib.podcap_merge_needed.argtypes = [ctypes.c_void_p]
    lib.podcap_merge_needed.restype = ctypes.c_int64
    lib.podcap_merge_run.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    lib.podcap_merge_run.restype = ctypes.c_int
    lib.podcap_merge_counts.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64)]
    lib.podcap_merge_counts.restype = None
    lib.podcap_merge_get_error.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Error)]
    lib.podcap_merge_get_error.restype = None
    try:
        lib.podcap_epbs.argtypes = [ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32,
                                    ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint64,
                                    ctypes.POINTER(_Error)]
    except AttributeError:  # a library built before the live converter existed: merges only
        return lib
    lib.podcap_epbs.restype = ctypes.c_int64
    lib.podcap_epbs_room.argtypes = [ctypes.c_uint64]
    lib.podcap_epbs_room.restype = ctypes.c_uint64
    return lib


_NATIVE = native.library()
_LIB = _declare(_NATIVE) if _NATIVE is not None else None


def available() -> bool:
    """Whether the C merge core was built and loads."""
    return _LIB is not None


@dataclass(frozen=True)
class NativeInput:
    """One input for the C merge: an open file (positioned anywhere), where its records start, and its format."""

    fd: int
    path: str
    fmt: FileFormat
    start: int


@dataclass(frozen=True)
class FedInput:
    """One input given block by block: the records after the file header, cut anywhere (``path`` names it in
    errors)."""

    path: str
    fmt: FileFormat
    blocks: Iterator[bytes]
    start: int = FILE_HEADER_LEN


def merge_records(inputs: Sequence[NativeInput | FedInput], out_fd: int, *, block: int = BLOCK,
                  out_block: int = OUT_BLOCK, step: int = STEP) -> list[int]:
    """Write every record of ``inputs`` to ``out_fd`` as pcapng EPBs (interface = input index), merged by time;
    return the packets written per input. The IDBs must already be in the output, in input order."""
    assert _LIB is not None, "podcap's C merge core is not built"
    lib = _LIB
    m = lib.podcap_merge_new(len(inputs), out_fd, block, out_block)
    if not m:
        raise MemoryError("cannot allocate the merge buffers")
    try:
        for inp in inputs:
            # Nanosecond inputs keep nanoseconds (if_tsresol 9), microsecond inputs are written in microseconds.
            divisor = 1 if inp.fmt.nanosecond else 1000
            if isinstance(inp, FedInput):
                rc = lib.podcap_merge_add_fed(m, inp.fmt.ts_scale, divisor, inp.fmt.snaplen, inp.start)
            else:
                rc = lib.podcap_merge_add(m, inp.fd, inp.fmt.ts_scale, divisor, inp.fmt.snaplen, inp.start)
            if rc != 0:
                _raise(lib, m, inputs)
        while True:
            rc = lib.podcap_merge_run(m, step)
            if rc == DONE:
                break
            if rc == NEED:
                i = lib.podcap_merge_needed(m)
                fed = inputs[i]
                assert isinstance(fed, FedInput)
                data = next((b for b in fed.blocks if b), b"")  # an empty block would read as the end
                if not isinstance(data, bytes):
                    data = bytes(data)  # ctypes passes bytes without a copy; a view or bytearray needs one
                if lib.podcap_merge_feed(m, i, data, len(data)) != 0:
                    _raise(lib, m, inputs)
            elif rc < 0:
                _raise(lib, m, inputs)
        counts = (ctypes.c_uint64 * max(1, len(inputs)))()
        lib.podcap_merge_counts(m, counts)
        return [int(counts[i]) for i in range(len(inputs))]
    finally:
        lib.podcap_merge_free(m)


def epbs(interface_id: int, fmt: FileFormat, records: bytes) -> bytearray | None:
    """Bare pcap records as Enhanced Packet Blocks on ``interface_id`` in C (the live stream's converter), or None
    when the C library (or this function of it) is not there. Malformed records raise ``PcapFormatError`` naming
    the offset in ``records``, as the merge does."""
    if _LIB is None or not hasattr(_LIB, "podcap_epbs"):
        return None
    room = int(_LIB.podcap_epbs_room(len(records)))
    out = bytearray(room)
    err = _Error()
    buf = (ctypes.c_char * room).from_buffer(out)
    n = _LIB.podcap_epbs(records, len(records), interface_id, fmt.ts_scale, 1 if fmt.nanosecond else 1000,
                         fmt.snaplen, ctypes.addressof(buf), room, ctypes.byref(err))
    del buf  # the export ends before the bytearray is cut to size
    if n < 0:
        off = err.offset
        if err.code == TRUNCATED_HEADER:
            msg = f"truncated record header at offset {off}"
        elif err.code == BAD_CAPLEN:
            msg = f"record at offset {off}: caplen {err.caplen} exceeds snaplen {fmt.snaplen} or length {err.wirelen}"
        elif err.code == TRUNCATED_RECORD:
            msg = f"truncated record at offset {off}: needs {RECORD_HEADER_LEN + err.caplen} bytes, {err.left} left"
        else:
            msg = f"cannot convert the records (code {err.code})"
        raise PcapFormatError(msg)
    del out[n:]
    return out


def _raise(lib: ctypes.CDLL, m: int, inputs: Sequence[NativeInput | FedInput]) -> None:
    err = _Error()
    lib.podcap_merge_get_error(m, ctypes.byref(err))
    code, off = err.code, err.offset
    if code == WRITE_ERROR:
        raise OSError(err.errno_value, os.strerror(err.errno_value))
    if code == NO_MEMORY:
        raise MemoryError("cannot allocate the merge buffers")
    path = inputs[err.input].path if err.input < len(inputs) else "?"
    if code == READ_ERROR:
        raise OSError(err.errno_value, os.strerror(err.errno_value), path)
    # The same messages as podcap.pcapfile's record walk, prefixed with the file as the Python merge does.
    if code == TRUNCATED_HEADER:
        msg = f"truncated record header at offset {off}"
    elif code == BAD_CAPLEN:
        msg = (f"record at offset {off}: caplen {err.caplen} exceeds snaplen {inputs[err.input].fmt.snaplen} or "
               f"length {err.wirelen}")
    elif code == TRUNCATED_RECORD:
        msg = f"truncated record at offset {off}: needs {RECORD_HEADER_LEN + err.caplen} bytes, {err.left} left"
    else:
        msg = f"merge failed (code {code})"
    raise PcapFormatError(f"{path}: {msg}")
