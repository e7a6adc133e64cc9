"""What the capture logic needs of a place that keeps captured packets: the storage interface.

Capture logic (``podcap.collector.captures``) never builds a path, opens a file or names a bucket; it asks a
``CaptureStorage`` for each pod's ``PodLocation`` and works through it: a ``SegmentWriter`` appends chunks of
whole records and rotates segments, ``sync_later`` hands back the device flush to run outside the capture's lock,
``delete`` retires a segment (retention), ``open`` gives a reader a segment, ``record_gap`` notes where the pod's
capture has holes, and the ``recover_*`` calls bring a pod's segments back to what was acknowledged after a crash;
``CaptureStorage.remove`` deletes a whole capture. The capture logic keeps no list of a pod's segments: the catalog
indexes them, and a ``PodLocation`` makes a ``SegmentInfo`` of any index (``segment``).
``SegmentInfo`` describes one segment in the implementation's own terms (``locator``: a path, an object key).

A storage with a second tier (``CaptureStorage.second_tier``) moves closed segments there: the capture logic asks it
to ``archive`` one (the copy's locator comes back, and the catalog records it), then to ``release`` the first tier's
copy, and after each round to ``describe`` the capture (``CaptureDescription``: its status and each pod's archived
segments, read from the catalog through ``ArchivedIndex``). How the second tier describes a capture (a bucket's
manifest and pages) is its own business: the capture logic never sees that format.

One implementation per module, in the spirit of Retina's output locations: ``podcap.collector.storage.local``
(rotating pcap files under the data dir, the embedded default) and ``podcap.collector.storage.tiered`` (the same
files as a write-ahead tier, closed segments archived to an S3-compatible bucket). ``pod_path`` is the one place
that lays out a pod's segments under the data dir.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from podcap.errors import ResourceError
from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat
from podcap.v1 import common_pb2, control_pb2


class StorageError(ResourceError, OSError):
    """Storing failed (disk full, permissions, a device error); the message names what failed."""

    @property
    def disk_full(self) -> bool:
        return self.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass
class SegmentInfo:
    """One segment and what it holds. ``bytes`` includes the file header; ``locator`` is where the implementation
    keeps it (a path for local storage)."""

    index: int
    locator: str
    bytes: int = FILE_HEADER_LEN
    packets: int = 0
    first_ts_ns: int = 0
    last_ts_ns: int = 0
    opened_at: float = 0.0
    # Where the second tier holds it once archived (an object key), "" while only the first tier has it.
    archived: str = ""


class PendingSync(Protocol):
    """Appended bytes waiting for their device flush: ``run`` exactly once (from any thread), or ``close``."""

    def run(self) -> None: ...

    def close(self) -> None: ...


class SegmentWriter(Protocol):
    """Appends chunks of whole records to one pod's current segment, starting a new one as configured."""

    fmt: FileFormat
    current: SegmentInfo | None

    def header_cost(self, chunk_len: int, now: float) -> int:
        """Bytes a file header would add if ``chunk_len`` bytes were appended now."""
        ...

    def append(self, records: bytes | memoryview, *, packets: int, first_ts_ns: int, last_ts_ns: int,
               now: float | None = None) -> tuple[int, SegmentInfo | None]:
        """Append whole records; return (bytes added incl. a new header, the segment started, if one was).
        Raises StorageError and keeps the segment whole."""
        ...

    def publish(self) -> None:
        """Make what was appended visible to a reader that opens the segment now."""
        ...

    def sync(self) -> None:
        """Make what was appended durable, now."""
        ...

    def sync_later(self) -> PendingSync | None:
        """Publish what was appended and return its durable flush, to run without locks held."""
        ...

    def close(self) -> None:
        """Sync and close the current segment; on StorageError the writer stays open and keeps everything."""
        ...


class PodLocation(Protocol):
    """Where one pod of one capture keeps its segments and its gap log."""

    def segment(self, index: int) -> SegmentInfo:
        """The description of the pod's segment ``index`` (sizes are filled in by the caller)."""
        ...

    def writer(self, fmt: FileFormat, *, segment_bytes: int, segment_seconds: int, next_index: int) -> SegmentWriter:
        ...

    def open(self, seg: SegmentInfo, since_ns: int = 0, until_ns: int = 0) -> tuple[BinaryIO, int] | None:
        """The segment for reading as a pcap file, and its length; None when it is gone (retention deleted it).
        With a time window (0: unbounded) the file may hold only the parts of the segment the window overlaps (a
        compressed object's blocks); the caller still filters records by time."""
        ...

    def delete(self, seg: SegmentInfo) -> None:
        """Delete a closed segment (gone already is fine)."""
        ...

    def exists(self, seg: SegmentInfo) -> bool:
        ...

    def recover_unknown(self, keep: Container[int]) -> list[str]:
        """Delete what the database does not know of (written after the last commit: segments whose index is not
        in ``keep``, temporary files); return what was deleted."""
        ...

    def local_segments(self) -> list[int]:
        """Indices of the segments the first tier holds (its files)."""
        ...

    def recover_segment(self, seg: SegmentInfo, fmt: FileFormat) -> int:
        """Cut the segment back to ``seg.bytes`` and to whole records; return its size. FileNotFoundError if gone."""
        ...

    def record_gap(self, *, first_ns: int, last_ns: int, packets: int, cause: str, stream: str) -> None:
        """Note that packets are missing (see ``podcap.collector.storage.gaps``)."""
        ...


class ArchivedIndex(Protocol):
    """What the catalog knows of one pod's archived segments (the second tier describes the pod from it)."""

    def archived(self, first: int, end: int) -> list[SegmentInfo]:
        """The pod's archived segments with ``first <= index < end``, in order."""
        ...

    def archived_groups(self, width: int) -> set[int]:
        """``index // width`` of every archived segment of the pod (which groups of ``width`` consecutive indices
        hold any)."""
        ...


@dataclass(frozen=True)
class PodKey:
    """Which pod of which capture: what names its place in either tier."""

    capture_id: str
    namespace: str
    dir_name: str  # the pod's name, or name.uid-prefix for a pod re-created under the same name
    uid: str


@dataclass(frozen=True)
class DescribedPod:
    """One pod of a ``CaptureDescription``: what the second tier needs to describe its archived segments."""

    key: PodKey
    fmt: common_pb2.PcapFormat | None  # what the pod's segments hold (None: nothing yet)
    retired_through: int  # retention deleted every segment up to this index
    index: ArchivedIndex


@dataclass(frozen=True)
class CaptureDescription:
    """A capture as the second tier describes it next to its segments. ``complete``: over, and every segment of it
    in the second tier."""

    capture_id: str
    status: Callable[[], control_pb2.CaptureStatus]  # called only when the description is written
    pods: list[DescribedPod]
    complete: bool


class SecondTier(Protocol):
    """Where closed segments go from the first tier (the local files), and the capture's description there."""

    def archive(self, pod: PodKey, seg: SegmentInfo) -> str:
        """Copy a closed segment to the second tier, verified; return where it is there (its ``archived``)."""
        ...

    def release(self, pod: PodKey, seg: SegmentInfo) -> None:
        """Drop the first tier's copy of an archived segment (once its ``archived`` is recorded)."""
        ...

    def describe(self, capture: CaptureDescription) -> bool:
        """Bring the capture's description in the second tier up to date with what is archived (only what changed
        is written); returns whether anything was written. Raises ``PodcapError`` (the next round tries again)."""
        ...

    def forget(self, keep: set[str]) -> None:
        """Drop what is remembered of captures not in ``keep`` (deleted)."""
        ...


def pod_path(capture_id: str, namespace: str, dir_name: str) -> str:
    """Where a pod's segments are under the data dir, relative to it (what ``podcap status`` shows as its path)."""
    return os.path.join("captures", capture_id, namespace, dir_name)


class CaptureStorage(Protocol):
    """A storage backend: names each pod's location. ``second_tier``: where closed segments move (None: they stay
    in the first tier); ``tiered`` says whether there is one."""

    name: str
    tiered: bool
    second_tier: SecondTier | None

    def pod(self, capture_id: str, namespace: str, pod_dir_name: str) -> PodLocation:
        """The pod's location; the parts are validated names. Raises StorageError for an unusable location."""
        ...

    def remove(self, capture_id: str) -> None:
        """Delete everything kept of the capture: every pod's segments and gap log (tiered storage: its objects,
        pages and manifest too). What is gone already is fine; raises a ``PodcapError`` when something could not be
        deleted now (the object store down), and a retry deletes the rest."""
        ...
