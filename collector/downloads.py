"""A pod's file as a download serves it, from any offset: the one place where both readers of stored captures — the
collector's ``Download`` RPC and ``podcap get --from s3://`` (``podcap.collector.cli.get.bucket``) — build a pod's
byte stream, resume it part-way and check a resume, so the two cannot drift.

A pod's file is the pcap file header, then the records of each of its segments in order (each segment's own header
left out), or of a window's selected records. ``PodFile`` is that stream over ``Piece``\\ s opened only when a read
reaches them: a download resumed at an offset skips the segments before it without opening them (in the bucket:
without a request), and reads only the blocks it sends.

**Resuming.** The client holds the file's first ``offset`` bytes and sends, with the offset, the SHA-256 of the last
``check_bytes`` of them (``CHECK_BYTES``: 64 KiB, or all of them when fewer). The server hashes its own bytes there
and, when they match, sends the file from ``offset``; when not, the whole file from 0 with the reason
(``FileStart.resume_refused``). Why the bytes right before the offset, and why a hash of them:

- What can make kept bytes differ from the server's is a change of the stream or of the kept file, and each one
  shows at the boundary: retention deleted the pod's oldest segments (the whole stream shifted: other records,
  other timestamps at every position), the kept file is another download's (another window or capture: the CLI's
  journal already rules those out, this is the check that does not trust it), or it was torn (a machine crash
  after the CLI was killed leaves zeros or garbage where the last writes were). 64 KiB covers dozens of records,
  each with its timestamp, so a shifted stream cannot match by chance.
- Checking the whole prefix would cost reading it again on both sides — for the collector possibly fetching it
  back from the bucket — which is the transfer a resume exists to avoid; the tail costs one read of 64 KiB.
- A hash rather than the bytes themselves (or the server sending its tail for the client to compare): 32 bytes
  go up, nothing extra comes down, so exactly the missing bytes of the file travel, and a mismatch costs no round
  trip (the whole file simply follows).

An offset past the end of the file is an error (``ResumeOffsetError``, OUT_OF_RANGE), not a silent restart: a
client that asks for it holds more than the file has, which only a caller's mistake or a file that shrank
(retention) explains; the CLI checks the pod's size first and starts such a file again itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from podcap.errors import InvalidInputError, OutOfRangeError, ResourceError
from podcap.formats.pcap import FILE_HEADER_LEN
from podcap.v1 import common_pb2, control_pb2

BLOCK = 1 << 20  # bytes per DownloadChunk.data (the proto's limit)
CHECK_BYTES = 64 << 10  # what a client's resume check covers (less when it holds less)
MAX_CHECK_BYTES = 1 << 20
MAX_RESUME_POINTS = 10000


class ResumeOffsetError(OutOfRangeError):
    """A resume offset past the end of the pod's file."""


class ResumePointError(InvalidInputError):
    """A ``ResumePoint`` that cannot be right (its check longer than the offset, a hash of the wrong length...)."""


class ShortPieceError(ResourceError):
    """A stored segment holds fewer bytes than its recorded size."""


@dataclass(frozen=True)
class Piece:
    """``length`` bytes of records starting at ``start`` of what ``open`` gives (a segment, a window's records)."""

    length: int
    open: Callable[[], BinaryIO]
    start: int = FILE_HEADER_LEN
    name: str = ""  # for errors: which segment


def given(f: BinaryIO) -> Callable[[], BinaryIO]:
    """A ``Piece.open`` for a file that is open already."""
    return lambda: f


class PodFile:
    """One pod's file: ``header`` then each piece's records. Pieces are opened when a read first reaches them and
    closed by ``close``."""

    def __init__(self, header: bytes, pieces: Sequence[Piece]) -> None:
        self.header = header
        self.pieces = list(pieces)
        self.size = len(header) + sum(p.length for p in self.pieces)
        self._open: dict[int, BinaryIO] = {}

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()

    def __enter__(self) -> PodFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def blocks(self, offset: int = 0, end: int | None = None, block: int = BLOCK) -> Iterator[bytes]:
        """The file's bytes [offset, end) in blocks of at most ``block`` (the header, then each piece's)."""
        end = self.size if end is None else min(end, self.size)
        if offset < len(self.header) and offset < end:
            yield self.header[offset:min(end, len(self.header))]
        base = len(self.header)
        for i, piece in enumerate(self.pieces):
            lo, hi = max(offset, base), min(end, base + piece.length)
            if lo < hi:
                f = self._open.get(i)
                if f is None:
                    f = self._open[i] = piece.open()
                f.seek(piece.start + lo - base)
                left = hi - lo
                while left > 0:
                    data = f.read(min(block, left))
                    if not data:
                        raise ShortPieceError(f"{piece.name or 'a segment'} is shorter than recorded "
                                              f"({piece.length} bytes of records)")
                    left -= len(data)
                    yield data
            base += piece.length
            if base >= end:
                return

    def read(self, offset: int, n: int) -> bytes:
        return b"".join(self.blocks(offset, offset + n))


def tail_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def check_resume_points(points: Sequence[control_pb2.ResumePoint]) -> dict[str, control_pb2.ResumePoint]:
    """The request's resume points by pod uid; raises ``ResumePointError`` for one that cannot be right."""
    if len(points) > MAX_RESUME_POINTS:
        raise ResumePointError(f"{len(points)} resume points: at most {MAX_RESUME_POINTS}")
    out: dict[str, control_pb2.ResumePoint] = {}
    for rp in points:
        if not rp.pod_uid:
            raise ResumePointError("a resume point without a pod uid")
        if rp.pod_uid in out:
            raise ResumePointError(f"two resume points for pod uid {rp.pod_uid!r}")
        if rp.check_bytes > min(rp.offset, MAX_CHECK_BYTES):
            raise ResumePointError(f"resume point of pod uid {rp.pod_uid!r}: check_bytes {rp.check_bytes} is more "
                                   f"than its offset {rp.offset} or {MAX_CHECK_BYTES}")
        if rp.check_bytes and len(rp.tail_sha256) != 32:
            raise ResumePointError(f"resume point of pod uid {rp.pod_uid!r}: tail_sha256 must be 32 bytes")
        out[rp.pod_uid] = rp
    return out


def resume_offset(pf: PodFile, rp: control_pb2.ResumePoint | None, what: str) -> tuple[int, str]:
    """Where to send ``pf`` from, and why a resume was refused ("" if accepted or none asked). ``what`` names the
    file in messages. Raises ``ResumeOffsetError`` for an offset past its end."""
    if rp is None:
        return 0, ""
    if rp.offset > pf.size:
        raise ResumeOffsetError(f"resume offset {rp.offset} is past the end of {what} ({pf.size} bytes): download "
                                "it again from the start")
    if rp.check_bytes and tail_digest(pf.read(rp.offset - rp.check_bytes, rp.check_bytes)) != rp.tail_sha256:
        return 0, (f"the {rp.check_bytes} bytes before offset {rp.offset} differ from the stored file (retention "
                   "may have deleted its oldest segments, or the kept file is another download's): sent whole")
    return rp.offset, ""


def file_messages(pod: common_pb2.Pod, pf: PodFile,
                  rp: control_pb2.ResumePoint | None) -> Iterator[control_pb2.DownloadChunk]:
    """A pod's file as Download messages: its ``FileStart``, then its bytes from where the resume point (if any)
    lets it start."""
    path = f"{pod.namespace}/{pod.name}.pcap"
    offset, refused = resume_offset(pf, rp, f"{path}'s file")
    yield control_pb2.DownloadChunk(file=control_pb2.FileStart(pod=pod, path=path, size=pf.size, offset=offset,
                                                               resume_refused=refused))
    for block in pf.blocks(offset):
        yield control_pb2.DownloadChunk(data=block)


def resume_point(uid: str, path: str, *, check: int = CHECK_BYTES) -> control_pb2.ResumePoint:
    """The resume point of a kept file (the client's side): its size and the hash of its last ``check`` bytes."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        n = min(size, check)
        f.seek(size - n)
        tail = f.read(n)
    return control_pb2.ResumePoint(pod_uid=uid, offset=size, check_bytes=len(tail), tail_sha256=tail_digest(tail))
