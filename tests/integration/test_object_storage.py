"""Tiered storage against a real S3 server (Ceph RGW, ``tests.s3``): closed segments move to the bucket, verified,
recorded, then released locally; reads come back complete from the bucket (also after a collector restart); the
gateway killed mid-capture loses nothing (segments wait locally and go once it is back); retention deletes the
objects. Checked by parsing what is read back, record by record, and by listing the bucket."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from podcap.collector.bucket.objects import ObjectStore
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.demo.node import DemoNode
from podcap.collector.storage.base import SegmentInfo
from podcap.collector.storage.local import list_segments
from podcap.formats.bucket.blocks import open_segment
from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat, iter_records, read_file
from podcap.v1 import common_pb2, ingest_pb2
from tests.conftest import Proc, collector_process, podcap, tool
from tests.integration.cluster import Cluster, all_capturing, check_exactly_once, send
from tests.integration.helpers import PORT, SENDER, capture_id, udp_payloads, wait_state
from tests.integration.tiered_env import POD, SEGMENT, Env, records
from tests.pcapng_reader import read_pcapng
from tests.s3.testbed import Testbed

pytestmark = pytest.mark.root

def test_closed_segments_move_to_the_bucket_and_read_back_complete(env: Env) -> None:
    cid = env.start()
    env.send(cid, 1, 20)  # 2000 records of 216 bytes: ~432 KB, several 64 KiB segments
    local_before = env.local(cid)
    assert len(local_before) >= 5
    archived = env.mgr.archiver.run_once()
    assert archived == len(local_before) - 1  # every closed one; the open segment stays local
    keys = env.keys(cid)
    assert len(keys) == archived and all(k.startswith(f"{env.prefix}/{cid}/shop/web-0/") for k in keys)
    assert env.local(cid) == local_before[-1:]  # released locally once recorded
    assert env.read_back(cid) == list(range(2000))  # the bucket's segments, then the local one
    env.mgr.stop(cid, wait=0)
    env.mgr.on_pod_event(env.conn, ingest_pb2.PodCaptureEvent(
        capture_id=cid, pod_uid=POD.uid, stream_id="s1", state=common_pb2.POD_CAPTURE_STATE_DONE))
    assert env.mgr.get(cid).ended.wait(5)
    env.mgr.archiver.run_once()  # the capture ended: its last segment is closed and goes too
    assert env.local(cid) == [] and len(env.keys(cid)) == len(local_before)
    # A restarted collector reads the whole capture from the bucket.
    env.mgr.close()
    env.mgr = env.open()
    assert env.read_back(cid) == list(range(2000))


def test_large_segments_go_as_multipart_uploads(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments above the part size are uploaded in parts (each part's MD5 checked by the server), and read back
    byte for byte; no upload is left open."""
    from podcap.collector.bucket import objects

    monkeypatch.setattr(objects, "PART_BYTES", 5 << 20)  # S3's smallest part: 12 MiB segments go in three
    cid = env.start(segment=12 << 20)
    env.send(cid, 1, 30, per_chunk=1000, size=1400, noise=True)  # 42 MB that do not compress
    assert env.mgr.archiver.run_once() >= 2
    archived = [(s.archived, s.bytes) for s in env.segments(cid) if s.archived]
    assert archived and all(env.objects.size(key) > 2 * objects.PART_BYTES for key, _size in archived)
    assert env.read_back(cid) == list(range(30000))
    uploads = env.s3.client().list_multipart_uploads(Bucket=env.s3.bucket, Prefix=env.prefix)
    assert not uploads.get("Uploads")


def test_archiving_a_large_segment_holds_a_few_parts_not_the_segment(
        env: Env, tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment is read, compressed and uploaded a part at a time: archiving 64 MiB that do not compress peaks
    at a few parts of memory, not the segment (nor the segment and its object), and the object reads back as the
    segment, byte for byte."""
    import tracemalloc

    from podcap.collector.bucket import objects
    from podcap.collector.storage.base import PodKey
    from podcap.collector.storage.tiered import TieredStorage

    monkeypatch.setattr(objects, "PART_BYTES", 5 << 20)
    monkeypatch.setattr(objects, "PARALLEL_PARTS", 2)
    path = os.path.join(str(tmp_path), "000001.pcap")
    with open(path, "wb") as f:
        f.write(FileFormat(1, 262144, True).header())
        for k in range(64):
            f.write(records(k * 1000, 1000, 1048, noise=True))  # 1 MiB of records that do not compress
    size = os.path.getsize(path)
    tiered = TieredStorage(str(tmp_path), env.objects)
    tracemalloc.start()
    try:
        key = tiered.archive(PodKey("big", "shop", "web-0", "uid-0"), SegmentInfo(1, path, size))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * objects.PART_BYTES < size / 1.5, f"archiving peaked at {peak / 2**20:.0f} MiB"
    reader, length = open_segment(env.objects, key, size)
    with open(path, "rb") as f:
        assert length == size and all(reader.read(1 << 20) == f.read(1 << 20) for _ in range(size // (1 << 20) + 1))


def test_a_collector_that_died_mid_upload_neither_loses_nor_duplicates(env: Env) -> None:
    """The crash windows of an upload: a segment uploaded but never recorded (the collector died before its commit)
    is uploaded again to the same key, not as a second object; a multipart upload the dead collector left open is
    aborted when the next one starts."""
    from podcap.collector.captures.pods import pod_key
    from podcap.collector.server import open_storage

    cid = env.start()
    env.send(cid, 1, 10)
    cap = env.mgr.get(cid)
    (ps,) = cap.pods.values()
    first = env.segments(cid)[0]
    tier = env.mgr.storage.second_tier
    assert tier is not None
    key = tier.archive(pod_key(cap, ps), first)  # uploaded; the record never happens
    client = env.s3.client()
    stale = client.create_multipart_upload(Bucket=env.s3.bucket, Key=f"{env.prefix}/{cid}/shop/web-0/000002.pcap")
    client.upload_part(Bucket=env.s3.bucket, Key=f"{env.prefix}/{cid}/shop/web-0/000002.pcap", PartNumber=1,
                       UploadId=stale["UploadId"], Body=b"x" * 1024)
    env.mgr.close()  # what a crash leaves in the database too: the segment is not archived (its writer closes)
    storage = open_storage(env.data, f"s3://{env.s3.bucket}/{env.prefix}", s3_endpoint=env.s3.endpoint)
    assert not client.list_multipart_uploads(Bucket=env.s3.bucket, Prefix=env.prefix).get("Uploads")
    env.mgr = CaptureManager(storage, env.registry, env.store, archive_interval_s=0)
    assert env.mgr.archiver.run_once() >= 3
    keys = env.keys(cid)
    assert key in keys and len(keys) == len(set(keys)) == len(env.segments(cid))  # one each
    assert env.read_back(cid) == list(range(1000))


def test_segments_are_compressed_and_a_window_fetches_only_its_blocks(env: Env) -> None:
    """A closed segment goes to the bucket compressed in blocks; a time window read through the collector fetches
    the blocks that overlap it, not the segment, and returns exactly the window's records."""
    cid = env.start(segment=12 << 20)
    env.send(cid, 1, 60, per_chunk=1000)  # 60,000 records of 216 bytes: one closed 12 MiB segment and the rest
    assert env.mgr.archiver.run_once() == 1
    cap = env.mgr.get(cid)
    (seg,) = [s for s in env.segments(cid) if s.archived]
    stored = env.objects.size(seg.archived)
    assert stored < seg.bytes / 3  # these records compress well (real headers do too)
    since = (10 + 30) * 10**9  # records 30000..30999 (ts = 10 s + i // 1000 s + i % 1000 ns)
    until = since + 999
    got: list[int] = []
    fetched = 0
    for _ps, fmt, files in env.mgr.pod_files(cap, [], since_ns=since, until_ns=until):
        for f, length in files:
            with f:
                f.seek(FILE_HEADER_LEN)
                data = f.read(length - FILE_HEADER_LEN)
                fetched += getattr(f, "fetched", 0)
            got += [int.from_bytes(r.data[:4], "big") for r in iter_records(data, fmt) if since <= r.ts_ns <= until]
    assert got == list(range(30000, 31000))
    assert 0 < fetched < stored / 4  # a block or two of the segment's dozen


def test_the_gateway_down_loses_nothing_and_archiving_resumes(env: Env) -> None:
    cid = env.start()
    env.s3.kill_gateway()
    try:
        env.send(cid, 1, 10)  # chunks are stored and acknowledged locally all the same
        assert env.mgr.archiver.run_once() == 0
        st = env.mgr.status(env.mgr.get(cid))
        assert st.archive_backlog_bytes > 0 and st.archive_oldest_seconds > 0 and st.archive_error
        assert len(env.local(cid)) >= 3
    finally:
        env.s3.restart_gateway()
    assert env.mgr.archiver.run_once() >= 2
    st = env.mgr.status(env.mgr.get(cid))
    assert (st.archive_backlog_bytes, st.archive_error) == (0, "")
    assert env.read_back(cid) == list(range(1000))


def test_a_frozen_gateway_holds_up_uploads_but_not_storing(env: Env) -> None:
    """The gateway stopped (SIGSTOP: slow, not down): an upload hangs, yet chunks keep being stored, committed and
    acknowledged locally meanwhile; once the gateway runs again the upload completes and nothing is missing."""
    cid = env.start()
    env.send(cid, 1, 5)
    env.s3.freeze_gateway()
    try:
        uploading = threading.Thread(target=env.mgr.archiver.run_once)
        uploading.start()
        time.sleep(0.5)
        assert uploading.is_alive()  # stuck in a request to the frozen gateway
        started = time.monotonic()
        env.send(cid, 6, 10)
        assert time.monotonic() - started < 5
        assert env.mgr.status(env.mgr.get(cid)).packets == 1500
    finally:
        env.s3.thaw_gateway()
    uploading.join(timeout=60)
    assert not uploading.is_alive()
    env.mgr.archiver.run_once()
    assert env.read_back(cid) == list(range(1500))


def test_a_full_local_tier_pauses_storing_until_the_bucket_catches_up(
        s3: Testbed, s3_prefix: str, tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the gateway down, closed segments pile up locally; at the cap storing pauses (the chunk is not taken,
    so the agent would keep it) and resumes once the gateway is back and uploads catch up: nothing is lost."""
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    env = Env(s3, s3_prefix, str(tmp_path), local_cap_bytes=3 * SEGMENT)
    try:
        cid = env.start()
        s3.kill_gateway()
        sender = threading.Thread(target=env.send, args=(cid, 1, 30))
        try:
            sender.start()
            deadline = time.monotonic() + 20
            while "local tier full" not in env.mgr.paused:
                assert time.monotonic() < deadline and sender.is_alive(), env.mgr.paused
                time.sleep(0.1)
            stuck = env.mgr.status(env.mgr.get(cid)).packets
            time.sleep(1.5)
            assert sender.is_alive() and env.mgr.status(env.mgr.get(cid)).packets == stuck < 3000
        finally:
            s3.restart_gateway()
        sender.join(timeout=30)
        assert not sender.is_alive() and env.mgr.paused == ""
        assert env.read_back(cid) == list(range(3000))
    finally:
        env.close()


def test_retention_deletes_the_objects(env: Env) -> None:
    cid = env.start(keep_bytes=4 * SEGMENT)
    env.send(cid, 1, 30)
    env.mgr.archiver.run_once()
    env.send(cid, 31, 30)
    env.mgr.archiver.run_once()
    kept = [s.archived for s in env.segments(cid) if s.archived]
    assert kept and env.keys(cid) == sorted(kept)  # nothing retention dropped is left in the bucket
    got = env.read_back(cid)
    assert got == list(range(got[0], 6000)) and got[0] > 0  # the newest, contiguous


def test_the_manifest_pages_follow_what_the_bucket_holds(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pod's pages list its archived segments with their block indexes, so a window read from the bucket costs
    the manifest, the one page it overlaps and the window's blocks — no object's tail; retention's deletions are
    followed (a page rewritten, an emptied page deleted); a restarted collector leaves right pages alone."""
    from podcap.collector.cli.get.bucket import BucketClient
    from podcap.formats.bucket import manifest as manifest_module

    monkeypatch.setattr(manifest_module, "PAGE_SEGMENTS", 4)
    cid = env.start(keep_bytes=12 * SEGMENT)
    env.send(cid, 1, 40)  # 4,000 records: ~13 segments of 64 KiB
    env.mgr.archiver.run_once()

    def described() -> tuple[manifest_module.Manifest, list[manifest_module.ArchivedSegment], list[str]]:
        bucket = BucketClient(f"s3://{env.s3.bucket}/{env.prefix}/{cid}", endpoint=env.s3.endpoint)
        m = bucket.manifest()
        segs = bucket._segments(str(POD.uid), 0, 0)
        pages = sorted(k for k in env.objects.list_keys(env.objects.url.key(cid) + "/") if "/segments-" in k)
        return m, segs, pages

    m, segs, pages = described()
    assert [s.key for s in segs] == env.keys(cid) and len(segs) >= 10
    assert all(s.blocks and len(s.header) == FILE_HEADER_LEN for s in segs)
    assert [r.key for r in m.pages[str(POD.uid)]] == pages and len(pages) >= 3
    # A window: the manifest, one page, the blocks; no tail of any object.
    requests: list[str] = []
    for name in ("get", "get_range", "get_tail"):
        orig = getattr(ObjectStore, name)
        monkeypatch.setattr(ObjectStore, name, lambda self, *a, _n=name, _o=orig: requests.append(_n) or _o(self, *a))
    bucket = BucketClient(f"s3://{env.s3.bucket}/{env.prefix}/{cid}", endpoint=env.s3.endpoint)
    since = 12 * 10**9 + 300  # records 2300..2500 (ts = 10 s + i // 1000 s + i % 1000 ns): one page's
    chunks = list(bucket.download(cid, [], since_ns=since, until_ns=since + 200))
    got = [int.from_bytes(r.data[:4], "big")
           for r in iter_records(b"".join(c.data for c in chunks)[FILE_HEADER_LEN:], env.mgr.get(cid).pods[POD.uid]
                                 .writer.fmt)]
    assert got == list(range(2300, 2501))
    assert requests.count("get") == 2 and "get_tail" not in requests and 1 <= requests.count("get_range") <= 2
    monkeypatch.undo()
    monkeypatch.setattr(manifest_module, "PAGE_SEGMENTS", 4)
    # Retention drops the oldest segments: their page is rewritten or deleted.
    env.send(cid, 41, 40)
    env.mgr.archiver.run_once()
    m, segs, later = described()
    assert [s.key for s in segs] == env.keys(cid) and segs[0].index > 4 and pages[0] not in later
    assert [r.key for r in m.pages[str(POD.uid)]] == later
    # A restart finds the pages right and writes none of them again, but the one the last segment (closed by the
    # shutdown, archived after the restart) joins.
    puts: list[str] = []
    orig_put = ObjectStore.put_bytes
    monkeypatch.setattr(ObjectStore, "put_bytes", lambda self, key, *a: puts.append(key) or orig_put(self, key, *a))
    env.mgr.close()
    env.mgr = env.open()
    env.mgr.archiver.run_once()
    after = described()[1]
    assert after[:len(segs)] == segs and len(after) == len(segs) + 1
    page_puts = [int(k.rsplit("segments-", 1)[1][:6]) for k in puts if "/segments-" in k]
    assert page_puts == [manifest_module.page_number(after[-1].index)]


@pytest.fixture
def collector(s3: Testbed, s3_prefix: str, tmp_path: str) -> Iterator[tuple[str, str, Proc]]:
    """A podcap-collector process keeping captures in the testbed's bucket under ``s3_prefix`` (metrics on a port
    of its choosing: ``metrics_port``)."""
    yield from collector_process(str(tmp_path), "--storage", f"s3://{s3.bucket}/{s3_prefix}", "--s3-endpoint",
                                 s3.endpoint, "--metrics-listen", "127.0.0.1:0", env=s3.env())


def metrics_port(proc: Proc) -> int:
    deadline = time.monotonic() + 10
    while not (m := re.search(r"metrics on port (\d+)", proc.log())):
        assert time.monotonic() < deadline, proc.log()
        time.sleep(0.1)
    return int(m.group(1))


def archive_metrics(port: int, cid: str) -> dict[str, float]:
    """The collector's archive gauges of capture ``cid``, as scraped."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for name in ("podcap_archive_backlog_bytes", "podcap_archive_oldest_seconds"):
        m = re.search(rf'^{name}{{capture="{cid}"}} (\S+)$', text, re.MULTILINE)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def test_a_capture_through_rotation_into_the_bucket_reads_back_complete(
        collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, s3: Testbed, s3_prefix: str,
        tmp_path: str) -> None:
    """Real collector and agent, pods of network namespaces, sequence-numbered UDP: the closed segments go to the
    bucket while the capture runs, the rest once it ends; ``podcap get`` returns every datagram once, in order,
    and the data dir keeps none of it."""
    address, data, _ = collector
    cid = capture_id(podcap(address, "start", "-n", node.namespace, "rx-0", "--filter", f"udp port {PORT}",
                            "--segment-size", "64KiB"))
    sender, rx = node.pod("sender"), node.pod("rx-0")
    node.exec(sender, ["ping", "-c", "1", "-W", "2", rx.ip])
    node.exec(sender, [sys.executable, SENDER, str(PORT), "3000", rx.ip])
    objects = s3.client()
    prefix = f"{s3_prefix}/{cid}/{node.namespace}/rx-0/"

    def keys() -> list[str]:
        return [o["Key"] for o in objects.list_objects_v2(Bucket=s3.bucket, Prefix=prefix).get("Contents", [])]

    deadline = time.monotonic() + 20
    while len([k for k in keys() if k.endswith(".zst")]) < 3:  # archived while the capture runs
        assert time.monotonic() < deadline, f"nothing archived: {keys()}"
        time.sleep(0.2)
    podcap(address, "stop", cid)
    assert wait_state(address, cid, {"done"})["state"] == "done"
    pod_dir = os.path.join(data, "captures", cid, node.namespace, "rx-0")
    deadline = time.monotonic() + 20
    while any(n.endswith(".pcap") for n in os.listdir(pod_dir)):
        assert time.monotonic() < deadline, f"left locally: {os.listdir(pod_dir)}"
        time.sleep(0.2)
    out = os.path.join(str(tmp_path), "out")
    podcap(address, "get", cid, "-o", out)
    got = udp_payloads(os.path.join(out, node.namespace, "rx-0.pcap"))
    assert [g[1] for g in got] == list(range(3000))
    segments = [k for k in keys() if k.endswith(".pcap.zst")]
    assert len(segments) >= 5
    # Each object is the segment for any zstd: decompressed and joined, they are the pod's file.
    joined = b""
    for i, key in enumerate(sorted(segments)):
        raw = subprocess.run(["zstd", "-dc"], input=objects.get_object(Bucket=s3.bucket, Key=key)["Body"].read(),
                             capture_output=True, check=True).stdout
        joined += raw if i == 0 else raw[FILE_HEADER_LEN:]
    with open(os.path.join(out, node.namespace, "rx-0.pcap"), "rb") as f:
        assert joined == f.read()
    # Everything is in the bucket now: with the gateway down, a download is a one-line error, not a hang.
    s3.kill_gateway()
    try:
        r = podcap(address, "get", cid, "-o", os.path.join(str(tmp_path), "down"), check=False)
    finally:
        s3.restart_gateway()
    assert r.returncode != 0 and "EndpointConnectionError" in r.stderr.strip().splitlines()[-1], r.stderr
    # The bucket explains itself: with the collector gone, the user's own credentials read the same capture.
    deadline = time.monotonic() + 10
    while not json.loads(objects.get_object(Bucket=s3.bucket, Key=f"{s3_prefix}/{cid}/manifest.json")["Body"]
                         .read())["complete"]:
        assert time.monotonic() < deadline, "the final manifest never came"
        time.sleep(0.2)
    collector[2].stop()
    env = {**os.environ, **s3.env()}
    url = f"s3://{s3.bucket}/{s3_prefix}/{cid}"
    again = os.path.join(str(tmp_path), "again")
    r = subprocess.run([tool("podcap"), "get", "--from", url, "-o", again], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert udp_payloads(os.path.join(again, node.namespace, "rx-0.pcap")) == got
    # Merged straight from the bucket (one stream per pod, merged as they arrive): every pod's packets, in order.
    merged = os.path.join(str(tmp_path), "from-bucket.pcapng")
    r = subprocess.run([tool("podcap"), "get", "--from", url, "--merge", merged], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pcapng = read_pcapng(merged)
    rx0 = [i for i, iface in enumerate(pcapng.interfaces) if iface.name == f"{node.namespace}/rx-0"]
    assert len(rx0) == 1
    assert [p.data for p in pcapng.packets if p.interface_id == rx0[0]] == \
        [rec.data for rec in read_file(os.path.join(again, node.namespace, "rx-0.pcap"))[1]]
    # A window fetches only the segments it overlaps and keeps only its records.
    _fmt, recs = read_file(os.path.join(again, node.namespace, "rx-0.pcap"))
    since, until = recs[1000].ts_ns, recs[1999].ts_ns
    window = os.path.join(str(tmp_path), "window")
    r = subprocess.run([tool("podcap"), "get", "--from", url, "-o", window, "--since", _rfc3339(since),
                        "--until", _rfc3339(until)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    inside = [g for g, rec in zip(got, recs, strict=True) if since // 1000 * 1000 <= rec.ts_ns <= until // 1000 * 1000]
    assert udp_payloads(os.path.join(window, node.namespace, "rx-0.pcap")) == inside
    r = subprocess.run([tool("podcap"), "get", "--from", f"s3://{s3.bucket}/{s3_prefix}/nope", "-o", window],
                       env=env, capture_output=True, text=True, timeout=60)
    first = r.stderr.strip().splitlines()[0]
    assert r.returncode != 0 and first.startswith("podcap: no capture at s3://") and "manifest.json" in first
    # What a new user typed (issue 26): the id given again is the capture, not a pod; a bad filter, an empty
    # window and a missing bucket are one line each, not a traceback or an empty success.
    both = os.path.join(str(tmp_path), "both")
    r = subprocess.run([tool("podcap"), "get", cid, "--from", url, "-o", both], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and udp_payloads(os.path.join(both, node.namespace, "rx-0.pcap")) == got, r.stderr
    for args, needle in [(["--filter", "tcp prt"], "invalid filter 'tcp prt'"),
                         (["--since", _rfc3339(until), "--until", _rfc3339(since)], "is after --until"),
                         (["nosuchpod"], f"capture {cid} has no pod nosuchpod")]:
        r = subprocess.run([tool("podcap"), "get", "--from", url, "-o", os.path.join(str(tmp_path), "x"), *args],
                           env=env, capture_output=True, text=True, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and needle in lines[0], (args, r.stderr)
    r = subprocess.run([tool("podcap"), "get", "--from", f"s3://no-such-bucket-26/{s3_prefix}/{cid}", "-o", window],
                       env=env, capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "no bucket no-such-bucket-26" in lines[0], r.stderr


def _rfc3339(ns: int) -> str:
    """RFC 3339 with microseconds (what --since/--until take), rounded down."""
    import datetime

    t = datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000 // 1000:06d}Z"


def test_status_shows_the_real_backlog_its_age_and_why_while_the_gateway_is_frozen(
        collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, s3: Testbed) -> None:
    """Issue 21. Real collector and agent, the gateway frozen (SIGSTOP) before segments close: ``status -o json``
    twice, seconds apart, shows the bytes of every closed segment in the data dir (nothing is archived), an age
    that grows with the clock and counts from when the oldest closed, and the hung upload as the reason; the
    metrics say the same. Thawed, the backlog drains to 0 and the reason goes."""
    address, data, proc = collector
    cid = capture_id(podcap(address, "start", "-n", node.namespace, "rx-0", "--filter", f"udp port {PORT}",
                            "--segment-size", "64KiB"))
    sender, rx = node.pod("sender"), node.pod("rx-0")
    node.exec(sender, ["ping", "-c", "1", "-W", "2", rx.ip])
    pod_dir = os.path.join(data, "captures", cid, node.namespace, "rx-0")

    def status() -> tuple[dict[str, object], float, float]:
        before = time.monotonic()
        st = json.loads(podcap(address, "status", cid, "-o", "json").stdout)
        return st, before, time.monotonic()

    def closed_local_bytes() -> int:
        """The data dir's segments but the newest (the pod's open one): closed, and (frozen) not archived."""
        return sum(os.path.getsize(p) for p in list_segments(pod_dir)[:-1])

    s3.freeze_gateway()
    try:
        frozen = time.monotonic()
        node.exec(sender, [sys.executable, SENDER, str(PORT), "3000", rx.ip])
        sent = time.monotonic()
        deadline = time.monotonic() + 20
        while (st := status()[0])["pods"][0].get("packets", 0) < 3000:  # type: ignore[index]
            assert time.monotonic() < deadline, st
            time.sleep(0.2)
        stored = time.monotonic()  # every segment that closes has closed by now
        first, start1, end1 = status()
        local = closed_local_bytes()
        assert len(list_segments(pod_dir)) >= 5 and local > 3 * 64 * 1024
        assert first.get("archive_backlog_bytes", 0) == local  # every closed segment, not those of one round
        age1 = float(first.get("archive_oldest_seconds", 0))  # type: ignore[arg-type]
        assert start1 - stored <= age1 <= end1 - frozen  # since the oldest closed, after the freeze
        metrics = archive_metrics(metrics_port(proc), cid)
        assert metrics["podcap_archive_backlog_bytes"] == local and metrics["podcap_archive_oldest_seconds"] >= age1
        time.sleep(max(4.0, sent + 13 - time.monotonic()))  # the round's first upload has hung for 10 s and more
        second, start2, end2 = status()
        assert second.get("archive_backlog_bytes", 0) == closed_local_bytes() == local
        age2 = float(second.get("archive_oldest_seconds", 0))  # type: ignore[arg-type]
        assert start2 - end1 <= age2 - age1 <= end2 - start1  # grows with the clock
        error = str(second.get("archive_error", ""))
        # One archiver serves every capture: the upload it hangs on may be an earlier test's (named with its id).
        assert re.fullmatch(rf"upload of segment \d+ of {node.namespace}/[a-z0-9-]+( \(capture [a-z0-9]+\))? in "
                            r"progress for \d+ s", error), error
        assert 10 <= int(error.split()[-2]) <= end2 - frozen
        table = podcap(address, "status", cid).stdout  # and people read it in the table's title
        assert "waiting on the collector's disk for the bucket" in table and "in progress for" in table
    finally:
        s3.thaw_gateway()
    deadline = time.monotonic() + 60  # (the hung request completes once the gateway runs again)
    while int((st := status()[0]).get("archive_backlog_bytes", 0)) or closed_local_bytes():  # type: ignore[call-overload]
        assert time.monotonic() < deadline, (st, list_segments(pod_dir))
        time.sleep(0.5)
    assert (st.get("archive_oldest_seconds", 0), st.get("archive_error", "")) == (0, "")
    assert len(list_segments(pod_dir)) == 1  # the open segment: all else archived and released
    assert archive_metrics(metrics_port(proc), cid)["podcap_archive_backlog_bytes"] == 0


def test_refused_credentials_are_a_one_line_error_at_start(s3: Testbed, tmp_path: str) -> None:
    env = {**os.environ, **s3.env(), "AWS_SECRET_ACCESS_KEY": "wrong"}
    r = subprocess.run([tool("podcap-collector"), "--insecure", "--listen", "127.0.0.1:0", "--data-dir",
                        os.path.join(str(tmp_path), "d"), "--storage", f"s3://{s3.bucket}/x", "--s3-endpoint",
                        s3.endpoint], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("podcap-collector: ") and "refused the credentials" in last, r.stderr


def test_a_collector_killed_while_an_upload_hangs_loses_and_duplicates_nothing(
        s3: Testbed, s3_prefix: str, tmp_path: str) -> None:
    """Real collector and agent: the gateway frozen mid-capture so an upload hangs in flight, the collector
    SIGKILLed, the gateway thawed, the collector restarted on the same data dir: every datagram comes back once, in
    order (parsed from what ``podcap get`` returns), each segment is one object, and no upload is left open."""
    demo = DemoNode()
    demo.create(["sender", "rx-0"])
    c = Cluster(str(tmp_path), demo)
    storage = ("--storage", f"s3://{s3.bucket}/{s3_prefix}", "--s3-endpoint", s3.endpoint)
    frozen = False
    try:
        c.start_collector(*storage, env=s3.env())
        c.start_agent()
        c.wait_pods()
        cid = capture_id(podcap(c.address, "start", "-n", demo.namespace, "rx-0", "--filter", f"udp port {PORT}",
                                "--segment-size", "64KiB"))
        c.wait(cid, all_capturing(1))
        count = 3000
        sender = send(c, count, 4.0, ["rx-0"])
        time.sleep(1.0)
        s3.freeze_gateway()
        frozen = True
        time.sleep(1.5)  # an archiving round has started an upload that now hangs
        assert int(c.status(cid).get("archive_backlog_bytes", 0)) > 0  # closed segments wait for the bucket
        assert c.collector is not None
        c.collector.stop(signal.SIGKILL)
        s3.thaw_gateway()
        frozen = False
        c.start_collector(*storage, env=s3.env())
        assert sender.wait(timeout=30) == 0
        c.wait(cid, all_capturing(1))
        time.sleep(1.0)
        assert json.loads(podcap(c.address, "stop", cid, "-o", "json").stdout)["state"] == "done"
        client = s3.client()
        deadline = time.monotonic() + 30
        while not json.loads(client.get_object(Bucket=s3.bucket, Key=f"{s3_prefix}/{cid}/manifest.json")["Body"]
                             .read())["complete"]:
            assert time.monotonic() < deadline, "the final manifest never came"
            time.sleep(0.2)
        check_exactly_once(c, cid, ["rx-0"], count)
        listed = client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{s3_prefix}/{cid}/").get("Contents", [])
        keys = [o["Key"] for o in listed if o["Key"].endswith(".pcap.zst")]
        st = c.status(cid)
        assert len(keys) >= 4 and len(keys) == len(set(keys)) == int(st["pods"][0]["segments"]), (keys, st)
        assert not client.list_multipart_uploads(Bucket=s3.bucket, Prefix=s3_prefix).get("Uploads")
    finally:
        if frozen:
            s3.thaw_gateway()
        c.close()
        demo.destroy()
