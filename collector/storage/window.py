"""Reading a time window and a BPF filter out of stored segments.

The segment index (first/last timestamp per segment, kept by the capture manager) already limits reading to
segments that overlap the window; this module walks those segments' records and keeps the ones inside the
window that match the filter (compiled by libpcap through pcapy-ng for the pod's link type). This is a read path,
run per request, not per captured packet.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

import pcapy

from podcap.pcapfile import FILE_HEADER_LEN, RECORD_HEADER_LEN, FileFormat

_HDR = struct.Struct("<IIII")
READ_BLOCK = 4 << 20


class WindowFilterError(ValueError):
    pass


def compile_filter(expr: str, fmt: FileFormat) -> pcapy.BPFProgram | None:
    if not expr.strip():
        return None
    try:
        return pcapy.compile(fmt.linktype, fmt.snaplen, expr, 1, 0xFFFFFFFF)
    except pcapy.PcapError as e:
        raise WindowFilterError(f"invalid filter {expr!r}: {e}") from e


def _records(f: BinaryIO, length: int) -> Iterator[tuple[int, int, bytes]]:
    """(sec, frac, whole record bytes) of a segment, read in large blocks."""
    f.seek(FILE_HEADER_LEN)
    left = length - FILE_HEADER_LEN
    buf = b""
    while left > 0 or buf:
        if left > 0:
            block = f.read(min(READ_BLOCK, left))
            left -= len(block)
            buf += block
            if not block:
                left = 0
        off = 0
        end = len(buf)
        while off + RECORD_HEADER_LEN <= end:
            sec, frac, incl, _orig = _HDR.unpack_from(buf, off)
            nxt = off + RECORD_HEADER_LEN + incl
            if nxt > end:
                break
            yield sec, frac, buf[off:nxt]
            off = nxt
        buf = buf[off:]
        if left <= 0 and buf:
            return  # a torn tail cannot be a record


def select_records(segments: list[tuple[BinaryIO, int]], fmt: FileFormat, *, since_ns: int, until_ns: int,
                   bpf: pcapy.BPFProgram | None) -> BinaryIO:
    """A temporary pcap file (header included, like a segment) of the pod's records in the window that match."""
    out: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 (handed to the caller)
    out.write(fmt.header())
    scale = fmt.ts_scale
    for f, length in segments:
        for sec, frac, rec in _records(f, length):
            ts = sec * 1_000_000_000 + frac * scale
            if since_ns and ts < since_ns:
                continue
            if until_ns and ts > until_ns:
                break  # records of a segment are in time order
            if bpf is not None and not bpf.filter(rec[RECORD_HEADER_LEN:]):
                continue
            out.write(rec)
    out.seek(0)
    return out
