"""One flight-recorder ring on the node's disk: its segment files, their index, and every packet it lost.

A ring is a directory ``<ring-dir>/<recorder id>/<pod uid>/`` of segment files ``seg-<n>.pcap`` — each a complete
pcap file (file header, then whole records, exactly as the capture engine's chunks carry them), so any segment opens
in Wireshark — and ``ring.json``: the pod, the ring's limits, its cumulative counters, the index of its closed
segments and the log of what it lost. Records arrive a chunk at a time (the capture engine's C chunk cutter made
them; this module writes them with one ``write`` per chunk, never touching a packet) and go to the newest segment
until it reaches its size or age; the oldest segment goes first when the ring must shrink.

Why the index is also rebuilt from the files: ``ring.json`` is written when a segment closes (and at most every few
seconds otherwise), so after a crash the newest segment is newer than the index. At load every segment the index
does not describe with its exact size is walked (the C record walker: first/last timestamp, packet count) and a torn
tail (a write cut by the crash) is cut off; the rest of the index is trusted.

What the ring loses is kept by time, so that a save can account for its window: the kernel's drops and the capture
path's losses observed while a segment was the newest are charged to that segment; a segment removed (for the ring's
byte or age limit, the node's budget or free disk) becomes a ``LostSpan`` (its time range, its packets as
``ring_evicted``, plus the losses it carried); packets that could not be written at all become spans of
``ring_unwritten``. Spans are appended to ``lost.jsonl`` as they happen (one line each, with the running totals), so
a crash forgets no eviction; ``ring.json`` is written at most every few seconds, so the kernel's counters of the
last seconds before a crash may be missing from it. The ring is not thread-safe: ``RingStore`` serializes every
call. One class for the ring's files (segments, index, loss log, lock) because they share one invariant: every
packet written is held in a segment or counted in a span, and the two never both count it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field

from podcap.formats.pcap import (
    FILE_HEADER_LEN,
    FileFormat,
    PcapFormatError,
    first_timestamp_ns,
    parse_file_header,
    scan_records,
    valid_prefix_length,
)

log = logging.getLogger(__name__)

META = "ring.json"
LOST_LOG = "lost.jsonl"
LOCK = ".lock"
_SEGMENT = re.compile(r"^seg-(\d{12})\.pcap$")
# The causes a ring charges to its segments and spans (the save reports ``kernel_dropped`` as the kernel's drops).
LOSS_CAUSES = ("kernel_dropped", "out_of_memory", "unread", "ring_unwritten", "ring_evicted")
# Spans of lost data kept per ring at most (the oldest are forgotten: a window that old is long gone anyway).
MAX_SPANS = 4096
MIN_SEGMENT_BYTES = 256 << 10
MAX_SEGMENT_BYTES = 16 << 20
MIN_SEGMENT_NS = 1_000_000_000
MAX_SEGMENT_NS = 60_000_000_000
DEFAULT_SEGMENT_NS = 30_000_000_000


class RingError(OSError):
    """A ring's files could not be read or written."""


class RingBusyError(RingError):
    """Another process (another podcap-agent on the node, e.g. during an overlapping rollout) holds the ring."""


@dataclass
class Segment:
    """One segment file: its records' span and count (``bytes``: record bytes, header excluded)."""

    number: int
    path: str
    fmt: FileFormat
    first_ns: int = 0
    last_ns: int = 0
    packets: int = 0
    bytes: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    opened_ns: int = 0  # wall clock when it was created (for rotation by age)

    def to_json(self) -> dict[str, object]:
        return {"number": self.number, "first_ns": self.first_ns, "last_ns": self.last_ns, "packets": self.packets,
                "bytes": self.bytes, "lost": self.lost}


@dataclass
class LostSpan:
    """Packets lost by the ring between two timestamps, by cause (a removed segment, unwritten chunks)."""

    first_ns: int
    last_ns: int
    lost: dict[str, int]

    def to_json(self) -> list[object]:
        return [self.first_ns, self.last_ns, self.lost]


@dataclass
class RingCounters:
    """Cumulative since the ring was created (kept in ``ring.json``, so they survive agent restarts)."""

    received: int = 0
    kernel_dropped: int = 0
    if_dropped: int = 0
    written: int = 0
    ring_evicted: int = 0
    ring_unwritten: int = 0
    out_of_memory: int = 0
    unread: int = 0
    trigger_matches: int = 0
    trigger_fired: int = 0


@dataclass
class StreamCounters:
    """The counters of the handle currently (or last) writing the ring, as its engine events report them."""

    stream_id: str = ""
    received: int = 0
    dropped: int = 0
    if_dropped: int = 0
    out_of_memory: int = 0
    unread: int = 0
    trigger_matches: int = 0


@dataclass(frozen=True)
class _StoredSegment:
    """A closed segment as ``ring.json`` describes it (trusted when the file still has exactly ``bytes``)."""

    first_ns: int
    last_ns: int
    packets: int
    bytes: int
    lost: dict[str, int]


def _stored_segments(entries: object) -> dict[int, _StoredSegment]:
    """The index's segment entries, by number; malformed ones are left out (their files are walked instead)."""
    out: dict[int, _StoredSegment] = {}
    for e in entries if isinstance(entries, list) else []:
        try:
            lost = e.get("lost") or {}
            out[int(e["number"])] = _StoredSegment(int(e["first_ns"]), int(e["last_ns"]), int(e["packets"]),
                                                   int(e["bytes"]), {str(k): int(v) for k, v in lost.items()})
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    return out


def _overlaps(first: int, last: int, lo: int, hi: int) -> bool:
    """[first, last] meets [lo, hi)."""
    return first < hi and last >= lo


class Ring:
    """One (recorder, pod) ring. ``RingStore`` owns every instance and serializes calls to it."""

    def __init__(self, path: str, recorder_id: str, pod_uid: str, *, pod: dict[str, str] | None = None) -> None:
        self.path = path
        self.recorder_id = recorder_id
        self.pod_uid = pod_uid
        self.pod: dict[str, str] = pod or {}
        self.max_bytes = 0
        self.max_duration_ns = 0
        self.keep_gone_ns = 0
        self.gone_since_ns = 0  # wall clock since when the pod is gone from the node (0: present / unknown)
        self.segments: list[Segment] = []
        self.spans: list[LostSpan] = []
        self.counters = RingCounters()
        self.stream = StreamCounters()
        self.limit_bytes = 0  # the byte limit applied now (set by the store)
        self._fd = -1  # the newest segment, open for appending
        self._dirty = False
        self._saved_at = 0.0
        self._log_lines = 0
        self._held_bytes = 0
        self._held_packets = 0
        self._lock_fd = -1

    # ---- ownership ----

    def lock(self) -> None:
        """Hold the ring for this process (an exclusive ``flock`` on its lock file, released when the process ends):
        two agents never write one ring. Raises RingBusyError, or RingError."""
        if self._lock_fd >= 0:
            return
        try:
            fd = os.open(os.path.join(self.path, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise RingError(f"ring {self.path}: cannot open its lock: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RingBusyError(f"ring {self.path} is in use by another process on this node") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        """Let the ring go (``close`` and ``delete`` do it; the end of the process does it in any case)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # ---- loading ----

    @classmethod
    def load(cls, path: str, recorder_id: str, pod_uid: str) -> Ring:
        """A ring found on disk: its metadata, and its index checked against (and rebuilt from) its files."""
        ring = cls(path, recorder_id, pod_uid)
        ring.lock()
        meta: dict[str, object] = {}
        try:
            with open(os.path.join(path, META), encoding="utf-8") as f:
                meta = json.load(f)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.warning("ring %s: index unreadable (%s): rebuilding it from the segment files", path, e)
        ring._restore(meta)
        known = _stored_segments(meta.get("segments"))
        numbers = sorted(int(m.group(1)) for m in (_SEGMENT.match(n) for n in os.listdir(path)) if m)
        for number in numbers:
            seg = ring._index_segment(number, known.get(number))
            if seg is not None:
                ring.segments.append(seg)
                ring._held_bytes += seg.bytes
                ring._held_packets += seg.packets
        # The index may be seconds older than the files: what was written is at least what is held plus what was
        # removed.
        ring.counters.written = max(ring.counters.written, ring.held_packets + ring.counters.ring_evicted)
        ring._dirty = True
        return ring

    def _restore(self, meta: dict[str, object]) -> None:
        pod = meta.get("pod")
        if isinstance(pod, dict):
            self.pod = {str(k): str(v) for k, v in pod.items()}
        for name in ("max_bytes", "max_duration_ns", "keep_gone_ns", "gone_since_ns"):
            value = meta.get(name)
            if isinstance(value, int):
                setattr(self, name, value)
        counters = meta.get("counters")
        if isinstance(counters, dict):
            for k, v in counters.items():
                if hasattr(self.counters, k) and isinstance(v, int):
                    setattr(self.counters, k, v)
        self._read_lost_log()

    def _index_segment(self, number: int, known: _StoredSegment | None) -> Segment | None:
        """A segment's index entry: the stored one when its size matches the file, else walked from the file (a torn
        tail is cut off). None (and the file removed) when it holds nothing readable."""
        path = os.path.join(self.path, f"seg-{number:012d}.pcap")
        try:
            with open(path, "rb") as f:
                head = f.read(FILE_HEADER_LEN)
                fmt = parse_file_header(head)
                size = os.fstat(f.fileno()).st_size - FILE_HEADER_LEN
                if known is not None and known.bytes == size:
                    return Segment(number, path, fmt, known.first_ns, known.last_ns, known.packets, size,
                                   dict(known.lost))
                data = f.read()
        except (OSError, PcapFormatError) as e:
            log.warning("ring %s: segment %d unreadable (%s): removed", self.path, number, e)
            _remove(path)
            return None
        valid = valid_prefix_length(data, fmt)
        if valid < len(data):
            log.warning("ring %s: segment %d: %d bytes of a torn record cut off", self.path, number,
                        len(data) - valid)
            os.truncate(path, FILE_HEADER_LEN + valid)
        if valid == 0:
            _remove(path)
            return None
        scan = scan_records(memoryview(data)[:valid], fmt)
        return Segment(number, path, fmt, first_timestamp_ns(data, fmt), scan.last_ts_ns, scan.packets, valid)

    # ---- what it holds ----

    @property
    def held_bytes(self) -> int:
        """Record bytes in the ring's segments (kept as a running total: the store asks on every write)."""
        return self._held_bytes

    @property
    def held_packets(self) -> int:
        return self._held_packets

    @property
    def oldest_ns(self) -> int:
        return self.segments[0].first_ns if self.segments else 0

    @property
    def newest_ns(self) -> int:
        return max((s.last_ns for s in self.segments[-2:]), default=0)

    def segment_bytes(self) -> int:
        """Size at which the newest segment closes: an eighth of the ring's limit (so a full ring keeps at least 7/8
        of it), within 256 KiB..16 MiB."""
        return max(MIN_SEGMENT_BYTES, min(MAX_SEGMENT_BYTES, (self.limit_bytes or MAX_SEGMENT_BYTES * 8) // 8))

    def segment_ns(self) -> int:
        if self.max_duration_ns:
            return max(MIN_SEGMENT_NS, min(MAX_SEGMENT_NS, self.max_duration_ns // 8))
        return DEFAULT_SEGMENT_NS

    # ---- writing ----

    def append(self, records: memoryview | bytes, packets: int, fmt: FileFormat, first_ns: int, last_ns: int) -> int:
        """Append whole records (one write); a new segment first when the newest is full, old, or of another
        format. Returns the disk bytes it took (records, plus a file header for a new segment). Raises RingError."""
        seg = self.segments[-1] if self.segments and self._fd >= 0 else None
        now = time.time_ns()
        if seg is not None and (seg.fmt != fmt or seg.bytes + len(records) > self.segment_bytes()
                                or now - seg.opened_ns >= self.segment_ns()):
            self.close_segment()
            seg = None
        took = len(records)
        if seg is None:
            seg = self._new_segment(fmt, now)
            took += FILE_HEADER_LEN
        try:
            written = os.write(self._fd, records)
            if written != len(records):
                raise OSError(f"short write ({written} of {len(records)} bytes)")
        except OSError as e:
            raise RingError(f"ring {self.path}: cannot write segment {seg.number}: {e}") from e
        if not seg.packets:
            seg.first_ns = first_ns
        seg.last_ns = max(seg.last_ns, last_ns)
        seg.packets += packets
        seg.bytes += len(records)
        self._held_packets += packets
        self._held_bytes += len(records)
        self.counters.written += packets
        self._dirty = True
        return took

    def _new_segment(self, fmt: FileFormat, now: int) -> Segment:
        number = self.segments[-1].number + 1 if self.segments else 1
        path = os.path.join(self.path, f"seg-{number:012d}.pcap")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
            os.write(fd, fmt.header())
        except OSError as e:
            raise RingError(f"ring {self.path}: cannot create segment {number}: {e}") from e
        self._fd = fd
        seg = Segment(number, path, fmt, opened_ns=now)
        self.segments.append(seg)
        return seg

    def close_segment(self) -> None:
        """Close the newest segment for writing (the next append starts a new one)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._dirty = True

    def charge(self, lost: dict[str, int], first_ns: int, last_ns: int) -> None:
        """Losses observed now (the kernel's drops, out of memory, unread) or of records that could not be written
        (``ring_unwritten``, with their time range): charged to the newest segment while one is open, else kept as
        a span of their own."""
        lost = {c: n for c, n in lost.items() if n}
        if not lost:
            return
        for cause, n in lost.items():
            if cause == "ring_unwritten":
                self.counters.ring_unwritten += n
        if self.segments and self._fd >= 0 and "ring_unwritten" not in lost:
            seg = self.segments[-1]
            for cause, n in lost.items():
                seg.lost[cause] = seg.lost.get(cause, 0) + n
        else:
            self._merge_span(first_ns, last_ns, lost)
        self._dirty = True

    def _merge_span(self, first_ns: int, last_ns: int, lost: dict[str, int], *, log_it: bool = True) -> None:
        """Losses of one cause set close after the last span's (under a second) extend it; others start a span."""
        last = self.spans[-1] if self.spans else None
        if last is not None and set(last.lost) == set(lost) and "ring_evicted" not in lost \
                and 0 <= first_ns - last.last_ns < 1_000_000_000:
            last.last_ns = max(last.last_ns, last_ns)
            for cause, n in lost.items():
                last.lost[cause] += n
            if log_it:
                self._log_lost(first_ns, last_ns, lost)
        else:
            self._add_span(LostSpan(first_ns, last_ns, dict(lost)), log_it=log_it)

    def _add_span(self, span: LostSpan, *, log_it: bool = True) -> None:
        self.spans.append(span)
        if len(self.spans) > MAX_SPANS:
            del self.spans[: len(self.spans) - MAX_SPANS]
        if log_it:
            self._log_lost(span.first_ns, span.last_ns, span.lost)

    def _log_lost(self, first_ns: int, last_ns: int, lost: dict[str, int]) -> None:
        """Append one loss (with the running totals) to ``lost.jsonl``; rewritten from the spans when it grows past
        twice what is kept."""
        c = self.counters
        line = json.dumps([first_ns, last_ns, lost, c.ring_evicted, c.ring_unwritten], separators=(",", ":"))
        path = os.path.join(self.path, LOST_LOG)
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            self._log_lines += 1
            if self._log_lines > 2 * MAX_SPANS:
                tmp = path + ".tmp"
                with open(tmp, "w", encoding="utf-8") as f:
                    for sp in self.spans:
                        f.write(json.dumps([sp.first_ns, sp.last_ns, sp.lost, c.ring_evicted, c.ring_unwritten],
                                           separators=(",", ":")) + "\n")
                os.replace(tmp, path)
                self._log_lines = len(self.spans)
        except OSError as e:
            log.warning("ring %s: cannot log a loss: %s", self.path, e)

    def _read_lost_log(self) -> None:
        """Spans and loss totals from ``lost.jsonl`` (an unreadable line, the torn last one of a crash, is
        skipped)."""
        try:
            with open(os.path.join(self.path, LOST_LOG), encoding="utf-8") as f:
                lines = f.readlines()
        except FileNotFoundError:
            return
        evicted = unwritten = 0
        for line in lines:
            try:
                first, last, lost, evicted, unwritten = json.loads(line)
                lost = {str(k): int(v) for k, v in lost.items()}
            except (ValueError, TypeError, AttributeError):
                continue
            self._merge_span(int(first), int(last), lost, log_it=False)
        self._log_lines = len(lines)
        self.counters.ring_evicted = max(self.counters.ring_evicted, int(evicted))
        self.counters.ring_unwritten = max(self.counters.ring_unwritten, int(unwritten))

    def evict_oldest(self) -> int:
        """Remove the oldest segment (closing it first if it is the newest): its packets become a span of
        ``ring_evicted``. Returns the disk bytes freed (0 when the ring is empty)."""
        if not self.segments:
            return 0
        seg = self.segments[0]
        if len(self.segments) == 1:
            self.close_segment()
        self.segments.pop(0)
        self._held_bytes -= seg.bytes
        self._held_packets -= seg.packets
        _remove(seg.path)
        lost = dict(seg.lost)
        if seg.packets:
            lost["ring_evicted"] = lost.get("ring_evicted", 0) + seg.packets
            self.counters.ring_evicted += seg.packets
        if lost:
            self._add_span(LostSpan(seg.first_ns, seg.last_ns, lost))
        self._dirty = True
        return seg.bytes + FILE_HEADER_LEN

    def expired(self) -> list[Segment]:
        """Closed segments entirely older than the ring's age limit (measured back from its newest packet)."""
        if not self.max_duration_ns or not self.segments:
            return []
        horizon = self.newest_ns - self.max_duration_ns
        return [s for s in self.segments[:-1] if s.last_ns < horizon]

    # ---- the handle's counters ----

    def observe(self, stream_id: str, received: int, dropped: int, if_dropped: int, out_of_memory: int,
                unread: int) -> None:
        """Fold a stream's cumulative counters (its engine event) into the ring's; the losses since the last event
        are charged to the newest segment."""
        cur = self.stream
        if stream_id != cur.stream_id:  # a new handle: its counters start at zero
            cur = self.stream = StreamCounters(stream_id, trigger_matches=0)
        d_recv = max(0, received - cur.received)
        d_drop = max(0, dropped - cur.dropped)
        d_if = max(0, if_dropped - cur.if_dropped)
        d_oom = max(0, out_of_memory - cur.out_of_memory)
        d_unread = max(0, unread - cur.unread)
        cur.received, cur.dropped, cur.if_dropped = received, dropped, if_dropped
        cur.out_of_memory, cur.unread = out_of_memory, unread
        c = self.counters
        c.received += d_recv
        c.kernel_dropped += d_drop
        c.if_dropped += d_if
        c.out_of_memory += d_oom
        c.unread += d_unread
        now = time.time_ns()
        self.charge({"kernel_dropped": d_drop, "out_of_memory": d_oom, "unread": d_unread}, now, now)

    # ---- persistence ----

    def save_meta(self, *, force: bool = False, min_interval: float = 5.0) -> None:
        """Write ``ring.json`` (atomically) when something changed: at once with ``force``, else at most every
        ``min_interval`` seconds."""
        if not self._dirty or (not force and time.monotonic() - self._saved_at < min_interval):
            return
        meta = {
            "recorder_id": self.recorder_id, "pod_uid": self.pod_uid, "pod": self.pod,
            "max_bytes": self.max_bytes, "max_duration_ns": self.max_duration_ns, "keep_gone_ns": self.keep_gone_ns,
            "gone_since_ns": self.gone_since_ns, "counters": self.counters.__dict__,
            # Only closed segments: the newest one changes with every write and is walked at load.
            "segments": [s.to_json() for s in (self.segments if self._fd < 0 else self.segments[:-1])],
        }
        tmp = os.path.join(self.path, META + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(meta, f, separators=(",", ":"))
            os.replace(tmp, os.path.join(self.path, META))
        except OSError as e:
            log.warning("ring %s: cannot write its index: %s", self.path, e)
            return
        self._dirty = False
        self._saved_at = time.monotonic()

    def close(self) -> None:
        self.close_segment()
        self.save_meta(force=True)
        self.unlock()

    def delete(self) -> None:
        """Remove the ring's files and directory (a save that opened segments keeps reading them)."""
        self.close_segment()
        for seg in self.segments:
            _remove(seg.path)
        self.segments = []
        self._held_bytes = self._held_packets = 0
        for name in (META, META + ".tmp", LOST_LOG, LOST_LOG + ".tmp", LOCK):
            _remove(os.path.join(self.path, name))
        self.unlock()
        try:
            os.rmdir(self.path)
        except OSError as e:
            log.warning("ring %s: directory not removed: %s", self.path, e)

    # ---- saves ----

    def window(self, from_ns: int, to_ns: int) -> tuple[list[tuple[Segment, int]], list[LostSpan]]:
        """The segments whose records meet [from_ns, to_ns) (each with its size now: records appended later are not
        part of this snapshot) and the spans of lost data that meet it."""
        segs = [(s, s.bytes) for s in self.segments if s.packets and _overlaps(s.first_ns, s.last_ns, from_ns, to_ns)]
        spans = [s for s in self.spans if _overlaps(s.first_ns, s.last_ns, from_ns, to_ns)]
        return segs, spans


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
