"""Benchmark phase p7: podcap's segment upload against a plain multipart PUT of the same bytes, same gateway.

A real S3 server (the tests' Ceph RADOS Gateway, ``tests.s3.testbed``, started for the phase and removed after) and
one segment file of realistic records (the benchmark's 128-byte UDP frames as pcap records). Alternating rounds
upload the file with boto3's own ``upload_file`` (s3transfer: multipart, parallel parts — what a user's script
would do) and with podcap's archiver path (``ObjectStore.upload_file``: Content-MD5 on every part, the size checked
with a HEAD afterwards; the bytes as they are, so both move the same amount). ``p7_upload_ratio`` = podcap's
throughput ÷ the plain PUT's (median of the rounds); the target is >= 0.8. Both read the file from the page cache,
so the figure is the upload's own cost. ``p7_compression_{udp,http}``: what the archiver's block compression keeps
of the benchmark's UDP frames (random payload: the worst case) and of HTTP like the demo's, with the compressing
CPU's throughput (``p7_compress_mb_s_*``).
"""

from __future__ import annotations

import os
import statistics
import struct
import tempfile
import time
import uuid
from typing import Any

from podcap.collector.bucket.blocks import encode
from podcap.collector.bucket.objects import BucketUrl, ObjectStore
from podcap.pcapfile import FileFormat
from tests.bench.lab import log
from tests.s3.testbed import Testbed, missing_packages


def _segment(path: str, nbytes: int) -> int:
    """A pcap segment of ~``nbytes`` of 128-byte UDP frames with advancing timestamps; returns its size."""
    frame = bytes(14) + b"\x45" + bytes(113)
    with open(path, "wb") as f:
        f.write(FileFormat(1, 262144, True).header())
        block = bytearray()
        n = 0
        written = 24
        while written < nbytes:
            ts = 1_700_000_000_000_000_000 + n * 1000
            block += struct.pack("<IIII", ts // 10**9, ts % 10**9, len(frame), len(frame)) + frame
            n += 1
            if len(block) >= 1 << 20:
                f.write(block)
                written += len(block)
                block.clear()
        f.write(block)
        written += len(block)
    return written


def _http_frames(n: int) -> list[bytes]:
    """Frames like the demo's traffic: HTTP requests and responses (headers and a small HTML page) over TCP."""
    out = []
    for i in range(n):
        if i % 2 == 0:
            payload = (f"GET /item/{i % 977} HTTP/1.1\r\nHost: web-{i % 3}.shop.svc\r\nUser-Agent: curl/7.88.1\r\n"
                       "Accept: */*\r\n\r\n").encode()
        else:
            body = f"<html><body><h1>item {i % 977}</h1><p>{'in stock ' * (i % 7)}</p></body></html>"
            payload = (f"HTTP/1.1 200 OK\r\nServer: BaseHTTP/0.6 Python/3.11\r\n"
                       f"Date: Sun, 29 Nov 2026 10:{i % 60:02d}:00 GMT\r\nContent-Type: text/html\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
        ip_tcp = bytes([0x45, 0]) + (40 + len(payload)).to_bytes(2, "big") + i.to_bytes(4, "big") + bytes(32)
        out.append(bytes(12) + b"\x08\x00" + ip_tcp + payload)
    return out


def _records(frames: list[bytes]) -> bytes:
    fmt = FileFormat(1, 262144, True)
    out = [fmt.header()]
    for i, frame in enumerate(frames):
        ts = 1_700_000_000_000_000_000 + i * 37_000
        out.append(struct.pack("<IIII", ts // 10**9, ts % 10**9, len(frame), len(frame)) + frame)
    return b"".join(out)


def compression(n: int = 100_000) -> dict[str, float]:
    """Stored bytes / raw bytes per traffic kind, and the compressing CPU's throughput."""
    kinds = {
        "udp": _records([bytes(14) + b"\x45" + bytes(13) + os.urandom(100) for _ in range(n)]),  # bench's size
        "http": _records(_http_frames(n)),
    }
    out: dict[str, float] = {}
    for kind, raw in kinds.items():
        t0 = time.process_time()
        obj, _blocks = encode(raw)
        cpu = time.process_time() - t0
        out[f"p7_compression_{kind}"] = len(obj) / len(raw)
        out[f"p7_compress_mb_s_{kind}"] = len(raw) / 1e6 / cpu if cpu else 0.0
        log(f"p7 compression {kind}: {len(raw) / 1e6:.1f} MB -> {len(obj) / 1e6:.1f} MB "
            f"({len(obj) / len(raw):.2f}), {out[f'p7_compress_mb_s_{kind}']:.0f} MB/s of one CPU")
    return out


def phase_p7(*, megabytes: int, rounds: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if missing := missing_packages():
        raise RuntimeError(f"p7 needs {' '.join(missing)} (make deps installs them)")
    testbed = Testbed(f"/tmp/pcb7-{uuid.uuid4().hex[:6]}")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pcb7-") as tmp:
        path = os.path.join(tmp, "000001.pcap")
        size = _segment(path, megabytes << 20)
        try:
            testbed.start()
            env = testbed.env()
            os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
            store = ObjectStore(BucketUrl(testbed.bucket, "p7"), endpoint=testbed.endpoint)
            plain = testbed.client(retries={"max_attempts": 3})
            log(f"p7: {size / 1e6:.0f} MB segment, gateway {testbed.endpoint}")
            for r in range(rounds):
                t0 = time.perf_counter()
                plain.upload_file(path, testbed.bucket, f"plain/{r}")
                t_plain = time.perf_counter() - t0
                t0 = time.perf_counter()
                store.upload_file(path, size, f"p7/podcap/{r}")
                t_podcap = time.perf_counter() - t0
                run = {"round": r + 1, "plain_mb_s": size / 1e6 / t_plain, "podcap_mb_s": size / 1e6 / t_podcap}
                runs.append(run)
                log(f"p7 round {r + 1}: plain {run['plain_mb_s']:.0f} MB/s, podcap {run['podcap_mb_s']:.0f} MB/s")
        finally:
            testbed.stop()
    ratio = statistics.median(x["podcap_mb_s"] / x["plain_mb_s"] for x in runs)
    out = {"p7_upload_ratio": ratio, "p7_upload_mb_s": statistics.median(x["podcap_mb_s"] for x in runs)}
    out.update(compression())
    return out, runs
