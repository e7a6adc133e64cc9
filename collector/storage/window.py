"""Reading a time window and a BPF filter out of stored segments.

The segment index (first/last timestamp per segment, kept by the capture manager) already limits reading to
segments that overlap the window; this module walks those segments' records (``podcap.pcapfile``'s iterator, in
large blocks) and keeps the ones inside the window that match the filter (compiled for the pod's link type by
``podcap.collector.filters``). This is a read path, run per request, not per captured packet.
"""

from __future__ import annotations

import tempfile
from typing import BinaryIO

from podcap.collector.filters import BpfProgram
from podcap.pcapfile import FILE_HEADER_LEN, FileFormat, iter_file_records

READ_BLOCK = 4 << 20


def select_records(segments: list[tuple[BinaryIO, int]], fmt: FileFormat, *, since_ns: int, until_ns: int,
                   bpf: BpfProgram | None) -> BinaryIO:
    """A temporary pcap file (header included, like a segment) of the pod's records in the window that match."""
    out: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 (handed to the caller)
    out.write(fmt.header())
    for f, length in segments:
        f.seek(FILE_HEADER_LEN)
        # A torn tail (a segment still being appended to) cannot hold a record yet: the walk ends there.
        for block, rec in iter_file_records(f, fmt, end=length, block_size=READ_BLOCK, torn_tail_ok=True):
            if since_ns and rec.ts_ns < since_ns:
                continue
            if until_ns and rec.ts_ns > until_ns:
                break  # records of a segment are in time order
            if bpf is not None and not bpf.filter(rec.data):
                continue
            out.write(block[rec.offset : rec.end])
    out.seek(0)
    return out
