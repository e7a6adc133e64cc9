"""Merging per-pod pcap files into one pcapng section, packets in time order (``podcap get --merge``,
``--format pcapng``).

This module owns the shape of the merged file (SHB, the IDBs, the packets, the ISBs), from files
(``merge_pcaps``) or from streams still being downloaded (``merge_streams``, C only), and picks who merges the
packets of files: podcap's C merge core (``pcapmerge``) when it is built and the output is a real file or pipe, with no
Python per packet and as fast as Wireshark's ``mergecap``; otherwise ``heapq.merge`` over ``podcap.formats.pcap``'s
record iterators. Both write the same bytes (tests compare them, and the order with mergecap's).

Memory stays bounded whatever the capture size: each input is read in blocks and one record per input waits in
the merge. Packets come out in exactly ``mergecap``'s order: the earliest next packet first and, of equal
timestamps, the one of the later input (mergecap's tie rule); each input's own order is kept, and an input whose
records are not time-ordered (a clock step on a node) is merged as it is, never sorted in memory. A merge of many pods
holds one file and one block per pod, so the open-file limit is raised when it would stop the merge.

With ``one_copy_ns`` (what ``get --merge`` asks for unless ``--all-copies``) a packet seen on two pods is written
once, its first sighting in that order (``podcap.collector.cli.dedup``); the pods' ISBs then say how many of theirs
were left out.

Marks (``Mark``: a recorder save's triggers, issue 24) put a comment at a point in time: an ``opt_comment`` on the
first packet written at or after it (of its pod's interface, or of any), so Wireshark shows it there in the packet
list, and a section comment saying whether it has one. Which marks a packet follows is found before the section
header is written (one more read of the inputs, only when there are marks); a packet pays one compare against the
next mark's time, in C as here. ``merge_streams`` takes no marks: a save with triggers is merged from files.
"""

from __future__ import annotations

import heapq
import os
import resource
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import IO

from podcap.collector.cli.dedup import OneCopy
from podcap.collector.cli.get import pcapmerge
from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat, PcapFormatError, iter_file_records, parse_file_header
from podcap.formats.pcapng import (
    InterfaceInfo,
    InterfaceStats,
    PcapngError,
    PcapngWriter,
    SectionInfo,
    comment_bytes,
)

_READ_BUFFER = 1 << 20


@dataclass(frozen=True)
class MergeInput:
    """A classic pcap file (``podcap.formats.pcap`` format) and the interface it becomes."""

    path: str
    interface: InterfaceInfo
    stats: InterfaceStats | None = None


def _pcap_records(f: IO[bytes], path: str, fmt: FileFormat) -> Iterator[tuple[int, int, bytes]]:
    """(timestamp ns, wire length, captured bytes) of each record after the file header, read as needed."""
    try:
        for _block, rec in iter_file_records(f, fmt, block_size=_READ_BUFFER):
            yield rec.ts_ns, rec.wirelen, rec.data
    except PcapFormatError as e:
        raise PcapFormatError(f"{path}: {e}") from e


def _ensure_open_files(n: int) -> None:
    """Raise the soft limit on open files when a merge of many pods needs more than it allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise PcapngError(f"merging {n} files needs {want} open files; the limit is {hard} "
                              "(raise it with ulimit -n, or download fewer pods)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@dataclass(frozen=True)
class Mark:
    """A comment at a point in time (a recorder's trigger): a packet comment on the first packet written at or after
    ``ts_ns``, of input ``input`` (None: of any input), and a section comment that says whether it has one."""

    ts_ns: int
    input: int | None
    comment: str


_NEVER = 1 << 64  # later than any timestamp: no mark is waiting


def merge_pcaps(inputs: Sequence[MergeInput], out: IO[bytes], *, section: SectionInfo | None = None,
                one_copy_ns: int = 0, dropped: list[int] | None = None, marks: Sequence[Mark] = ()) -> list[int]:
    """Write ``inputs`` to ``out`` as one pcapng section, packets ordered by time; return packets per input.

    Each input becomes interface ``i`` with the input's own link type, snaplen and timestamp resolution; the
    ISBs of inputs with ``stats`` follow the last packet. With ``one_copy_ns``, second sightings are left out
    (``dropped``, when given, gets how many per input). Each of ``marks`` is a section comment and, when a packet
    of its input follows it, a comment on the first such packet (kept even when it is a second sighting). Raises
    PcapFormatError for a malformed input (naming the file) and OSError for I/O failures.
    """
    _ensure_open_files(len(inputs))
    files: list[IO[bytes]] = []
    try:
        formats: list[FileFormat] = []
        for inp in inputs:
            # Unbuffered: the record walk reads in blocks of its own (one block per input held at a time).
            f = open(inp.path, "rb", buffering=0)  # noqa: SIM115 (closed in finally)
            files.append(f)
            try:
                formats.append(parse_file_header(f.read(FILE_HEADER_LEN)))
            except PcapFormatError as e:
                raise PcapFormatError(f"{inp.path}: {e}") from e
        out_fd = _fileno(out)
        native = out_fd is not None and pcapmerge.available() and (not one_copy_ns or pcapmerge.one_copy_available())
        placed = _placed(marks, files, inputs, formats, native=native)
        section = section or SectionInfo()
        section = replace(section, comments=(*section.comments, *(
            _mark_section_comment(m, m in placed, inputs) for m in marks)))
        writer = PcapngWriter(out, section)
        for inp, fmt in zip(inputs, formats, strict=True):
            writer.add_interface(inp.interface, linktype=fmt.linktype, snaplen=fmt.snaplen, nanosecond=fmt.nanosecond)
        left_out = [0] * len(inputs)
        if native:
            assert out_fd is not None
            out.flush()  # the SHB and IDBs first; C writes the packets straight to the descriptor
            counts = pcapmerge.merge_records(
                [pcapmerge.NativeInput(f.fileno(), inp.path, fmt, FILE_HEADER_LEN)
                 for f, inp, fmt in zip(files, inputs, formats, strict=True)], out_fd, one_copy_ns=one_copy_ns,
                dropped=left_out, annotations=[pcapmerge.Annotation(m.ts_ns, m.input, comment_bytes(m.comment))
                                               for m in placed])
        else:
            streams = [_tagged(i, _pcap_records(f, inp.path, fmt))
                       for i, (f, inp, fmt) in enumerate(zip(files, inputs, formats, strict=True))]
            counts = [0] * len(inputs)
            write = writer.write_packet
            one = OneCopy(one_copy_ns) if one_copy_ns else None
            waiting = list(placed)
            next_mark = waiting[0].ts_ns if waiting else _NEVER
            for ts, iface, wirelen, data in heapq.merge(*streams, key=_timestamp):
                comments: Sequence[str] = ()
                if ts >= next_mark:  # the one compare a packet pays for marks
                    due = [m for m in waiting if m.ts_ns <= ts and m.input in (None, iface)]
                    if due:
                        comments = [m.comment for m in due]
                        waiting = [m for m in waiting if m not in due]
                        next_mark = waiting[0].ts_ns if waiting else _NEVER
                if one is not None and one.drop(formats[iface].linktype, data, wirelen, ts, iface) and not comments:
                    left_out[iface] += 1
                    continue
                write(iface, ts, data, wirelen, comments=comments)
                counts[iface] += 1
        for i, inp in enumerate(inputs):
            if inp.stats is not None:
                writer.write_stats(i, replace(inp.stats, duplicates=left_out[i]))
        if dropped is not None:
            dropped[:] = left_out
        return counts
    finally:
        for opened in files:
            opened.close()


def _placed(marks: Sequence[Mark], files: Sequence[IO[bytes]], inputs: Sequence[MergeInput],
            formats: Sequence[FileFormat], *, native: bool) -> list[Mark]:
    """The marks that a packet of their input follows (at or after their time), in time order: those become packet
    comments. Known before the section header is written, which says so; each input is read once more for it (only
    when there are marks: a recorder's save, a few seconds of a few pods)."""
    if not marks:
        return []
    wanted = {m.input for m in marks}
    latest: dict[int, int] = {}
    for i, (f, inp, fmt) in enumerate(zip(files, inputs, formats, strict=True)):
        if None not in wanted and i not in wanted:
            continue
        if native:
            latest[i] = pcapmerge.max_ts(f.fileno(), inp.path, fmt)
        else:
            latest[i] = max((ts for ts, _wirelen, _data in _pcap_records(f, inp.path, fmt)), default=0)
            f.seek(FILE_HEADER_LEN)
    last_any = max(latest.values(), default=0)

    def followed(m: Mark) -> bool:
        last = last_any if m.input is None else latest.get(m.input, 0)
        return last > 0 and last >= m.ts_ns  # 0: no packet at all

    return sorted(filter(followed, marks), key=lambda m: m.ts_ns)


def _mark_section_comment(mark: Mark, placed: bool, inputs: Sequence[MergeInput]) -> str:
    of = f" of {inputs[mark.input].interface.name}" if mark.input is not None else ""
    if placed:
        return f"{mark.comment}; also the comment of the first packet{of} at or after it"
    return f"{mark.comment}; no packet{of} at or after it in this file: a section comment only"


@dataclass(frozen=True)
class StreamInput:
    """A pod's records arriving block by block (its own Download stream), its format and the interface it
    becomes; ``name`` says which in errors."""

    name: str
    interface: InterfaceInfo
    fmt: FileFormat
    blocks: Iterator[bytes]


def can_merge_streams(out: IO[bytes] | None = None, *, one_copy: bool = False) -> bool:
    """Whether ``merge_streams`` can write to ``out`` (None: a file about to be opened): it needs the C core (one
    that leaves out second sightings, for ``one_copy``) and a real descriptor."""
    core = pcapmerge.one_copy_available() if one_copy else pcapmerge.available()
    return core and (out is None or _fileno(out) is not None)


def merge_streams(inputs: Sequence[StreamInput], out: IO[bytes], *, section: SectionInfo | None = None,
                  stats: Callable[[], Sequence[InterfaceStats | None]] = lambda: (), one_copy_ns: int = 0,
                  dropped: list[int] | None = None) -> list[int]:
    """``merge_pcaps`` for inputs that arrive as they are downloaded: the same file, the same order. ``stats`` is
    called once every packet is written (the counters are then as recent as the packets); one entry per input."""
    out_fd = _fileno(out)
    assert out_fd is not None and can_merge_streams(one_copy=bool(one_copy_ns)), "check can_merge_streams first"
    writer = PcapngWriter(out, section)
    for inp in inputs:
        writer.add_interface(inp.interface, linktype=inp.fmt.linktype, snaplen=inp.fmt.snaplen,
                             nanosecond=inp.fmt.nanosecond)
    out.flush()
    left_out = [0] * len(inputs)
    counts = pcapmerge.merge_records([pcapmerge.FedInput(inp.name, inp.fmt, inp.blocks) for inp in inputs], out_fd,
                                     one_copy_ns=one_copy_ns, dropped=left_out)
    for i, st in enumerate(stats()):
        if st is not None:
            writer.write_stats(i, replace(st, duplicates=left_out[i]))
    if dropped is not None:
        dropped[:] = left_out
    return counts


def _fileno(out: IO[bytes]) -> int | None:
    """The output's descriptor, or None for an in-memory stream (which only the Python path can write to)."""
    try:
        return out.fileno()
    except (OSError, AttributeError, ValueError):  # io.UnsupportedOperation is an OSError
        return None


def _tagged(iface: int, records: Iterator[tuple[int, int, bytes]]) -> Iterator[tuple[int, int, int, bytes]]:
    for ts, wirelen, data in records:
        yield ts, iface, wirelen, data


def _timestamp(item: tuple[int, int, int, bytes]) -> tuple[int, int]:
    return item[0], -item[1]  # of equal timestamps, the later input's first (as mergecap)


def pcap_to_pcapng(src: str, dst: str, interface: InterfaceInfo, *, stats: InterfaceStats | None = None,
                   section: SectionInfo | None = None, marks: Sequence[Mark] = ()) -> int:
    """Convert one pcap file into a one-interface pcapng file (written to ``dst.part``, then renamed)."""
    part = dst + ".part"
    try:
        with open(part, "wb") as out:
            n = merge_pcaps([MergeInput(src, interface, stats)], out, section=section, marks=marks)[0]
        os.replace(part, dst)
    except BaseException:
        if os.path.exists(part):
            os.unlink(part)
        raise
    return n
