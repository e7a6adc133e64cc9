"""Reads that cannot hold what was asked fail with one line and a non-zero exit, before anything is written (issue
26, items 3 and 4): ``follow`` of a capture that has ended or of a pod the capture does not have, ``get`` of such a
pod (through the collector or from a bucket), an empty window (``--since`` after ``--until``) or a window outside
the capture's time; ``get ID --from s3://…/ID`` reads that capture (the id given twice is not a pod)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from podcap.collector.cli.get import command as get_cmd
from podcap.v1 import control_pb2
from tests.unit.collector.cli.fakes import CID, FakeClient, capture, invoke, pcap_bytes, run_main


def one_line_failure(r: Any, needle: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.exit_code != 0 and len(lines) == 1 and lines[0].startswith("podcap"), r.stderr
    assert needle in lines[0], lines[0]
    return str(lines[0])


def test_follow_of_an_ended_capture_says_so_and_what_reads_it(fake: FakeClient) -> None:
    ended = capture(control_pb2.CAPTURE_STATE_DONE)
    ended.end_reason = "stopped by user"
    fake.get = lambda cid: ended
    r = invoke("follow", CID)
    line = one_line_failure(r, f"capture {CID} has ended (stopped by user): there is nothing to follow")
    assert f"'podcap get {CID} --merge FILE' reads what it stored" in line
    assert r.stdout_bytes == b""


def test_follow_of_a_pod_the_capture_does_not_have_is_an_error(fake: FakeClient) -> None:
    r = invoke("follow", CID, "nosuchpod")
    line = one_line_failure(r, f"capture {CID} has no pod nosuchpod")
    assert "its pods: shop/web-0, shop/web-1" in line and r.stdout_bytes == b""


@pytest.mark.parametrize("merge", [False, True], ids=["dir", "merge"])
def test_get_of_a_pod_the_capture_does_not_have_writes_nothing(fake: FakeClient, tmp_path: str, merge: bool) -> None:
    fake.files = {"web-0": pcap_bytes(10**18, 3)}
    where = ["--merge", os.path.join(tmp_path, "m.pcapng")] if merge else ["-o", os.path.join(tmp_path, "out")]
    r = invoke("get", CID, "nosuchpod", *where)
    one_line_failure(r, f"capture {CID} has no pod nosuchpod; its pods: shop/web-0, shop/web-1")
    assert os.listdir(tmp_path) == []


def test_get_of_an_empty_window_fails(fake: FakeClient, tmp_path: str, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main("podcap", ["get", CID, "-o", str(tmp_path), "--since", "1m", "--until", "2m"],
                            monkeypatch, capsys)
    assert code == 2 and err.startswith("podcap get: --since ") and "is after --until" in err, err
    assert len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


class FakeBucket:
    """``get --from``'s bucket client: the capture as the fake collector has it."""

    made: list[str] = []

    def __init__(self, url: str, *, endpoint: str = "", region: str = "") -> None:
        self.capture_id = url.rstrip("/").rsplit("/", 1)[-1]
        self.fake = FakeClient(files={"web-0": pcap_bytes(10**18, 3)})
        FakeBucket.made.append(url)

    def __enter__(self) -> FakeBucket:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def get(self, capture_id: str) -> control_pb2.CaptureStatus:
        return capture(control_pb2.CAPTURE_STATE_DONE)

    def download(self, capture_id: str, pods: list[str], **kw: Any) -> Any:
        return self.fake.download(capture_id, pods, **kw)


def test_get_from_a_bucket_with_the_id_given_again_reads_that_capture(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: str) -> None:
    monkeypatch.setattr(get_cmd, "BucketClient", FakeBucket)
    out = os.path.join(tmp_path, "out")
    r = invoke("get", CID, "--from", f"s3://bucket/captures/{CID}", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert os.listdir(os.path.join(out, "shop")) == ["web-0.pcap"]
    r = invoke("get", "--from", f"s3://bucket/captures/{CID}", "nosuchpod", "-o", out)
    one_line_failure(r, f"capture {CID} has no pod nosuchpod")
