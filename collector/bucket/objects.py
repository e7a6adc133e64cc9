"""An S3-compatible bucket as podcap uses it: the one module that talks to the object store (through boto3).

``ObjectStore`` uploads a stream of bytes (one PUT, or a multipart upload taking parts as they fill, for large ones)
with each request's ``Content-MD5``, so the server checks every byte it stores, then verifies the stored object's
size with a HEAD; it reads objects by byte range (``ObjectReader``, a seekable file whose reads are ranged GETs),
deletes keys in batches, and aborts multipart uploads a crash left behind. Credentials come from boto3's usual chain
(environment, shared profile, web identity — so IRSA-style service-account credentials work). boto3 retries
throttling (503 SlowDown) and connection errors itself with backoff and jitter (``adaptive`` mode); what still fails
leaves here as ``ObjectStoreError`` (an ``UnavailableError``: the data stays local and the caller tries again
later), or ``ObjectStoreDeniedError`` for credentials or permissions, whose message says which.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlparse

from podcap.errors import DeniedError, InvalidInputError, NotFoundError, UnavailableError
from podcap.formats.bucket.seekable import SeekableReader

PART_BYTES = 8 << 20  # multipart part size (and the threshold for using one); S3's smallest part is 5 MiB
PARALLEL_PARTS = 6  # parts in flight at once (memory: about PARALLEL_PARTS + 2 parts for an upload of any size)
READ_BLOCK = 4 << 20  # bytes fetched per ranged GET when a reader reads sequentially
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
           "AllAccessDisabled", "AccountProblem"}


class ObjectStoreError(UnavailableError):
    """The object store did not do what was asked (down, throttling past the retries, a wrong size)."""


class ObjectNotFoundError(NotFoundError):
    """No such bucket or key."""


class ObjectStoreDeniedError(DeniedError):
    """The object store refused the credentials or the permission."""


class StorageUrlError(InvalidInputError):
    """A ``--storage`` value that is not ``s3://BUCKET[/PREFIX]``."""


class EndpointError(InvalidInputError):
    """An ``--s3-endpoint`` that is not an http(s) URL, or a region boto3 cannot use."""


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if it is an http:// or https:// URL (what boto3 needs). Raises EndpointError."""
    u = urlparse(endpoint)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise EndpointError(f"--s3-endpoint {endpoint!r} is not a URL: give http://{endpoint.split('://')[-1]} "
                            "or https://…")
    return endpoint


@dataclass(frozen=True)
class BucketUrl:
    bucket: str
    prefix: str  # "" or "a/b" (no leading or trailing slash)

    @classmethod
    def parse(cls, url: str) -> BucketUrl:
        u = urlparse(url)
        if u.scheme != "s3" or not u.netloc:
            raise StorageUrlError(f"storage {url!r} is not s3://BUCKET[/PREFIX]")
        return cls(u.netloc, u.path.strip("/"))

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def _error(e: Exception, what: str) -> Exception:
    """Our error for a boto3/botocore exception."""
    code = ""
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    if code in ("404", "NoSuchKey", "NoSuchBucket"):
        return ObjectNotFoundError(f"{what}: not found ({code})")
    if code in _DENIED or code in ("403",):
        return ObjectStoreDeniedError(f"{what}: the object store refused the credentials or the permission "
                                      f"({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the profile or the "
                                      "role, and the bucket policy")
    return ObjectStoreError(f"{what}: {code or type(e).__name__}: {e}")


class ObjectStore:
    def __init__(self, url: BucketUrl, *, endpoint: str | None = None, region: str | None = None,
                 max_attempts: int = 6) -> None:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        self.url = url
        cfg = Config(s3={"addressing_style": "path"} if endpoint else {},
                     retries={"max_attempts": max_attempts, "mode": "adaptive"},
                     connect_timeout=5, read_timeout=60, max_pool_connections=16)
        try:
            self._s3: Any = boto3.client("s3", endpoint_url=check_endpoint(endpoint) if endpoint else None,
                                         region_name=region or None, config=cfg)
        except (ValueError, BotoCoreError) as e:  # a region or endpoint boto3 cannot use
            raise EndpointError(f"cannot use the object store: {e}") from e

    def _call(self, what: str, fn: str, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._s3, fn)(**kw)
        except (ClientError, BotoCoreError) as e:
            raise _error(e, what) from e

    def check(self) -> None:
        """The bucket exists and these credentials may use it (at start-up: a one-line error, not a later
        surprise)."""
        self._call(f"bucket {self.url.bucket}", "head_bucket", Bucket=self.url.bucket)

    # ---- writing ----

    def upload_file(self, path: str, length: int, key: str) -> None:
        """Store the first ``length`` bytes of ``path`` as ``key`` (see ``upload_stream``)."""
        with open(path, "rb") as f:
            size = self.upload_stream(_read(f, length), key)
        if size != length:
            raise ObjectStoreError(f"{path} holds {size} bytes, expected {length}")

    def upload_stream(self, pieces: Iterable[bytes], key: str) -> int:
        """Store the bytes of ``pieces``, one after the other, as ``key``, and return their size. Pieces are taken
        as parts fill, so memory stays at a few parts for an object of any size. Each request's bytes are checked by
        the server (Content-MD5), the result's size with a HEAD. Overwriting ``key`` with the same bytes is harmless,
        so an upload interrupted by a crash is simply done again. What the pieces raise aborts the upload."""
        bucket = self.url.bucket
        parts = _parts(pieces)
        ahead = [next(parts)]  # no local name keeps a part alive once it is sent
        if (more := next(parts, None)) is None:
            body = ahead.pop()
            size = len(body)
            self._call(f"PUT {key}", "put_object", Bucket=bucket, Key=key, Body=body, ContentMD5=_md5(body))
        else:
            ahead.append(more)
            del more
            size = self._multipart(_unshift(ahead, parts), key)
        head = self._call(f"HEAD {key}", "head_object", Bucket=bucket, Key=key)
        if int(head["ContentLength"]) != size:
            raise ObjectStoreError(f"{key}: stored {head['ContentLength']} bytes, sent {size}")
        return size

    def _multipart(self, parts: Iterator[bytes | bytearray], key: str) -> int:
        """The parts, ``PARALLEL_PARTS`` in flight (a single stream is bound by one connection's round trips and the
        gateway's per-request work; a few at once come close to what the store takes). Returns the bytes sent."""
        bucket = self.url.bucket
        upload = self._call(f"start upload of {key}", "create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]

        def put(number: int, body: bytes | bytearray) -> dict[str, Any]:
            r = self._call(f"part {number} of {key}", "upload_part", Bucket=bucket, Key=key, UploadId=upload,
                           PartNumber=number, Body=body, ContentMD5=_md5(body))
            return {"PartNumber": number, "ETag": r["ETag"]}

        try:
            done: list[dict[str, Any]] = []
            size = 0
            with ThreadPoolExecutor(max_workers=PARALLEL_PARTS, thread_name_prefix="upload") as pool:
                inflight: list[Future[dict[str, Any]]] = []
                for number, body in enumerate(parts, 1):
                    if len(inflight) >= PARALLEL_PARTS:
                        done.append(inflight.pop(0).result())
                    inflight.append(pool.submit(put, number, body))
                    size += len(body)
                    del body  # not held while the next part is read
                done += [fut.result() for fut in inflight]
            # Some gateways answer CompleteMultipartUpload with an empty ETag: the HEAD that follows checks size.
            self._call(f"complete upload of {key}", "complete_multipart_upload", Bucket=bucket, Key=key,
                       UploadId=upload, MultipartUpload={"Parts": done})
            return size
        except BaseException:
            try:
                self._s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            except Exception:  # noqa: S110 (the original error matters; a stale upload is aborted at start-up)
                pass
            raise

    def abort_stale_uploads(self, prefix: str) -> int:
        """Abort the multipart uploads under ``prefix`` (left by a collector that died mid-upload)."""
        n = 0
        r = self._call("list uploads", "list_multipart_uploads", Bucket=self.url.bucket, Prefix=prefix)
        for u in r.get("Uploads", []):
            self._call(f"abort upload of {u['Key']}", "abort_multipart_upload", Bucket=self.url.bucket,
                       Key=u["Key"], UploadId=u["UploadId"])
            n += 1
        return n

    def put_bytes(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> None:
        self._call(f"PUT {key}", "put_object", Bucket=self.url.bucket, Key=key, Body=body, ContentMD5=_md5(body),
                   ContentType=content_type)

    def delete(self, keys: Iterable[str]) -> None:
        """Delete keys, up to 1000 per request (deleting a missing key is not an error)."""
        batch = [{"Key": k} for k in keys]
        for i in range(0, len(batch), 1000):
            r = self._call("delete objects", "delete_objects", Bucket=self.url.bucket,
                           Delete={"Objects": batch[i:i + 1000], "Quiet": True})
            if r.get("Errors"):
                e = r["Errors"][0]
                raise ObjectStoreError(f"delete {e.get('Key')}: {e.get('Code')} {e.get('Message')}")

    # ---- reading ----

    def size(self, key: str) -> int:
        return int(self._call(f"HEAD {key}", "head_object", Bucket=self.url.bucket, Key=key)["ContentLength"])

    def get(self, key: str) -> bytes:
        """The whole object (small ones: manifests and their pages)."""
        r = self._call(f"GET {key}", "get_object", Bucket=self.url.bucket, Key=key)
        body: bytes = r["Body"].read()
        return body

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        r = self._call(f"GET {key}", "get_object", Bucket=self.url.bucket, Key=key,
                       Range=f"bytes={start}-{start + length - 1}")
        body: bytes = r["Body"].read()
        return body

    def get_tail(self, key: str, length: int) -> tuple[bytes, int]:
        """The last ``length`` bytes of ``key`` (all of it if shorter) and the object's size."""
        r = self._call(f"GET {key}", "get_object", Bucket=self.url.bucket, Key=key, Range=f"bytes=-{length}")
        body: bytes = r["Body"].read()
        total = str(r.get("ContentRange", "")).rpartition("/")[2]
        return body, int(total) if total.isdigit() else len(body)

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            r = self._call("list objects", "list_objects_v2", Bucket=self.url.bucket, Prefix=prefix, **token)
            keys += [o["Key"] for o in r.get("Contents", [])]
            if not r.get("IsTruncated"):
                return keys
            token = {"ContinuationToken": r["NextContinuationToken"]}

    def open(self, key: str, length: int) -> ObjectReader:
        return ObjectReader(self, key, length)


class ObjectReader(SeekableReader):
    """A stored object as a seekable, read-only file of ``length`` bytes; reads are ranged GETs of at least
    ``READ_BLOCK`` bytes (what a sequential reader asks next is usually already here)."""

    def __init__(self, store: ObjectStore, key: str, length: int) -> None:
        super().__init__(length)
        self.store, self.key = store, key
        self._buf_start = 0
        self._buf = b""

    def read(self, size: int | None = -1) -> bytes:
        size = self._wanted(size)
        if size <= 0:
            return b""
        end = self._pos + size
        if not (self._buf_start <= self._pos and end <= self._buf_start + len(self._buf)):
            fetch = min(self.length - self._pos, max(size, READ_BLOCK))
            self._buf = self.store.get_range(self.key, self._pos, fetch)
            self._buf_start = self._pos
        out = self._buf[self._pos - self._buf_start:end - self._buf_start]
        self._pos += len(out)
        return out


def _read(f: BinaryIO, length: int) -> Iterator[bytes]:
    """The first ``length`` bytes of ``f`` (fewer if it is shorter), a part at a time."""
    while length > 0 and (piece := f.read(min(PART_BYTES, length))):
        length -= len(piece)
        yield piece


def _unshift(ahead: list[bytes | bytearray], rest: Iterator[bytes | bytearray]) -> Iterator[bytes | bytearray]:
    while ahead:
        yield ahead.pop(0)
    yield from rest


def _parts(pieces: Iterable[bytes]) -> Iterator[bytes | bytearray]:
    """The bytes of ``pieces`` as parts of ``PART_BYTES`` (the last one shorter; one empty part for nothing). A
    piece that is a whole part goes as it is; others are gathered, each byte copied once."""
    buf = bytearray()
    sent = False
    for piece in pieces:
        if not buf and len(piece) == PART_BYTES:
            yield piece
            sent = True
            continue
        buf += piece
        while len(buf) >= PART_BYTES:
            part, buf = buf, bytearray(buf[PART_BYTES:])  # copies the rest only (less than a piece)
            del part[PART_BYTES:]
            yield part
            sent = True
            del part
    if buf or not sent:
        yield buf


def _md5(body: bytes | bytearray) -> str:
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
