"""A capture's life cycle with object storage, against the real Ceph RGW test bed (``tests.s3``): deleting a capture
takes its objects, pages and manifest as well as its files and rows (and with the gateway down, what is left in the
bucket is recorded as pending and deleted once it is back); ``podcap get --from s3://`` interrupted mid-file by
SIGINT or SIGKILL resumes the pod file from where it stopped, byte for byte, fetching only the blocks from the resume
point on — not one object of the segments before it; and ``get --from s3://`` reads what the collector's Download
serves (whole, a window, a window and a filter: the one selection), with or without the capture id given again."""

from __future__ import annotations

import glob
import os
import signal
import sqlite3
from collections.abc import Iterable
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from podcap.collector.api.auth import OpenAuthorizer
from podcap.collector.api.control import ControlServicer
from podcap.collector.bucket.objects import ObjectStore
from podcap.collector.captures.lifecycle import CaptureDeletedError
from podcap.collector.cli import main
from podcap.collector.cli.get.bucket import BucketClient
from podcap.collector.downloads import CHECK_BYTES
from podcap.formats.bucket.manifest import page_from_json
from podcap.formats.pcap import FILE_HEADER_LEN, iter_records, parse_file_header
from podcap.formats.selection import Window
from podcap.v1 import common_pb2, control_pb2, ingest_pb2
from tests.conftest import tool
from tests.integration.helpers import interrupted
from tests.integration.tiered_env import POD, Env

pytestmark = pytest.mark.root


def ended(env: Env, chunks: int, **kw: Any) -> str:
    """A capture of one pod, ended, every segment of it archived and its final manifest written."""
    cid = env.start(**kw)
    env.send(cid, 1, chunks, per_chunk=1000, size=1000)
    env.mgr.stop(cid, wait=0)
    env.mgr.on_pod_event(env.conn, ingest_pb2.PodCaptureEvent(
        capture_id=cid, pod_uid=POD.uid, stream_id="s1", state=common_pb2.POD_CAPTURE_STATE_DONE))
    assert env.mgr.get(cid).ended.wait(5)
    env.mgr.archiver.run_once()
    env.mgr.archiver.run_once()  # the final manifest
    return cid


def under(env: Env, cid: str) -> list[str]:
    return env.objects.list_keys(env.objects.url.key(cid) + "/")


def rows(env: Env, cid: str) -> list[int]:
    db = sqlite3.connect(os.path.join(env.data, "podcap.db"))
    try:
        return [db.execute(f"SELECT COUNT(*) FROM {t} WHERE capture_id=?", (cid,)).fetchone()[0]
                for t in ("pods", "streams", "segments")]
    finally:
        db.close()


def test_delete_takes_objects_pages_and_manifest_with_the_files_and_rows(env: Env) -> None:
    cid = ended(env, 4, segment=1 << 20)
    keep = ended(env, 1)
    keys = under(env, cid)
    assert any(k.endswith(".pcap.zst") for k in keys) and any("/segments-" in k for k in keys)
    assert env.objects.url.key(cid, "manifest.json") in keys
    d = env.mgr.delete(cid, by="alice")
    assert d.pending == "" and d.bytes > 0 and d.local_bytes == 0  # all of it was in the bucket
    assert under(env, cid) == []
    assert not os.path.exists(os.path.join(env.data, "captures", cid)) and rows(env, cid) == [0, 0, 0]
    with pytest.raises(Exception, match="no capture at"):
        BucketClient(f"s3://{env.s3.bucket}/{env.prefix}/{cid}", endpoint=env.s3.endpoint).get(cid)
    assert under(env, keep) and env.read_back(keep) == list(range(1000))  # the other capture is untouched


def test_with_the_gateway_down_the_objects_are_deleted_once_it_is_back(env: Env) -> None:
    cid = ended(env, 2)
    env.s3.kill_gateway()
    try:
        d = env.mgr.delete(cid, by="alice")
        # The capture is gone for the collector (files, rows); the bucket's part waits, recorded.
        assert d.pending.startswith("objects in the bucket: ")
        assert not os.path.exists(os.path.join(env.data, "captures", cid)) and rows(env, cid) == [0, 0, 0]
        with pytest.raises(CaptureDeletedError, match="by alice: podcap delete"):
            env.mgr.get(cid)
        env.mgr.lifecycle.retry_pending()  # still down: still pending
        assert env.store.deletion(cid).pending  # type: ignore[union-attr]
    finally:
        env.s3.restart_gateway()
    assert under(env, cid)
    env.mgr.lifecycle.retry_pending()
    assert under(env, cid) == [] and env.store.deletion(cid).pending == ""  # type: ignore[union-attr]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_get_from_the_bucket_resumes_inside_a_pod_fetching_only_what_follows(
        env: Env, tmp_path: str, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals) -> None:
    cid = ended(env, 40, segment=4 << 20)  # 40 MB of records in ~10 segments
    url = f"s3://{env.s3.bucket}/{env.prefix}/{cid}"
    whole = os.path.join(str(tmp_path), "whole")
    assert get(url, env, whole).exit_code == 0
    name = os.path.join("shop", "web-0.pcap")
    size = os.path.getsize(os.path.join(whole, name))

    out = os.path.join(str(tmp_path), "out")
    part = os.path.join(out, name + ".part")
    r = interrupted([tool("podcap"), "get", "--from", url, "--s3-endpoint", env.s3.endpoint, "-o", out],
                    lambda: os.path.exists(part) and os.path.getsize(part) > size // 3,
                    lambda proc: proc.send_signal(sig), env={**os.environ, **env.s3.env()})
    assert r.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    kept = os.path.getsize(part)
    assert size // 3 < kept < size

    # The second run counts what it fetches: the blocks of the segments from the resume check's start on.
    fetched: list[tuple[str, int]] = []
    real = ObjectStore.get_range

    def counting(self: ObjectStore, key: str, start: int, length: int) -> bytes:
        fetched.append((key, length))
        return real(self, key, start, length)

    monkeypatch.setattr(ObjectStore, "get_range", counting)
    r = get(url, env, out)
    assert r.exit_code == 0, r.output
    assert "resuming 1 pod file(s) part-way" in r.stderr
    with open(os.path.join(out, name), "rb") as a, open(os.path.join(whole, name), "rb") as b:
        assert a.read() == b.read()
    assert not glob.glob(os.path.join(out, "*", "*.part"))

    needed, skipped, pos = set(), set(), FILE_HEADER_LEN
    for seg in archived(env, cid):
        end = pos + seg.size - FILE_HEADER_LEN
        (needed if end > kept - CHECK_BYTES else skipped).add(seg.key)
        pos = end
    assert pos == size and skipped  # the resume point is past some whole segments
    assert {key for key, _n in fetched} <= needed  # nothing of a segment wholly before the resume point
    assert 0 < sum(n for _k, n in fetched) <= sum(env.objects.size(k) for k in needed)


class _Context:
    """The gRPC context of a Download called in-process: no metadata (the open authorizer), aborts raise."""

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return []

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError(f"Download aborted: {code} {details}")


def _served(messages: Iterable[control_pb2.DownloadChunk]) -> list[tuple[str, int, bytes]]:
    """A Download's files: (path, size announced, bytes)."""
    files: list[tuple[str, int, bytes]] = []
    for msg in messages:
        if msg.WhichOneof("kind") == "file":
            files.append((msg.file.path, msg.file.size, b""))
        else:
            path, size, data = files[-1]
            files[-1] = (path, size, data + msg.data)
    return files


def test_get_from_the_bucket_reads_what_the_collector_serves_and_takes_the_id_given_again(
        env: Env, tmp_path: str) -> None:
    cid = ended(env, 6, segment=1 << 20)  # 6000 records of 1000 bytes, ~6 segments; second 10 + k holds chunk k
    url = f"s3://{env.s3.bucket}/{env.prefix}/{cid}"
    control = ControlServicer(env.mgr, OpenAuthorizer())
    bucket = BucketClient(url, endpoint=env.s3.endpoint)
    since, until = 12 * 10**9 + 500, 14 * 10**9 + 200  # records 2500..4200
    windows = [Window(), Window(since, until), Window(since, until, "ether[3] & 1 = 0"), Window(bpf="ether[3] = 7")]
    for window in windows:
        request = control_pb2.DownloadRequest(capture_id=cid, since_unix_ns=window.since_ns,
                                              until_unix_ns=window.until_ns, filter=window.bpf)
        served = _served(control.Download(request, _Context()))  # type: ignore[arg-type]
        read = _served(bucket.download(cid, [], since_ns=window.since_ns, until_ns=window.until_ns, bpf=window.bpf))
        assert read == served and len(served) == 1, window
        fmt = parse_file_header(served[0][2])
        seqs = [int.from_bytes(r.data[:4], "big") for r in iter_records(served[0][2][FILE_HEADER_LEN:], fmt)]
        expected = [i for i in range(6000) if (not window.since_ns or 2500 <= i <= 4200)
                    and (not window.bpf or (i & 1 == 0 if "& 1" in window.bpf else i % 256 == 7))]
        assert seqs == expected, window

    # The capture's id given positionally as well (as with every other get) reads the same files; another id is a
    # one-line error that writes nothing.
    with_id, without = os.path.join(str(tmp_path), "with"), os.path.join(str(tmp_path), "without")
    runner = CliRunner()
    args = ["--from", url, "--s3-endpoint", env.s3.endpoint]
    r = runner.invoke(main.cli, ["get", cid, *args, "-o", with_id], prog_name="podcap")
    assert r.exit_code == 0, r.output
    assert get(url, env, without).exit_code == 0
    name = os.path.join("shop", "web-0.pcap")
    with open(os.path.join(with_id, name), "rb") as a, open(os.path.join(without, name), "rb") as b:
        data = a.read()
        assert data == b.read() == served_whole(control, cid)
    other = os.path.join(str(tmp_path), "other")
    r = runner.invoke(main.cli, ["get", "0" * len(cid), *args, "-o", other], prog_name="podcap")
    assert r.exit_code != 0 and r.stderr.startswith("podcap: ") and "Traceback" not in r.output, r.output
    assert r.stderr.startswith(f"podcap: capture {cid} has no pod {'0' * len(cid)}; --from names capture {cid}") \
        and r.stderr.count("\n") == 1, r.stderr
    assert not os.path.exists(other) or not os.listdir(other)


def served_whole(control: ControlServicer, cid: str) -> bytes:
    [(_path, size, data)] = _served(control.Download(control_pb2.DownloadRequest(capture_id=cid),
                                                     _Context()))  # type: ignore[arg-type]
    assert size == len(data) > FILE_HEADER_LEN
    return data


def get(url: str, env: Env, out: str) -> Any:
    return CliRunner().invoke(main.cli, ["get", "--from", url, "--s3-endpoint", env.s3.endpoint, "-o", out],
                              prog_name="podcap")


def archived(env: Env, cid: str) -> list[Any]:
    """The pod's archived segments in order, from its pages."""
    out = []
    for key in sorted(k for k in under(env, cid) if "/segments-" in k):
        out += page_from_json(env.objects.get(key))
    return sorted(out, key=lambda s: s.index)
