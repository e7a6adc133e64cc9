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

``p7_window_s``: a 60 s window of one pod out of >= 2 GB (``--p7-window-gb``) in the bucket, read by ``podcap get --from
s3://...`` (the CLI, end to end, process start included; median of 3). The pod's segments are made here — 64 MiB each of
the benchmark's 128-byte UDP frames with random payloads (the compression's worst case), timestamps evenly spread over
two hours — and go to the bucket through the archiver's own path (``TieredStorage.archive``: read, compressed in blocks
and uploaded a part at a time; ``p7_archive_mb_s`` is its raw throughput), described by pages and a manifest as the
collector writes them (``TieredStorage.describe``). The window's result is parsed and must be exactly the records
generated in it; ``p7_window_fetched_mb`` (blocks fetched) is reported against ``p7_window_raw_mb`` (the window's
records, uncompressed). """

from __future__ import annotations

import os
import statistics
import struct
import tempfile
import time
import uuid
from typing import Any

from podcap.collector.bucket.objects import BucketUrl, ObjectStore
from podcap.collector.storage.base import CaptureDescription, DescribedPod, PodKey, SegmentInfo
from podcap.collector.storage.tiered import TieredStorage
from podcap.formats.bucket.blocks import encode
from podcap.formats.pcap import FileFormat, read_file
from podcap.v1 import common_pb2, control_pb2
from tests.bench.lab import log
from tests.s3.testbed import Testbed, missing_packages


class _Listed:
    """Archived segments as the catalog would list them (``storage.base.ArchivedIndex``)."""

    def __init__(self, segments: list[SegmentInfo]) -> None:
        self.segments = segments

    def archived(self, first: int, end: int) -> list[SegmentInfo]:
        return [s for s in self.segments if first <= s.index < end]

    def archived_groups(self, width: int) -> set[int]:
        return {s.index // width for s in self.segments}


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


WINDOW_SPAN_S = 7200  # the generated capture's length
RECORD = 16 + 128  # the benchmark's 128-byte frames as pcap records
T0_NS = 1_700_000_000_000_000_000


def _timed_segment(path: str, first: int, n: int, step_ns: int) -> None:
    """Records ``first .. first + n - 1`` (the benchmark's frames: zeros, the IP version, then the record's number
    and 96 random bytes), record
    ``i`` at ``T0_NS + i * step_ns``; timestamps are written a column at a time (no Python per record)."""
    import array

    payload = bytearray(os.urandom(n * RECORD))
    with memoryview(payload).cast("I") as words:  # a record is 36 words: ts_sec, ts_nsec, caplen, len, frame
        ts = [T0_NS + i * step_ns for i in range(first, first + n)]
        words[0::36] = array.array("I", [t // 10**9 for t in ts])
        words[1::36] = array.array("I", [t % 10**9 for t in ts])
        words[2::36] = words[3::36] = array.array("I", [128]) * n
        zeros = array.array("I", [0]) * n
        for w in range(4, 11):  # frame bytes 0..27 as the benchmark's: zeros but for the IP version at 14
            words[w::36] = zeros
        words[7::36] = array.array("I", [0x45 << 16]) * n
        seq = array.array("I", range(first, first + n))
        seq.byteswap()  # big-endian, in frame bytes 28..31; the other 96 bytes stay random
        words[11::36] = seq
    with open(path, "wb") as f:
        f.write(FileFormat(1, 262144, True).header())
        f.write(payload)


def window_read(testbed: Testbed, tmp: str, *, gigabytes: float) -> dict[str, float]:
    """See the module's docstring (``p7_window_s``)."""
    import subprocess
    import sys

    per_segment = (64 << 20) // RECORD
    total = int(gigabytes * 1e9 / 0.72 / RECORD) // per_segment * per_segment + per_segment  # raw; ~0.72 kept
    step_ns = WINDOW_SPAN_S * 10**9 // total
    store = ObjectStore(BucketUrl(testbed.bucket, "p7w"), endpoint=testbed.endpoint)
    capture = f"c{uuid.uuid4().hex[:8]}"
    tiered = TieredStorage(tmp, store)
    key = PodKey(capture, "shop", "web-0", "u-web-0")
    segments: list[SegmentInfo] = []
    stored, t_archive = 0, 0.0
    for k, first in enumerate(range(0, total, per_segment)):
        path = os.path.join(tmp, f"{k + 1:06d}.pcap")  # the object's key is named after it
        _timed_segment(path, first, per_segment, step_ns)
        size = os.path.getsize(path)
        t0 = time.perf_counter()
        seg = SegmentInfo(k + 1, path, size, per_segment, T0_NS + first * step_ns,
                          T0_NS + (first + per_segment - 1) * step_ns)
        seg.archived = tiered.archive(key, seg)
        t_archive += time.perf_counter() - t0
        stored += store.size(seg.archived)
        segments.append(seg)
        os.unlink(path)
    pod = common_pb2.Pod(namespace="shop", name="web-0", uid="u-web-0")
    status = control_pb2.CaptureStatus(id=capture, state=control_pb2.CAPTURE_STATE_DONE, packets=total,
                                       pods=[control_pb2.PodStatus(pod=pod, packets=total)])
    fmt = common_pb2.PcapFormat(linktype=1, snaplen=262144, nanosecond=True)
    tiered.describe(CaptureDescription(capture, lambda: status, [DescribedPod(key, fmt, 0, _Listed(segments))],
                                       complete=True))
    raw_bytes = total * RECORD
    log(f"p7 window: {stored / 1e9:.2f} GB in the bucket ({raw_bytes / 1e9:.2f} GB raw, {len(segments)} segments), "
        f"archived at {raw_bytes / 1e6 / t_archive:.0f} MB/s")
    mid = total // 2
    since_ns = T0_NS + mid * step_ns
    until_ns = since_ns + 60 * 10**9
    inside = range(mid, min(total, (until_ns - T0_NS) // step_ns + 1))
    env = {**os.environ, **testbed.env()}
    podcap = os.path.join(os.path.dirname(sys.executable), "podcap")
    times = []
    for r in range(3):
        out = os.path.join(tmp, f"window-{r}")
        t0 = time.perf_counter()
        r = subprocess.run([podcap, "get", "--from", f"s3://{testbed.bucket}/p7w/{capture}", "-o", out,
                            "--s3-endpoint", testbed.endpoint, "--since", _rfc3339(since_ns), "--until",
                            _rfc3339(until_ns)], env=env, capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - t0)
        if r.returncode:
            raise RuntimeError(f"p7 window: podcap get --from failed: {r.stderr.strip()}")
        _fmt, recs = read_file(os.path.join(out, "shop", "web-0.pcap"))
        got = [int.from_bytes(rec.data[28:32], "big") for rec in recs]
        if got != list(inside):
            raise RuntimeError(f"p7 window: {len(got)} records, expected {len(inside)} ({got[:3]}...)")
    from podcap.collector.cli.get.bucket import BucketClient

    bucket = BucketClient(f"s3://{testbed.bucket}/p7w/{capture}", endpoint=testbed.endpoint)
    t0 = time.perf_counter()
    for _chunk in bucket.download(capture, [], since_ns=since_ns, until_ns=until_ns):
        pass
    read_s = time.perf_counter() - t0
    out = {"p7_window_s": statistics.median(times), "p7_window_read_s": read_s, "p7_window_gb": stored / 1e9,
           "p7_window_fetched_mb": bucket.fetched / 1e6, "p7_window_raw_mb": len(inside) * RECORD / 1e6,
           "p7_archive_mb_s": raw_bytes / 1e6 / t_archive}
    log(f"p7 window: 60 s of {len(inside)} records ({out['p7_window_raw_mb']:.1f} MB raw) in "
        f"{out['p7_window_s']:.2f} s by the CLI ({read_s:.2f} s the read alone), "
        f"{out['p7_window_fetched_mb']:.1f} MB fetched")
    store.delete(store.list_keys(store.url.key(capture) + "/"))
    return out


def _rfc3339(ns: int) -> str:
    import datetime

    t = datetime.datetime.fromtimestamp(ns // 10**9, datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 10**9 // 1000:06d}Z"


def phase_p7(*, megabytes: int, rounds: int, window_gb: float = 2.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
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
            os.unlink(path)
            window = window_read(testbed, tmp, gigabytes=window_gb)
        finally:
            testbed.stop()
    ratio = statistics.median(x["podcap_mb_s"] / x["plain_mb_s"] for x in runs)
    out = {"p7_upload_ratio": ratio, "p7_upload_mb_s": statistics.median(x["podcap_mb_s"] for x in runs)}
    out.update(window)
    out.update(compression())
    return out, runs
