"""Local disk as the write-ahead tier, an S3-compatible bucket as the capture's home: ``TieredStorage``.

Chunks are written, synced and acknowledged exactly as with local storage (``podcap.collector.storage.local``):
nothing about acknowledgement waits for the object store. Once a segment is closed (rotation, the stream's or the
capture's end) the capture logic archives it (``archive``: upload, every request checked by the server with
Content-MD5, the size checked with a HEAD), records where it went in the database, and only then releases the local
file (``release``). A crash anywhere in between either uploads the same bytes to the same key again or finds the
local copy of a recorded segment and releases it: nothing acknowledged is lost, nothing is stored as two objects.

The bucket is laid out like the data dir: ``PREFIX/<capture>/<namespace>/<pod>/NNNNNN.pcap.zst``, with
``PREFIX/<capture>/manifest.json`` and each pod's ``segments-NNNNNN.json`` pages
(``podcap.formats.bucket.manifest``, kept up to date by ``podcap.collector.storage.description``) saying what
the capture holds. A segment is read from the local tier while it is there and from the bucket afterwards, by
ranged GETs of the blocks it needs (``podcap.formats.bucket.blocks``); retention deletes both copies; deleting
a capture deletes its directory and everything under its key prefix. The capture logic sees none of this: it asks
the storage's ``SecondTier`` to archive, release and describe.
"""

from __future__ import annotations

import errno
import os
from typing import BinaryIO

from podcap.collector.bucket.objects import ObjectStore
from podcap.collector.storage.base import CaptureDescription, PodKey, SecondTier, SegmentInfo, StorageError
from podcap.collector.storage.description import ArchivedCopy, Describer
from podcap.collector.storage.local import LocalPodLocation, delete_segment_file, pod_dir, remove_capture_dir
from podcap.formats.bucket.blocks import Block, encode_stream, open_segment, pack_index
from podcap.formats.pcap import FILE_HEADER_LEN, PcapFormatError


class TieredPodLocation(LocalPodLocation):
    """A pod's segments in either tier: read from the local file while it is there, else from the bucket; retention
    deletes both copies."""

    def __init__(self, directory: str, objects: ObjectStore) -> None:
        super().__init__(directory)
        self.objects = objects

    def open(self, seg: SegmentInfo, since_ns: int = 0, until_ns: int = 0) -> tuple[BinaryIO, int] | None:
        local = super().open(seg, since_ns, until_ns)
        if local is not None or not seg.archived:
            return local
        reader, length = open_segment(self.objects, seg.archived, seg.bytes, since_ns, until_ns)
        return reader, length

    def exists(self, seg: SegmentInfo) -> bool:
        return bool(seg.archived) or super().exists(seg)

    def delete(self, seg: SegmentInfo) -> None:
        super().delete(seg)
        if seg.archived:
            self.objects.delete([seg.archived])


class TieredStorage:
    """The data dir as the first tier, a bucket as the second (a ``CaptureStorage`` and its ``SecondTier``)."""

    name = "s3"
    tiered = True

    def __init__(self, data_dir: str, objects: ObjectStore) -> None:
        self.data_dir = data_dir
        self.objects = objects
        self.describer = Describer(objects)
        self.second_tier: SecondTier | None = self

    def pod(self, capture_id: str, namespace: str, pod_dir_name: str) -> TieredPodLocation:
        return TieredPodLocation(pod_dir(self.data_dir, capture_id, namespace, pod_dir_name), self.objects)

    def remove(self, capture_id: str) -> None:
        """The local tier's files, then every object under ``PREFIX/<capture>/`` (segments, pages, the manifest,
        listed: so objects of a collector that died before recording them go too)."""
        remove_capture_dir(self.data_dir, capture_id)
        self.objects.delete(self.objects.list_keys(self.objects.url.key(capture_id) + "/"))

    # ---- the second tier ----

    def archive(self, pod: PodKey, seg: SegmentInfo) -> str:
        """Upload the segment compressed in blocks (``PREFIX/<capture>/<namespace>/<pod>/NNNNNN.pcap.zst``); its
        header and block index go into its page at the next ``describe``."""
        key = self.objects.url.key(pod.capture_id, pod.namespace, pod.dir_name, os.path.basename(seg.locator) + ".zst")
        blocks: list[Block] = []
        try:
            with open(seg.locator, "rb") as f:
                header = f.read(FILE_HEADER_LEN)
                f.seek(0)
                # Read, compressed and uploaded a part at a time: memory stays bounded for a segment of any size.
                self.objects.upload_stream(encode_stream(f, seg.bytes, blocks), key)
        except OSError as e:
            raise StorageError(e.errno or errno.EIO, f"cannot archive {seg.locator}: {e.strerror or e}") from e
        except PcapFormatError as e:
            raise StorageError(errno.EIO, f"cannot archive {seg.locator}: {e}") from e
        self.describer.add(pod, seg.index, ArchivedCopy(key, header, pack_index(blocks)))
        return key

    def release(self, pod: PodKey, seg: SegmentInfo) -> None:
        if seg.archived:
            delete_segment_file(seg)

    def describe(self, capture: CaptureDescription) -> bool:
        return self.describer.sync(capture)

    def forget(self, keep: set[str]) -> None:
        self.describer.forget(keep)
