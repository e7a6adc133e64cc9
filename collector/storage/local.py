"""Per-pod pcap segments on the local disk: ``<data>/captures/<capture>/<namespace>/<pod>/NNNNNN.pcap``.

Invariants: a segment appears under its final name only once its file header is written (created as a temp file
and renamed), and afterwards only whole records are appended (``Appender``: direct I/O where possible; a failed
chunk is cut back off), so every segment holds whole chunks at all times; a reader first calls ``publish`` so the
file holds everything appended so far. A new segment starts when the current one would exceed
``segment_bytes`` or is older than ``segment_seconds`` — always at a chunk boundary. ``sync`` makes what was
appended durable; the capture manager records the synced size in SQLite before acknowledging, and on startup
``recover_segment`` cuts each file back to what was recorded (and to whole records). Paths are built only from
validated names (``podcap.names``) and checked to stay inside the data dir.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Container
from dataclasses import dataclass
from typing import BinaryIO

from podcap.collector.storage.appender import Appender
from podcap.collector.storage.base import SecondTier, SegmentInfo, StorageError, pod_path
from podcap.collector.storage.gaps import record_gap
from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat, valid_prefix_length

SEGMENT_SUFFIX = ".pcap"


def capture_dir(data_dir: str, capture_id: str) -> str:
    """Directory of one capture (a validated id); checked to stay inside the data dir."""
    base = os.path.realpath(os.path.join(data_dir, "captures"))
    path = os.path.realpath(os.path.join(base, capture_id))
    if os.path.dirname(path) != base:
        raise StorageError(errno.EINVAL, f"refusing path outside the data dir: {path}")
    return path


def remove_capture_dir(data_dir: str, capture_id: str) -> None:
    """Delete a capture's directory and everything in it (gone already is fine)."""
    path = capture_dir(data_dir, capture_id)
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StorageError(e.errno or errno.EIO, f"cannot delete {path}: {e.strerror or e}") from e


def pod_dir(data_dir: str, capture_id: str, namespace: str, pod: str) -> str:
    """Directory of one pod's segments. The parts must already be validated names; this re-checks containment."""
    base = os.path.realpath(os.path.join(data_dir, "captures"))
    path = os.path.realpath(os.path.join(data_dir, pod_path(capture_id, namespace, pod)))
    if os.path.commonpath([base, path]) != base or path == base:
        raise StorageError(errno.EINVAL, f"refusing path outside the data dir: {path}")
    return path


def delete_segment_file(seg: SegmentInfo) -> None:
    """Delete a segment's file (gone already is fine)."""
    try:
        os.unlink(seg.locator)
    except FileNotFoundError:
        pass


def segment_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"{index:06d}{SEGMENT_SUFFIX}")


def list_segments(directory: str) -> list[str]:
    """Segment files of a pod directory in order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [os.path.join(directory, n) for n in sorted(names) if n.endswith(SEGMENT_SUFFIX) and n[:-5].isdigit()]


def recover_segment(path: str, recorded_bytes: int, fmt: FileFormat) -> int:
    """Cut a segment back to ``recorded_bytes`` (what was acknowledged) and to whole records; return its size.

    Anything past the recorded size was never acknowledged, so the agent still holds it and sends it again."""
    with open(path, "r+b") as f:
        data = f.read()
        keep = min(len(data), max(FILE_HEADER_LEN, recorded_bytes))
        keep = FILE_HEADER_LEN + valid_prefix_length(data[FILE_HEADER_LEN:keep], fmt)
        if keep != len(data):
            f.truncate(keep)
            os.fsync(f.fileno())
    return keep


def remove_stray_files(directory: str, keep: Container[int]) -> list[str]:
    """Delete segments (and temp files) of a pod directory that the database does not know."""
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for n in names:
        path = os.path.join(directory, n)
        if n.endswith(".tmp") or (n.endswith(SEGMENT_SUFFIX) and n[:-5].isdigit() and int(n[:-5]) not in keep):
            os.unlink(path)
            removed.append(path)
    return removed


@dataclass
class FileSync:
    """A segment's bytes, published and waiting for the device flush (``run``, from any thread, exactly once)."""

    fd: int
    path: str

    def run(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as e:
            raise StorageError(e.errno, f"cannot sync {self.path}: {e.strerror}") from e
        finally:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PodWriter:
    """Appends chunks of records to one pod's current segment, rotating as configured (a ``SegmentWriter``)."""

    def __init__(self, directory: str, fmt: FileFormat, *, segment_bytes: int, segment_seconds: int,
                 next_index: int, direct: bool = True) -> None:
        self.directory = directory
        self.fmt = fmt
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self.direct = direct
        self._file: Appender | None = None
        self.current: SegmentInfo | None = None
        self.next_index = next_index
        # The current segment's header is on disk but was not yet reported as added (its first append failed).
        self._header_uncounted = False

    def header_cost(self, chunk_len: int, now: float) -> int:
        """Bytes a file header adds to the disk if ``chunk_len`` bytes are appended now (a new segment's, or that of
        a segment opened by an append that then failed, not yet counted)."""
        return FILE_HEADER_LEN if self._needs_new_segment(chunk_len, now) or self._header_uncounted else 0

    def _needs_new_segment(self, chunk_len: int, now: float) -> bool:
        seg = self.current
        if seg is None:
            return True
        if seg.bytes > FILE_HEADER_LEN and seg.bytes + chunk_len > self.segment_bytes:
            return True
        return bool(self.segment_seconds) and now - seg.opened_at >= self.segment_seconds

    def _open_segment(self, now: float) -> SegmentInfo:
        self.close()
        path = segment_path(self.directory, self.next_index)
        tmp = path + ".tmp"
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            header = self.fmt.header()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                if os.write(fd, header) != len(header):
                    raise OSError(errno.EIO, "short write")
            finally:
                os.close(fd)
            os.rename(tmp, path)
            appender = Appender(path, len(header), header, direct=self.direct)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise StorageError(e.errno, f"cannot create segment {path}: {e.strerror}") from e
        self._file = appender
        self.current = SegmentInfo(self.next_index, path, FILE_HEADER_LEN, opened_at=now)
        self.next_index += 1
        return self.current

    def append(self, records: bytes | memoryview, *, packets: int, first_ts_ns: int, last_ts_ns: int,
               now: float | None = None) -> tuple[int, SegmentInfo | None]:
        """Append whole records; return (bytes added to disk incl. any new header, the new segment if one
        was started)."""
        now = time.time() if now is None else now
        started = None
        if self._needs_new_segment(len(records), now):
            started = self._open_segment(now)
            self._header_uncounted = True
        assert self._file is not None and self.current is not None
        seg = self.current
        try:
            self._file.append(records)  # cut back off on failure: the file stays whole chunks
        except OSError as e:
            raise StorageError(e.errno, f"cannot write {seg.locator}: {e.strerror}") from e
        seg.bytes += len(records)
        seg.packets += packets
        if not seg.first_ts_ns:
            seg.first_ts_ns = first_ts_ns
        seg.last_ts_ns = max(seg.last_ts_ns, last_ts_ns)
        added = len(records) + (FILE_HEADER_LEN if self._header_uncounted else 0)
        self._header_uncounted = False
        return added, started

    def publish(self) -> None:
        """Make the current segment file hold everything appended (before a reader opens it)."""
        if self._file is not None:
            try:
                self._file.publish()
            except OSError as e:
                raise StorageError(e.errno, f"cannot write {self._file.path}: {e.strerror}") from e

    def sync(self) -> None:
        if self._file is not None:
            try:
                self._file.sync()
            except OSError as e:
                raise StorageError(e.errno, f"cannot sync {self._file.path}: {e.strerror}") from e

    def sync_later(self) -> FileSync | None:
        """Everything appended so far, made durable by ``FileSync.run`` (see ``Appender.sync_later``)."""
        if self._file is None:
            return None
        try:
            return FileSync(self._file.sync_later(), self._file.path)
        except OSError as e:
            raise StorageError(e.errno, f"cannot write {self._file.path}: {e.strerror}") from e

    def close(self) -> None:
        """Sync and close the current segment. Raises StorageError and stays open (with everything appended still
        held) when that fails, so a later close or sync can finish the job."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError as e:
                raise StorageError(e.errno, f"cannot close {self._file.path}: {e.strerror}") from e
            self._file = None
        self.current = None


class LocalPodLocation:
    """One pod's directory: its segments ``NNNNNN.pcap`` and ``gaps.tsv`` (a ``PodLocation``)."""

    def __init__(self, directory: str, *, direct: bool = True) -> None:
        self.directory = directory
        self.direct = direct

    def segment(self, index: int) -> SegmentInfo:
        return SegmentInfo(index, segment_path(self.directory, index))

    def writer(self, fmt: FileFormat, *, segment_bytes: int, segment_seconds: int, next_index: int) -> PodWriter:
        return PodWriter(self.directory, fmt, segment_bytes=segment_bytes, segment_seconds=segment_seconds,
                         next_index=next_index, direct=self.direct)

    def open(self, seg: SegmentInfo, since_ns: int = 0, until_ns: int = 0) -> tuple[BinaryIO, int] | None:
        try:
            return open(seg.locator, "rb"), seg.bytes  # noqa: SIM115 (closed by the reader)
        except FileNotFoundError:
            return None

    def delete(self, seg: SegmentInfo) -> None:
        delete_segment_file(seg)

    def exists(self, seg: SegmentInfo) -> bool:
        return os.path.exists(seg.locator)

    def recover_unknown(self, keep: Container[int]) -> list[str]:
        return remove_stray_files(self.directory, keep)

    def local_segments(self) -> list[int]:
        return [int(os.path.basename(p)[: -len(SEGMENT_SUFFIX)]) for p in list_segments(self.directory)]

    def recover_segment(self, seg: SegmentInfo, fmt: FileFormat) -> int:
        return recover_segment(seg.locator, seg.bytes, fmt)

    def record_gap(self, *, first_ns: int, last_ns: int, packets: int, cause: str, stream: str) -> None:
        record_gap(self.directory, first_ns=first_ns, last_ns=last_ns, packets=packets, cause=cause, stream=stream)


class LocalStorage:
    """The data dir: ``<data>/captures/<capture>/<namespace>/<pod>/`` per pod (a ``CaptureStorage``)."""

    name = "local"
    tiered = False
    second_tier: SecondTier | None = None

    def __init__(self, data_dir: str, *, direct: bool = True) -> None:
        self.data_dir = data_dir
        self.direct = direct

    def pod(self, capture_id: str, namespace: str, pod_dir_name: str) -> LocalPodLocation:
        return LocalPodLocation(pod_dir(self.data_dir, capture_id, namespace, pod_dir_name), direct=self.direct)

    def remove(self, capture_id: str) -> None:
        remove_capture_dir(self.data_dir, capture_id)
