"""``podcap get -o DIR`` after an interruption fetches only what is missing — the pods it had not completed, and the
rest of the file it was writing — and ends with the same files as an uninterrupted get (byte for byte); the journal
never makes a stale or foreign file count as complete, and a kept start that is not the collector's is sent again
whole. The fake collector serves through the collector's own code for offsets and the resume check
(``podcap.collector.downloads``). Also the download progress: drawn on a terminal (bytes, rate, per pod and in all),
nothing when stderr is piped."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from podcap.collector.cli import main
from podcap.collector.cli.client import CollectorError
from podcap.collector.cli.get import command as get_cmd
from podcap.collector.cli.get.download import DownloadedFile
from podcap.collector.cli.get.progress import DownloadProgress
from podcap.collector.cli.get.resume import JOURNAL
from podcap.collector.downloads import (
    CHECK_BYTES,
    Piece,
    PodFile,
    ResumeOffsetError,
    ResumePointError,
    check_resume_points,
    file_messages,
    given,
)
from podcap.formats.pcap import FILE_HEADER_LEN, Record, iter_records, parse_file_header, read_file
from podcap.v1 import common_pb2, control_pb2
from tests.unit.collector.cli.test_cli import pcap_bytes

CID = "abc123def456"
PODS = ["web-0", "web-1", "web-2", "web-3"]


def pod(name: str) -> common_pb2.Pod:
    return common_pb2.Pod(namespace="shop", name=name, uid=f"uid-{name}", node="node-1")


@dataclass
class Collector:
    """A fake collector client that serves whole pod files and counts what it streams; ``fail_after`` bytes into
    a download it breaks the stream (a network cut, a Ctrl+C)."""

    files: dict[str, bytes]
    state: control_pb2.CaptureState.ValueType = control_pb2.CAPTURE_STATE_DONE
    fail_after: int | None = None
    requests: list[list[str]] = field(default_factory=list)
    resumed: list[list[control_pb2.ResumePoint]] = field(default_factory=list)
    starts: list[control_pb2.FileStart] = field(default_factory=list)
    sent: int = 0

    def __call__(self, address: str | None = None, **_: Any) -> Collector:
        return self

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def get(self, capture_id: str) -> control_pb2.CaptureStatus:
        if capture_id != CID:
            raise CollectorError(f"no capture {capture_id}")
        pods = [control_pb2.PodStatus(pod=pod(n), packets=len(read_file_bytes(b)), bytes=len(b), segments=1)
                for n, b in self.files.items()]
        return control_pb2.CaptureStatus(id=CID, state=self.state, pods=pods)

    def download(self, capture_id: str, pods: list[str] | None = None, *, since_ns: int = 0, until_ns: int = 0,
                 bpf: str = "", resume: Sequence[control_pb2.ResumePoint] = ()) -> Iterator[control_pb2.DownloadChunk]:
        self.requests.append(list(pods or []))
        self.resumed.append(list(resume))
        points = check_resume_points(resume)
        for name, blob in self.files.items():
            p = pod(name)
            if pods and not ({p.uid, p.name, f"shop/{p.name}"} & set(pods)):
                continue
            with PodFile(blob[:FILE_HEADER_LEN], [Piece(len(blob) - FILE_HEADER_LEN, given(io.BytesIO(blob)))]) as pf:
                for msg in file_messages(p, pf, points.get(p.uid)):
                    if msg.WhichOneof("kind") == "file":
                        self.starts.append(msg.file)
                        yield msg
                        continue
                    for off in range(0, len(msg.data), 1000):
                        if self.fail_after is not None and self.sent >= self.fail_after:
                            raise CollectorError("connection to the collector lost")
                        piece = msg.data[off:off + 1000]
                        self.sent += len(piece)
                        yield control_pb2.DownloadChunk(data=piece)


def read_file_bytes(blob: bytes) -> list[Record]:
    fmt = parse_file_header(blob[:FILE_HEADER_LEN])
    return list(iter_records(blob[FILE_HEADER_LEN:], fmt))


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Collector:
    c = Collector({n: pcap_bytes(1_700_000_000 * 10**9 + i * 7, 40 + 10 * i) for i, n in enumerate(PODS)})
    monkeypatch.setattr(get_cmd, "CollectorClient", c)
    return c


def get(*args: str) -> Any:
    return CliRunner().invoke(main.cli, ["get", CID, *args], prog_name="podcap")


def records(out_dir: str) -> dict[str, list[Record]]:
    return {n: read_file(os.path.join(out_dir, "shop", f"{n}.pcap"))[1] for n in PODS}


def test_an_interrupted_get_resumes_with_only_the_missing_bytes(collector: Collector, tmp_path: str) -> None:
    sizes = {n: len(b) for n, b in collector.files.items()}
    out = os.path.join(tmp_path, "out")
    collector.fail_after = sizes["web-0"] + sizes["web-1"] + 500  # web-0, web-1 complete; web-2 half way
    r = get("-o", out)
    assert r.exit_code == 1 and "connection to the collector lost" in r.output
    # What was written of web-2 stays as its part: nothing looks complete that is not.
    assert sorted(os.listdir(os.path.join(out, "shop"))) == ["web-0.pcap", "web-1.pcap", "web-2.pcap.part"]
    kept = os.path.getsize(os.path.join(out, "shop", "web-2.pcap.part"))
    assert 0 < kept < sizes["web-2"]
    assert os.path.exists(os.path.join(out, JOURNAL))

    collector.fail_after, collector.sent, collector.requests, collector.starts = None, 0, [], []
    r = get("-o", out)
    assert r.exit_code == 0, r.output
    assert "resuming: 2 of 4 pod file(s) already complete" in r.stderr
    assert "resuming 1 pod file(s) part-way" in r.stderr
    assert collector.requests == [["uid-web-2", "uid-web-3"]]
    (point,) = collector.resumed[-1]
    assert (point.pod_uid, point.offset, point.check_bytes) == ("uid-web-2", kept, min(kept, CHECK_BYTES))
    assert [(f.pod.name, f.offset, f.resume_refused) for f in collector.starts] == [("web-2", kept, ""),
                                                                                    ("web-3", 0, "")]
    assert collector.sent == sizes["web-2"] - kept + sizes["web-3"]  # only the missing bytes travelled
    assert not os.path.exists(os.path.join(out, JOURNAL))
    # Listed in the collector's order, as without an interruption.
    assert [line.split("\t")[0] for line in r.stdout.splitlines()] == \
        [os.path.join(out, "shop", f"{n}.pcap") for n in PODS]

    whole = os.path.join(tmp_path, "whole")
    collector.sent = 0
    assert get("-o", whole).exit_code == 0
    assert collector.sent == sum(sizes.values())
    assert records(out) == records(whole)
    for n in PODS:
        with open(os.path.join(out, "shop", f"{n}.pcap"), "rb") as a, \
                open(os.path.join(whole, "shop", f"{n}.pcap"), "rb") as b:
            assert a.read() == b.read()


def test_a_kept_start_that_is_not_the_collectors_is_sent_again_whole(collector: Collector, tmp_path: str) -> None:
    """The bytes before the offset differ from the collector's (retention shifted the pod's file, or the part was
    torn): the collector refuses the resume and sends the whole file, which replaces the part."""
    out = os.path.join(tmp_path, "out")
    collector.fail_after = 700
    assert get("-o", out).exit_code == 1
    part = os.path.join(out, "shop", "web-0.pcap.part")
    with open(part, "r+b") as f:  # a torn tail: what a machine crash may leave of the last writes
        f.seek(-8, os.SEEK_END)
        f.write(b"\0" * 8)
    collector.fail_after, collector.sent, collector.starts = None, 0, []
    r = get("-o", out)
    assert r.exit_code == 0, r.output
    assert collector.starts[0].offset == 0 and "differ from the stored file" in collector.starts[0].resume_refused
    assert "differ from the stored file" in r.stderr
    with open(os.path.join(out, "shop", "web-0.pcap"), "rb") as f:
        assert f.read() == collector.files["web-0"]
    assert collector.sent == sum(len(b) for b in collector.files.values())


def test_a_part_longer_than_the_pods_file_is_downloaded_again(collector: Collector, tmp_path: str) -> None:
    """Retention deleted the pod's oldest segments after the interruption: the kept part is longer than what the
    collector has now, so it cannot be the start of it; the get says so and fetches the file whole."""
    out = os.path.join(tmp_path, "out")
    collector.fail_after = len(collector.files["web-0"]) - 100
    assert get("-o", out).exit_code == 1
    shorter = pcap_bytes(1_700_000_000 * 10**9 + 3, 5)
    collector.files["web-0"] = shorter
    collector.fail_after, collector.sent = None, 0
    r = get("-o", out)
    assert r.exit_code == 0, r.output
    assert "holds more than the collector has" in r.stderr and collector.resumed[-1] == []
    with open(os.path.join(out, "shop", "web-0.pcap"), "rb") as f:
        assert f.read() == shorter


def test_an_offset_past_the_end_is_an_error_not_a_restart() -> None:
    blob = pcap_bytes(1_700_000_000 * 10**9, 3)
    pf = PodFile(blob[:FILE_HEADER_LEN], [Piece(len(blob) - FILE_HEADER_LEN, given(io.BytesIO(blob)))])
    past = control_pb2.ResumePoint(pod_uid="uid-web-0", offset=len(blob) + 1)
    with pytest.raises(ResumeOffsetError, match=f"past the end of shop/web-0.pcap's file \\({len(blob)} bytes\\)"):
        list(file_messages(pod("web-0"), pf, past))
    at_end = control_pb2.ResumePoint(pod_uid="uid-web-0", offset=len(blob))
    (start,) = list(file_messages(pod("web-0"), pf, at_end))  # nothing follows but the FileStart
    assert start.file.offset == start.file.size == len(blob)


@pytest.mark.parametrize(("point", "message"), [
    (control_pb2.ResumePoint(offset=10), "without a pod uid"),
    (control_pb2.ResumePoint(pod_uid="u", offset=10, check_bytes=11, tail_sha256=bytes(32)), "more than its offset"),
    (control_pb2.ResumePoint(pod_uid="u", offset=10, check_bytes=5, tail_sha256=b"x"), "must be 32 bytes"),
])
def test_resume_points_that_cannot_be_right_are_refused(point: control_pb2.ResumePoint, message: str) -> None:
    with pytest.raises(ResumePointError, match=message):
        check_resume_points([point])
    with pytest.raises(ResumePointError, match="two resume points"):
        check_resume_points([control_pb2.ResumePoint(pod_uid="u"), control_pb2.ResumePoint(pod_uid="u")])


@pytest.mark.parametrize("spoil", ["other-capture", "file-changed", "collector-has-more", "running", "window"])
def test_the_journal_never_keeps_a_file_that_may_not_be_complete(collector: Collector, tmp_path: str,
                                                                  spoil: str) -> None:
    sizes = {n: len(b) for n, b in collector.files.items()}
    out = os.path.join(tmp_path, "out")
    collector.fail_after = sizes["web-0"] + 10
    assert get("-o", out).exit_code == 1
    web0 = os.path.join(out, "shop", "web-0.pcap")
    web1_kept = os.path.getsize(os.path.join(out, "shop", "web-1.pcap.part"))
    args: tuple[str, ...] = ()
    if spoil == "other-capture":
        with open(os.path.join(out, JOURNAL)) as f:
            text = f.read()
        with open(os.path.join(out, JOURNAL), "w") as f:
            f.write(text.replace(CID, "zzz999zzz999"))
    elif spoil == "file-changed":
        with open(web0, "ab") as f:
            f.write(b"\0" * 16)
    elif spoil == "collector-has-more":  # e.g. retention or recovery changed the pod since
        collector.files["web-0"] = pcap_bytes(1_700_000_000 * 10**9, 41)
    elif spoil == "running":
        collector.state = control_pb2.CAPTURE_STATE_RUNNING
    else:
        args = ("--filter", "udp")
    collector.fail_after, collector.sent, collector.requests = None, 0, []
    r = get("-o", out, *args)
    assert r.exit_code == 0, r.output
    assert "already complete" not in r.stderr
    assert collector.requests == [[]]  # every pod, as a first run
    # What may still be resumed: the starts this same get left (checked by the collector), never a foreign one.
    resumed = {p.pod_uid: p.offset for p in collector.resumed[-1]}
    if spoil in ("other-capture", "window"):
        assert resumed == {}
    elif spoil == "file-changed":  # longer than the collector's file: not its start
        assert resumed == {"uid-web-1": web1_kept}
    else:  # the file grew since (a running capture, or more stored): only what follows travels
        assert resumed == {"uid-web-0": sizes["web-0"], "uid-web-1": web1_kept}
        assert collector.sent == sum(len(b) for b in collector.files.values()) - sizes["web-0"] - web1_kept
    for name, blob in collector.files.items():
        with open(os.path.join(out, "shop", f"{name}.pcap"), "rb") as f:
            assert f.read() == blob


def test_progress_shows_bytes_rate_and_pods_on_a_terminal() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140, color_system=None)
    with DownloadProgress(total_bytes=3_000_000, pods=2, console=console) as progress:
        for name in ("web-0", "web-1"):
            progress.file_started(pod(name), 1_500_000)
            for _ in range(15):
                progress.received(pod(name), 100_000)
            progress.file_done(DownloadedFile(pod(name), f"/x/{name}.pcap", 1_500_000))
    text = buf.getvalue()
    assert "shop/web-0" in text and "shop/web-1" in text
    # The units of every other size the CLI prints (issue 26: the progress said MB beside summaries in MiB).
    assert "all (2/2 pods)" in text and "2.9 MiB/2.9 MiB" in text and "iB/s" in text and " MB" not in text


def test_progress_is_quiet_when_stderr_is_piped(collector: Collector, tmp_path: str) -> None:
    r = get("-o", str(tmp_path))
    assert r.exit_code == 0
    assert r.stderr == ""
    assert not DownloadProgress(total_bytes=1, pods=1).enabled  # pytest's stderr is not a terminal
