"""Per-pod pcap segments on the local disk: ``<data>/captures/<capture>/<namespace>/<pod>/NNNNNN.pcap``.

Invariants: a segment appears under its final name only once its file header is written (created as a temp file
and renamed), and afterwards only whole records are appended (one ``write`` per chunk), so every segment is a
valid pcap file at all times. A new segment starts when the current one would exceed ``segment_bytes`` or is
older than ``segment_seconds`` — always at a chunk boundary. Paths are built only from validated names
(``podcap.names``) and checked to stay inside the data dir.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from podcap.pcapfile import FILE_HEADER_LEN, FileFormat, parse_file_header

SEGMENT_SUFFIX = ".pcap"


class StorageError(OSError):
    """Writing to the data dir failed (disk full, permissions); the message names the file."""


@dataclass
class Segment:
    path: str
    size: int
    opened_at: float


def pod_dir(data_dir: str, capture_id: str, namespace: str, pod: str) -> str:
    """Directory of one pod's segments. The parts must already be validated names; this re-checks containment."""
    base = os.path.realpath(os.path.join(data_dir, "captures"))
    path = os.path.realpath(os.path.join(base, capture_id, namespace, pod))
    if os.path.commonpath([base, path]) != base or path == base:
        raise StorageError(f"refusing path outside the data dir: {path}")
    return path


def list_segments(directory: str) -> list[str]:
    """Segment files of a pod directory in order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [os.path.join(directory, n) for n in sorted(names) if n.endswith(SEGMENT_SUFFIX) and n[:-5].isdigit()]


class PodWriter:
    """Appends chunks of records to one pod's current segment, rotating as configured."""

    def __init__(self, directory: str, fmt: FileFormat, *, segment_bytes: int, segment_seconds: int) -> None:
        self.directory = directory
        self.fmt = fmt
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self._fd: int | None = None
        self.current: Segment | None = None
        existing = list_segments(directory)
        self._next_index = int(os.path.basename(existing[-1])[:-5]) + 1 if existing else 1
        self.segments = len(existing)

    def header_cost(self, chunk_len: int, now: float) -> int:
        """Bytes a new file header would add if ``chunk_len`` bytes were appended now."""
        return FILE_HEADER_LEN if self._needs_new_segment(chunk_len, now) else 0

    def _needs_new_segment(self, chunk_len: int, now: float) -> bool:
        seg = self.current
        if seg is None:
            return True
        if seg.size > FILE_HEADER_LEN and seg.size + chunk_len > self.segment_bytes:
            return True
        return bool(self.segment_seconds) and now - seg.opened_at >= self.segment_seconds

    def _open_segment(self, now: float) -> None:
        self.close()
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        path = os.path.join(self.directory, f"{self._next_index:06d}{SEGMENT_SUFFIX}")
        tmp = path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            try:
                os.write(fd, self.fmt.header())
                os.rename(tmp, path)
            except BaseException:
                os.close(fd)
                raise
        except OSError as e:
            raise StorageError(e.errno, f"cannot create segment {path}: {e.strerror}") from e
        self._fd = fd
        self._next_index += 1
        self.segments += 1
        self.current = Segment(path, FILE_HEADER_LEN, now)

    def append(self, records: bytes | memoryview, now: float | None = None) -> int:
        """Append whole records; return the bytes added to disk (records plus any new file header)."""
        now = time.time() if now is None else now
        added = 0
        if self._needs_new_segment(len(records), now):
            self._open_segment(now)
            added += FILE_HEADER_LEN
        assert self._fd is not None and self.current is not None
        try:
            written = os.write(self._fd, records)
            while written < len(records):
                written += os.write(self._fd, memoryview(records)[written:])
        except OSError as e:
            # Keep the file valid: cut off whatever part of this chunk reached the disk.
            try:
                os.ftruncate(self._fd, self.current.size)
            except OSError:
                pass
            raise StorageError(e.errno, f"cannot write {self.current.path}: {e.strerror}") from e
        self.current.size += len(records)
        return added + len(records)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.current = None


def read_segment_format(path: str) -> FileFormat:
    with open(path, "rb") as f:
        return parse_file_header(f.read(FILE_HEADER_LEN))
