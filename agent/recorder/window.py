"""Cutting a saved window out of a ring's segments: the chunks of the save's stream and its accounting.

A save's stream is an ordinary capture stream (see ``SavePodWindow`` in ingest.proto). Its chunks are cut here from
the segments the window meets: the C record walker (``podcap.formats.pcap.scan_records``) finds where the window starts
in a segment and where each chunk of at most ``chunk_bytes`` ends, so no Python runs per packet however large the
window. Chunks never span segments and are cut the same way every time from the same segments, so a save run again
(after an agent restart) gives the same sequence numbers.

The accounting (``WindowAccount``) follows the contract: every packet of the window the ring ever knew of is either in
a chunk or counted — the kernel's drops and the capture path's losses charged to the window's segments, the packets
of removed segments (``ring_evicted``), chunks never written (``ring_unwritten``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from podcap.agent.recorder.ring import Segment
from podcap.agent.recorder.store import WindowSnapshot
from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat, PcapFormatError, first_timestamp_ns, scan_records

DEFAULT_CHUNK_BYTES = 4 << 20


@dataclass
class WindowAccount:
    """What a window holds and lost, by cause (``kernel_dropped`` is the kernel's; the rest are PodcapDrops)."""

    stored: int = 0  # packets in the window's chunks
    lost: dict[str, int] = field(default_factory=dict)

    def add(self, lost: dict[str, int]) -> None:
        for cause, n in lost.items():
            self.lost[cause] = self.lost.get(cause, 0) + n

    @property
    def received(self) -> int:
        return self.stored + sum(self.lost.values())


@dataclass(frozen=True)
class WindowChunk:
    records: bytes
    packets: int
    first_ns: int
    last_ns: int


def account_losses(snapshot: WindowSnapshot) -> WindowAccount:
    """The window's losses: those charged to its segments and the spans of removed or unwritten data."""
    account = WindowAccount()
    for seg, _size, _fd in snapshot.segments:
        account.add(seg.lost)
    for span in snapshot.spans:
        account.add(span.lost)
    return account


def window_format(snapshot: WindowSnapshot) -> FileFormat | None:
    """The stream's record format: the first segment's (a ring whose format changed saves the segments of that
    format; the others count as unreadable)."""
    return snapshot.segments[0][0].fmt if snapshot.segments else None


def cut_window(snapshot: WindowSnapshot, from_ns: int, to_ns: int, fmt: FileFormat, account: WindowAccount, *,
               chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[WindowChunk]:
    """The window's records, in chunks of at most ``chunk_bytes`` (one record at least), segment by segment;
    ``account.stored`` counts them. A segment that cannot be read counts its packets as ``spool_error``."""
    for seg, size, fd in snapshot.segments:
        if seg.fmt != fmt:
            account.add({"spool_error": seg.packets})
            continue
        try:
            yield from _cut_segment(seg, size, fd, from_ns, to_ns, account, chunk_bytes)
        except (OSError, PcapFormatError, ValueError):
            account.add({"spool_error": seg.packets})


def _cut_segment(seg: Segment, size: int, fd: int, from_ns: int, to_ns: int, account: WindowAccount,
                 chunk_bytes: int) -> Iterator[WindowChunk]:
    if size <= 0:
        return
    # The segment is read, not mapped: a save reads each byte once, and a mapping's exported views would have to be
    # tracked through the generator. Segments are at most 16 MiB.
    data = os.pread(fd, size, FILE_HEADER_LEN)
    size = len(data)
    fmt = seg.fmt
    # Records before the window (timestamps <= from - 1), then chunks up to the window's end.
    off = scan_records(data, fmt, until_ns=from_ns - 1).length if seg.first_ns < from_ns else 0
    view = memoryview(data)
    while off < size:
        scan = scan_records(view[off:], fmt, until_ns=to_ns - 1, max_bytes=chunk_bytes)
        if scan.packets == 0:
            one = scan_records(view[off:], fmt, until_ns=to_ns - 1, max_packets=1)
            if one.packets == 0:
                break  # the next record is past the window
            scan = one  # a record larger than chunk_bytes goes alone
        records = data[off:off + scan.length]
        account.stored += scan.packets
        yield WindowChunk(records, scan.packets, first_timestamp_ns(records, fmt), scan.last_ts_ns)
        off += scan.length


def close_snapshot(snapshot: WindowSnapshot) -> None:
    for _seg, _size, fd in snapshot.segments:
        try:
            os.close(fd)
        except OSError:
            pass
