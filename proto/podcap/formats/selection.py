"""What a read of a stored capture selects, as one rule: its pods, its segments, its records.

A read (the collector's ``Download``, ``podcap get --from s3://`` reading the bucket itself, a live ``Follow``, the
CLI planning and resuming a download) names pods by *selectors* and may narrow them by a ``Window``: a time range
and a BPF filter. Every reader goes the same way — find the pod's segments whose time range overlaps the window
(``overlaps``: the catalog's rows, the bucket's pages, a compressed object's blocks), then keep those segments'
records inside the window that the filter matches (``select_records``) — so a read through the collector and a read
of the bucket cannot disagree on what a request means. Finding the segments (a catalog, a bucket's pages) and
compiling the filter (libpcap, ``podcap.collector.filters``) are the callers'; this module takes a compiled filter as
anything with ``filter(packet)``.

- **Pods**: no selector means every pod; a selector names a pod by its uid, its name, or ``namespace/name``.
- **Overlap**: a range [first, last] overlaps [since, until] unless it ends before ``since`` or starts after
  ``until``; 0 means unbounded for the window and *unknown* for a range (a segment with no packet yet), which is
  always read (it costs nothing and may be the one being written).
- **Records**: a record is kept when ``since <= ts <= until`` (bounds given) and the filter matches it; a segment's
  records are in time order, so the walk of a segment ends at its first record after ``until``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat, iter_file_records

READ_BLOCK = 4 << 20  # bytes of a segment read at a time while selecting


@dataclass(frozen=True)
class Window:
    """What a read selects besides pods: records from ``since_ns`` to ``until_ns`` (ns since the epoch, 0:
    unbounded) that match the BPF filter ``bpf`` ("": all)."""

    since_ns: int = 0
    until_ns: int = 0
    bpf: str = ""

    @property
    def whole(self) -> bool:
        """Selects every record: the pod's file is its segments joined, read as they are."""
        return not (self.since_ns or self.until_ns or self.bpf)


class NamedPod(Protocol):
    """A pod as any side holds it (``podcap.v1`` ``Pod``, ``podcap.pods.PodRef``)."""

    @property
    def uid(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...


def names_pod(selector: str, pod: NamedPod) -> bool:
    """Whether ``selector`` names ``pod``: its uid, its name, or ``namespace/name``."""
    return selector in (pod.uid, pod.name, f"{pod.namespace}/{pod.name}")


def pod_selected(pod: NamedPod, selectors: Collection[str]) -> bool:
    """Whether a read with ``selectors`` includes ``pod`` (no selector: every pod)."""
    return not selectors or any(names_pod(s, pod) for s in selectors)


def overlaps(first_ts_ns: int, last_ts_ns: int, since_ns: int, until_ns: int) -> bool:
    """Whether a time range [first, last] (0: unknown) overlaps the window [since, until] (0: unbounded)."""
    return not (since_ns and last_ts_ns and last_ts_ns < since_ns) and \
        not (until_ns and first_ts_ns and first_ts_ns > until_ns)


class PacketFilter(Protocol):
    """A compiled BPF filter: non-zero for a packet it matches (``podcap.collector.filters.BpfProgram``)."""

    def filter(self, packet: bytes, /) -> int: ...


def select_records(segments: Iterable[tuple[BinaryIO, int]], fmt: FileFormat, out: BinaryIO, *, since_ns: int = 0,
                   until_ns: int = 0, bpf: PacketFilter | None = None) -> int:
    """Write to ``out`` a pcap file (header included, like a segment) of the records of ``segments`` — each an open
    segment file and the bytes of it to read, in order — inside [since_ns, until_ns] that ``bpf`` matches; return
    its size. A segment is read from its first record in blocks of ``READ_BLOCK`` (memory stays at a block
    whatever its size); a torn tail (a segment still being appended to) cannot hold a record yet and ends its walk.
    """
    size = out.write(fmt.header())
    for f, length in segments:
        f.seek(FILE_HEADER_LEN)
        for block, rec in iter_file_records(f, fmt, end=length, block_size=READ_BLOCK, torn_tail_ok=True):
            if since_ns and rec.ts_ns < since_ns:
                continue
            if until_ns and rec.ts_ns > until_ns:
                break  # records of a segment are in time order
            if bpf is not None and not bpf.filter(rec.data):
                continue
            size += out.write(block[rec.offset : rec.end])
    return size
