"""The C merge core (``proto/podcap/native/merge.c``, loaded as ``podcap._native_merge``), reached through ctypes.

``podcap get --merge`` of a 1 GB capture is a few million packets: merged in Python (``heapq.merge`` over record
iterators, one ``write`` per packet) that took 2.4-3× as long as Wireshark's ``mergecap`` on the same files. In C
the whole k-way merge, the record checks and the pcapng Enhanced Packet Blocks run without Python; this module
only declares the functions, feeds the C side the open inputs and the output descriptor, and turns its error
report into the same ``PcapFormatError`` (naming the file and offset) or ``OSError`` the Python path raises.
``podcap.collector.cli.get.merge`` decides which path runs (``available()``; ``PODCAP_NO_NATIVE=1`` forces Python).

Inputs are files (``NativeInput``: C reads them) or fed (``FedInput``: an iterator of blocks, such as one pod's
Download stream; C asks for the next block of whichever input it needs, so the merge runs as the data arrives and
no file is written but the merged one).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from podcap import native
from podcap.formats.pcap import FILE_HEADER_LEN, RECORD_HEADER_LEN, FileFormat, PcapFormatError
from podcap.native import Error

ANY_INPUT = 0xFFFFFFFF  # PODCAP_MERGE_ANY_INPUT: an annotation for the first packet of any input
DONE, MORE, NEED = 0, 1, 2  # podcap_merge_run: finished; call again; feed podcap_merge_needed's input
# Per input: the read block (one pread fills it). Memory of a merge: inputs x BLOCK + OUT_BLOCK.
BLOCK = 256 << 10
# Output writes of 256 KiB: fresh page cache on these VMs is slow to touch with multi-MiB writes (NOTES.md).
OUT_BLOCK = 256 << 10
# Bytes written per call into C before Python looks at signals again (Ctrl+C during a merge of gigabytes).
STEP = 64 << 20


class _Error(ctypes.Structure):  # struct podcap_merge_error (podcap_native.h), field for field
    _fields_ = [("code", ctypes.c_int32), ("errno_value", ctypes.c_int32), ("input", ctypes.c_uint64),
                ("offset", ctypes.c_uint64), ("caplen", ctypes.c_uint64), ("wirelen", ctypes.c_uint64),
                ("left", ctypes.c_uint64)]


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.podcap_merge_new.argtypes = [ctypes.c_uint32, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64]
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
    lib.podcap_merge_dedup.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    lib.podcap_merge_dedup.restype = ctypes.c_int
    lib.podcap_merge_linktype.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32]
    lib.podcap_merge_linktype.restype = ctypes.c_int
    lib.podcap_merge_dropped.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64)]
    lib.podcap_merge_dropped.restype = None
    lib.podcap_live_new.argtypes = [ctypes.c_uint64]
    lib.podcap_live_new.restype = ctypes.c_void_p
    lib.podcap_live_free.argtypes = [ctypes.c_void_p]
    lib.podcap_live_free.restype = None
    lib.podcap_live_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
                                    ctypes.c_uint32, ctypes.c_uint32]
    lib.podcap_live_add.restype = ctypes.c_int64
    lib.podcap_live_push.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p, ctypes.c_uint64,
                                     ctypes.c_uint64, ctypes.POINTER(_Error)]
    lib.podcap_live_push.restype = ctypes.c_int
    lib.podcap_live_release.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]
    lib.podcap_live_release.restype = ctypes.c_uint64
    lib.podcap_live_pop.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64]
    lib.podcap_live_pop.restype = ctypes.c_int64
    lib.podcap_live_retire.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.podcap_live_retire.restype = None
    lib.podcap_live_buffered.argtypes = [ctypes.c_void_p]
    lib.podcap_live_buffered.restype = ctypes.c_uint64
    lib.podcap_live_counts.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64),
                                       ctypes.POINTER(ctypes.c_uint64)]
    lib.podcap_live_counts.restype = None
    lib.podcap_pcapng_epb.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                                      ctypes.c_uint32, ctypes.c_uint64, ctypes.c_char_p,
                                      ctypes.POINTER(ctypes.c_uint32), ctypes.c_uint32]
    lib.podcap_pcapng_epb.restype = ctypes.c_uint64
    lib.podcap_merge_annotate.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_char_p,
                                          ctypes.c_uint32]
    lib.podcap_merge_annotate.restype = ctypes.c_int
    lib.podcap_merge_annotated.argtypes = [ctypes.c_void_p]
    lib.podcap_merge_annotated.restype = ctypes.c_uint64
    lib.podcap_records_max_ts.argtypes = [ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64,
                                          ctypes.POINTER(ctypes.c_uint64)]
    lib.podcap_records_max_ts.restype = ctypes.c_int
    return lib


_NATIVE = native.library("merge")
_LIB = _declare(_NATIVE) if _NATIVE is not None else None


def available() -> bool:
    """Whether the C merge core was built and loads."""
    return _LIB is not None


def one_copy_available() -> bool:
    """Whether the C merge core can leave out second sightings (``podcap_merge_dedup``, the live view): whenever it
    is built (they are one library)."""
    return _LIB is not None


def epb(interface_id: int, ts: int, data: bytes, wirelen: int, *, comments: Sequence[bytes] = ()) -> bytes:
    """One Enhanced Packet Block as the C merge writes it (``podcap_epb_write_opts`` in ``podcap_native.h``, with an
    ``opt_comment`` per comment), for the test that holds it to the Python encoder byte for byte."""
    assert _LIB is not None, "podcap's C merge core is not built"
    out = ctypes.create_string_buffer(32 + len(data) + 3 + sum(8 + len(c) for c in comments) + 4)
    lens = (ctypes.c_uint32 * max(1, len(comments)))(*[len(c) for c in comments])
    n = _LIB.podcap_pcapng_epb(out, data, len(data), wirelen, interface_id, ts, b"".join(comments), lens,
                               len(comments))
    return out.raw[:n]


@dataclass(frozen=True)
class Annotation:
    """A packet comment for the C merge: on the first packet written at or after ``ts_ns``, of input ``input``
    (None: of any input); ``comment`` as the option holds it (``podcap.formats.pcapng.comment_bytes``)."""

    ts_ns: int
    input: int | None
    comment: bytes


def max_ts(fd: int, path: str, fmt: FileFormat, start: int = FILE_HEADER_LEN) -> int:
    """The latest record timestamp (ns) of an open pcap file from ``start`` on, 0 if it has none (read with pread:
    the descriptor's position does not move)."""
    assert _LIB is not None, "podcap's C merge core is not built"
    out = ctypes.c_uint64()
    rc = _LIB.podcap_records_max_ts(fd, fmt.ts_scale, start, ctypes.byref(out))
    if rc == -Error.NO_MEMORY:
        raise MemoryError("cannot allocate the scan buffer")
    if rc < 0:
        raise OSError(errno.EIO, "cannot read the records to find the last packet", path)
    return int(out.value)


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
                  out_block: int = OUT_BLOCK, step: int = STEP, one_copy_ns: int = 0,
                  dropped: list[int] | None = None, annotations: Sequence[Annotation] = (),
                  annotated: list[int] | None = None) -> list[int]:
    """Write every record of ``inputs`` to ``out_fd`` as pcapng EPBs (interface = input index), merged by time;
    return the packets written per input. The IDBs must already be in the output, in input order. With
    ``one_copy_ns`` a packet already written from another input within that many nanoseconds is left out
    (``podcap.collector.cli.dedup``); ``dropped`` then gets how many per input. ``annotations`` (in time order)
    become packet comments; ``annotated`` then gets how many were placed."""
    assert _LIB is not None, "podcap's C merge core is not built"
    assert not one_copy_ns or one_copy_available(), "this C library cannot leave out second sightings"
    lib = _LIB
    m = lib.podcap_merge_new(len(inputs), out_fd, block, out_block)
    if not m:
        raise MemoryError("cannot allocate the merge buffers")
    try:
        if one_copy_ns and lib.podcap_merge_dedup(m, one_copy_ns) != 0:
            raise MemoryError("cannot allocate the merge buffers")
        for i, inp in enumerate(inputs):
            # Nanosecond inputs keep nanoseconds (if_tsresol 9), microsecond inputs are written in microseconds.
            divisor = 1 if inp.fmt.nanosecond else 1000
            if isinstance(inp, FedInput):
                rc = lib.podcap_merge_add_fed(m, inp.fmt.ts_scale, divisor, inp.fmt.snaplen, inp.start)
            else:
                rc = lib.podcap_merge_add(m, inp.fd, inp.fmt.ts_scale, divisor, inp.fmt.snaplen, inp.start)
            if rc != 0:
                _raise(lib, m, inputs)
            if one_copy_ns:
                lib.podcap_merge_linktype(m, i, inp.fmt.linktype)
        for a in annotations:
            where = ANY_INPUT if a.input is None else a.input
            rc = lib.podcap_merge_annotate(m, a.ts_ns, where, a.comment, len(a.comment))
            if rc == -1:
                raise ValueError("annotations must come in time order, each at most 65535 bytes")
            if rc != 0:
                _raise(lib, m, inputs)
        while True:
            rc = lib.podcap_merge_run(m, step)
            if rc == DONE:
                break
            if rc == NEED:
                k = lib.podcap_merge_needed(m)
                fed = inputs[k]
                assert isinstance(fed, FedInput)
                data = next((b for b in fed.blocks if b), b"")  # an empty block would read as the end
                if not isinstance(data, bytes):
                    data = bytes(data)  # ctypes passes bytes without a copy; a view or bytearray needs one
                if lib.podcap_merge_feed(m, k, data, len(data)) != 0:
                    _raise(lib, m, inputs)
            elif rc < 0:
                _raise(lib, m, inputs)
        counts = (ctypes.c_uint64 * max(1, len(inputs)))()
        lib.podcap_merge_counts(m, counts)
        if dropped is not None and one_copy_ns:
            left_out = (ctypes.c_uint64 * max(1, len(inputs)))()
            lib.podcap_merge_dropped(m, left_out)
            dropped[:] = [int(left_out[i]) for i in range(len(inputs))]
        if annotated is not None:
            annotated[:] = [int(lib.podcap_merge_annotated(m))]
        return [int(counts[i]) for i in range(len(inputs))]
    finally:
        lib.podcap_merge_free(m)


def _record_error(err: _Error, snaplen: int) -> str:
    """The message of a record error: the same as ``podcap.formats.pcap``'s record walk."""
    off = err.offset
    if err.code == Error.TRUNCATED_HEADER:
        return f"truncated record header at offset {off}"
    if err.code == Error.BAD_CAPLEN:
        return f"record at offset {off}: caplen {err.caplen} exceeds snaplen {snaplen} or length {err.wirelen}"
    if err.code == Error.TRUNCATED_RECORD:
        return f"truncated record at offset {off}: needs {RECORD_HEADER_LEN + err.caplen} bytes, {err.left} left"
    return f"cannot convert the records (code {err.code})"


class NativeLive:
    """The live view's ordering (and one copy per packet) in C: ``podcap.collector.cli.live.order.PyLiveOrder``'s
    fast path, the same methods."""

    def __init__(self, one_copy_ns: int) -> None:
        assert _LIB is not None and one_copy_available()
        self._lib = _LIB
        self._live = _LIB.podcap_live_new(one_copy_ns)
        if not self._live:
            raise MemoryError("cannot allocate the live view")
        self._formats: list[FileFormat] = []
        self._closed_counts: tuple[list[int], list[int]] | None = None

    def close(self) -> None:
        """Free the C side; ``counts`` still answers (with the last counts)."""
        if self._live:
            self._closed_counts = self.counts()
            self._lib.podcap_live_free(self._live)
            self._live = None

    def add(self, interface_id: int, fmt: FileFormat) -> int:
        index = int(self._lib.podcap_live_add(self._live, interface_id, fmt.ts_scale, 1 if fmt.nanosecond else 1000,
                                              fmt.snaplen, fmt.linktype))
        if index < 0:
            raise MemoryError("cannot allocate the live view")
        self._formats.append(fmt)
        return index

    def push(self, index: int, records: bytes, arrival_ns: int) -> None:
        err = _Error()
        if self._lib.podcap_live_push(self._live, index, records, len(records), arrival_ns, ctypes.byref(err)) != 0:
            if err.code == Error.NO_MEMORY:
                raise MemoryError("cannot allocate the live view")
            raise PcapFormatError(_record_error(err, self._formats[index].snaplen))

    def release(self, now_ns: int, hold_ns: int) -> int:
        return int(self._lib.podcap_live_release(self._live, now_ns, hold_ns))

    def retire(self, index: int) -> None:
        self._lib.podcap_live_retire(self._live, index)

    def pop(self, until_ns: int, *, block: int = 1 << 20) -> bytes:
        parts: list[bytes] = []
        while True:
            out = bytearray(block)
            buf = (ctypes.c_char * block).from_buffer(out)
            n = int(self._lib.podcap_live_pop(self._live, min(until_ns, (1 << 64) - 1), ctypes.addressof(buf), block))
            del buf
            if n < 0:  # one record larger than the block: a larger block
                block *= 4
                continue
            if n == 0:  # nothing more up to until_ns
                return b"".join(parts)
            parts.append(bytes(out[:n]))

    @property
    def buffered(self) -> int:
        return int(self._lib.podcap_live_buffered(self._live))

    def counts(self) -> tuple[list[int], list[int]]:
        """Packets written and second sightings left out, per index."""
        if not self._live:
            assert self._closed_counts is not None
            return self._closed_counts
        n = max(1, len(self._formats))
        written, dropped = (ctypes.c_uint64 * n)(), (ctypes.c_uint64 * n)()
        self._lib.podcap_live_counts(self._live, written, dropped)
        k = len(self._formats)
        return [int(written[i]) for i in range(k)], [int(dropped[i]) for i in range(k)]


def _raise(lib: ctypes.CDLL, m: int, inputs: Sequence[NativeInput | FedInput]) -> None:
    err = _Error()
    lib.podcap_merge_get_error(m, ctypes.byref(err))
    code = err.code
    if code == Error.WRITE_ERROR:
        raise OSError(err.errno_value, os.strerror(err.errno_value))
    if code == Error.NO_MEMORY:
        raise MemoryError("cannot allocate the merge buffers")
    path = inputs[err.input].path if err.input < len(inputs) else "?"
    if code == Error.READ_ERROR:
        raise OSError(err.errno_value, os.strerror(err.errno_value), path)
    if code not in (Error.TRUNCATED_HEADER, Error.BAD_CAPLEN, Error.TRUNCATED_RECORD):
        raise PcapFormatError(f"{path}: merge failed (code {code})")
    # Prefixed with the file, as the Python merge does.
    raise PcapFormatError(f"{path}: {_record_error(err, inputs[err.input].fmt.snaplen)}")
