"""``podcap get --from s3://BUCKET/PREFIX/CAPTURE``: a capture read straight from its bucket, without a collector.

``BucketClient`` answers the two calls ``podcap get`` makes of a collector — the capture's status, and a download
stream of one pcap file per pod (``DownloadChunk`` messages) — from the capture's manifest, its pages and its
objects, with the user's own credentials (the usual AWS environment, profile or web identity;
``--s3-endpoint``/``S3_ENDPOINT`` for a store other than AWS). A read is the collector's, step for step: find the
selected pods' segments that overlap the window — here only the pages and then the blocks the window overlaps are
fetched (the pages' block indexes say which: no request per segment to find out) — then keep their records inside
it that ``--filter`` matches. Which pods, which segments and which records are decided by ``podcap.formats.
selection``, the module the collector's ``Download`` uses, so the two cannot disagree. So ``-o DIR``, ``--format
pcapng`` and ``--merge`` work exactly as against a collector, and so does resuming a pod's file part-way
(``podcap.collector.downloads``, the same code as the collector's: the segments before the offset are not fetched at
all, the one it falls in only from the block that holds it). The client reads the capture its URL names; asked for
another it says so.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import BinaryIO, cast

from podcap.collector.bucket.objects import BucketUrl, ObjectNotFoundError, ObjectStore, StorageUrlError
from podcap.collector.downloads import Piece, PodFile, check_resume_points, file_messages, given
from podcap.collector.filters import compile_filter
from podcap.errors import InvalidInputError
from podcap.formats.bucket.blocks import BlockReader, open_segment, unpack_index, window
from podcap.formats.bucket.manifest import NAME, ArchivedSegment, Manifest, page_from_json
from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat
from podcap.formats.selection import Window, overlaps, pod_selected, select_records
from podcap.v1 import control_pb2


class FromUrlError(InvalidInputError):
    """A ``--from`` that is not ``s3://BUCKET/PREFIX/CAPTURE``."""


class BucketClient:
    def __init__(self, url: str, *, endpoint: str = "", region: str = "") -> None:
        try:
            parsed = BucketUrl.parse(url)
        except StorageUrlError:
            raise FromUrlError(f"--from {url!r} is not s3://BUCKET/PREFIX/CAPTURE") from None
        prefix, _, capture = parsed.prefix.rpartition("/")
        if not capture:
            raise FromUrlError(f"--from {url!r} names no capture: s3://BUCKET/PREFIX/CAPTURE (the capture's id "
                               "last)")
        self.capture_id = capture
        self.url = url
        self.endpoint = endpoint
        self.objects = ObjectStore(BucketUrl(parsed.bucket, prefix), endpoint=endpoint or None,
                                   region=region or None)
        self._manifest: Manifest | None = None
        self.fetched = 0  # segment bytes fetched for windows (compressed: only the blocks a window overlaps)

    def __enter__(self) -> BucketClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        return None

    def manifest(self) -> Manifest:
        if self._manifest is None:
            key = self.objects.url.key(self.capture_id, NAME)
            try:
                self._manifest = Manifest.from_json(self.objects.get(key))
            except ObjectNotFoundError as e:
                try:
                    self.objects.check()  # a missing bucket is not a missing capture (refused credentials neither)
                except ObjectNotFoundError:
                    where = f" at {self.endpoint}" if self.endpoint else ""
                    raise ObjectNotFoundError(f"no bucket {self.objects.url.bucket}{where} (reading {self.url})") \
                        from e
                raise ObjectNotFoundError(f"no capture at {self.url}: s3://{self.objects.url.bucket}/{key} does not "
                                          "exist") from e
        return self._manifest

    def get(self, capture_id: str) -> control_pb2.CaptureStatus:
        self._check_id(capture_id)
        return self.manifest().status

    def _check_id(self, capture_id: str) -> None:
        """This client reads the capture its URL names: asking it for another is a caller's mistake, said so (it
        must never answer silently with nothing, or with the other capture's files)."""
        if capture_id != self.capture_id:
            raise FromUrlError(f"capture {capture_id} is not the one --from names ({self.capture_id}, at {self.url})")

    def download(self, capture_id: str, pods: list[str], *, since_ns: int = 0, until_ns: int = 0,
                 bpf: str = "", resume: Sequence[control_pb2.ResumePoint] = ()) -> Iterator[control_pb2.DownloadChunk]:
        """The collector's Download over the bucket: find each selected pod's segments that overlap the window (its
        pages, then its blocks), then select their records (``podcap.formats.selection``, as the collector does)."""
        self._check_id(capture_id)
        m = self.manifest()
        points = check_resume_points(resume)
        window = Window(since_ns=since_ns, until_ns=until_ns, bpf=bpf)
        for pod in m.status.pods:
            p = pod.pod
            pf = m.formats.get(p.uid)
            if pf is None or not pod_selected(p, pods):
                continue
            fmt = FileFormat(pf.linktype, pf.snaplen, pf.nanosecond)
            segments = self._segments(p.uid, since_ns, until_ns)
            if window.whole:
                # Segments are opened only when the download reaches them: a resumed one fetches only what follows.
                pieces = [Piece(seg.size - FILE_HEADER_LEN, self._opener(seg), name=seg.key) for seg in segments]
                with PodFile(fmt.header(), pieces) as whole:
                    yield from file_messages(p, whole, points.get(p.uid))
                continue
            with tempfile.SpooledTemporaryFile(max_size=64 << 20) as kept:  # the window's records
                size = select_records(self._opened(segments, since_ns, until_ns), fmt, kept,  # type: ignore[arg-type]
                                      since_ns=since_ns, until_ns=until_ns, bpf=compile_filter(bpf, fmt))
                with PodFile(fmt.header(), [Piece(size - FILE_HEADER_LEN, given(kept))]) as window_file:  # type: ignore[arg-type]
                    yield from file_messages(p, window_file, points.get(p.uid))

    def _opened(self, segments: list[ArchivedSegment], since_ns: int,
                until_ns: int) -> Iterator[tuple[BinaryIO, int]]:
        """Each segment opened in turn — of a compressed one only the blocks the window overlaps — and closed once
        the next is asked for."""
        for seg in segments:
            reader, length = self._open(seg, since_ns, until_ns)
            with reader:
                yield reader, length
                self.fetched += getattr(reader, "fetched", length)

    def _opener(self, seg: ArchivedSegment) -> Callable[[], BinaryIO]:
        return lambda: self._open(seg)[0]

    def _segments(self, uid: str, since_ns: int, until_ns: int) -> list[ArchivedSegment]:
        """The pod's segments that overlap the window, from the pages that do (a page retention deleted since the
        manifest was read holds nothing any more)."""
        out: list[ArchivedSegment] = []
        for ref in self.manifest().pages.get(uid, []):
            if not ref.overlaps(since_ns, until_ns):
                continue
            try:
                page = page_from_json(self.objects.get(ref.key))
            except ObjectNotFoundError:
                continue
            out += [s for s in page if overlaps(s.first_ts_ns, s.last_ts_ns, since_ns, until_ns)]
        return out

    def _open(self, seg: ArchivedSegment, since_ns: int = 0, until_ns: int = 0) -> tuple[BinaryIO, int]:
        """The segment as a seekable file of the window's blocks: the page's block index says which (no request);
        a segment listed without one has its index read from the object's end."""
        if not seg.blocks or not seg.header:
            return open_segment(self.objects, seg.key, seg.size, since_ns, until_ns)
        reader = BlockReader(self.objects, seg.key, seg.header, window(unpack_index(seg.blocks), since_ns, until_ns))
        return cast(BinaryIO, reader), reader.length
