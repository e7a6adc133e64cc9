"""Local disk as the write-ahead tier, an S3-compatible bucket as the capture's home: ``TieredStorage``.

Chunks are written, synced and acknowledged exactly as with local storage (``podcap.collector.storage.local``):
nothing about acknowledgement waits for the object store. Once a segment is closed (rotation, the stream's or the
capture's end) the capture logic archives it (``archive``: upload, every request checked by the server with
Content-MD5, the size checked with a HEAD), records where it went in the database, and only then releases the local
file (``release``). A crash anywhere in between either uploads the same bytes to the same key again or finds the
local copy of a recorded segment and releases it: nothing acknowledged is lost, nothing is stored as two objects.

The bucket is laid out like the data dir: ``PREFIX/<capture>/<namespace>/<pod>/NNNNNN.pcap.zst``, with
``PREFIX/<capture>/manifest.json`` and each pod's ``segments-NNNNNN.json`` pages
(``podcap.formats.bucket.manifest``) saying what the capture holds. A segment
is read from the local tier while it is there and from the bucket afterwards, by ranged GETs of the blocks it needs
(``podcap.formats.bucket.blocks.BlockReader``); retention deletes both copies; deleting a capture deletes its
directory and everything under its key prefix.
"""

from __future__ import annotations

import errno
import os
from typing import BinaryIO

from podcap.collector.bucket.objects import ObjectNotFoundError, ObjectStore
from podcap.collector.storage.base import ArchivedCopy, SegmentInfo, StorageError
from podcap.collector.storage.local import LocalPodLocation, pod_dir, remove_capture_dir
from podcap.formats.bucket.blocks import Block, encode_stream, open_segment, pack_index
from podcap.formats.bucket.manifest import NAME
from podcap.formats.pcap import FILE_HEADER_LEN, PcapFormatError


class TieredPodLocation(LocalPodLocation):
    def __init__(self, directory: str, objects: ObjectStore, key_prefix: str) -> None:
        super().__init__(directory)
        self.objects = objects
        self.key_prefix = key_prefix

    def archive(self, seg: SegmentInfo) -> ArchivedCopy:
        key = f"{self.key_prefix}/{os.path.basename(seg.locator)}.zst"
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
        return ArchivedCopy(key, header, pack_index(blocks))

    def page_locator(self, number: int) -> str:
        return f"{self.key_prefix}/segments-{number:06d}.json"

    def put_page(self, number: int, body: bytes | None) -> None:
        key = self.page_locator(number)
        if body is None:
            self.objects.delete([key])
        else:
            self.objects.put_bytes(key, body, "application/json")

    def get_page(self, number: int) -> bytes | None:
        key = self.page_locator(number)
        try:
            return self.objects.get(key)
        except ObjectNotFoundError:
            return None

    def release(self, seg: SegmentInfo) -> None:
        if seg.archived:
            super().delete(seg)

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
    name = "s3"
    tiered = True

    def __init__(self, data_dir: str, objects: ObjectStore) -> None:
        self.data_dir = data_dir
        self.objects = objects

    def describe(self, capture_id: str, manifest: bytes) -> None:
        self.objects.put_bytes(self.objects.url.key(capture_id, NAME), manifest, "application/json")

    def pod(self, capture_id: str, namespace: str, pod_dir_name: str) -> TieredPodLocation:
        directory = pod_dir(self.data_dir, capture_id, namespace, pod_dir_name)
        return TieredPodLocation(directory, self.objects, self.objects.url.key(capture_id, namespace, pod_dir_name))

    def remove(self, capture_id: str) -> None:
        """The local tier's files, then every object under ``PREFIX/<capture>/`` (segments, pages, the manifest,
        listed: so objects of a collector that died before recording them go too)."""
        remove_capture_dir(self.data_dir, capture_id)
        self.objects.delete(self.objects.list_keys(self.objects.url.key(capture_id) + "/"))
