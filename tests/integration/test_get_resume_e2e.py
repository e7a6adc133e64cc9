"""``podcap get`` against a real collector and agent (netns pods, sequence-numbered UDP, several segments per pod):
an interrupted ``get -o DIR`` run again fetches only the pods it had not completed — the collector's own sizes and
packet counts are what the resume checks the files against — and ends with the files of an uninterrupted get; the
download's progress shows on a terminal (a pty) and nothing shows when stderr is piped."""

from __future__ import annotations

import os
import pty
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from podcap.collector.cli import main
from podcap.collector.cli.client import CollectorClient, CollectorError
from podcap.collector.cli.get import command as get_cmd
from podcap.collector.cli.get.resume import JOURNAL
from podcap.collector.demo.node import DemoNode
from podcap.formats.pcap import read_file
from podcap.v1 import control_pb2
from tests.conftest import Proc, podcap, tool
from tests.integration.helpers import capture_udp

pytestmark = pytest.mark.root

RECEIVERS = ["rx-0", "rx-1", "rx-2"]
COUNT = 2000


class Counting(CollectorClient):
    """The real client, counting the pods each Download asks for and the bytes it brings; with ``break_at`` it
    cuts the stream when that many files have started (as a network cut or Ctrl+C would)."""

    requests: list[list[str]] = []
    received = 0
    break_at: int | None = None

    def download(self, capture_id: str, pods: list[str] | None = None, **kw: Any,
                 ) -> Iterator[control_pb2.DownloadChunk]:
        Counting.requests.append(list(pods or []))
        files = 0
        for msg in super().download(capture_id, pods, **kw):
            if msg.WhichOneof("kind") == "file":
                files += 1
                if Counting.break_at is not None and files == Counting.break_at:
                    raise CollectorError("connection to the collector lost")
            else:
                Counting.received += len(msg.data)
            yield msg


def get(address: str, *args: str) -> Any:
    return CliRunner().invoke(main.cli, ["--collector", address, "get", *args], prog_name="podcap")


def test_interrupted_get_resumes_and_progress_shows_on_a_terminal(
    collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, tmp_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address = collector[0]
    cid, st = capture_udp(address, node, RECEIVERS, COUNT, "--segment-size", "64KiB")
    assert st["state"] == "done" and all(int(p["segments"]) > 1 for p in st["pods"]), st["pods"]

    whole = os.path.join(tmp_path, "whole")
    podcap(address, "get", cid, "-o", whole)

    monkeypatch.setattr(get_cmd, "CollectorClient", Counting)
    out = os.path.join(tmp_path, "out")
    Counting.break_at = 3  # two pods complete, the third cut off
    r = get(address, cid, "-o", out)
    assert r.exit_code == 1 and "connection to the collector lost" in r.output
    done = sorted(os.listdir(os.path.join(out, node.namespace)))
    assert len(done) == 2 and all(n.endswith(".pcap") for n in done)
    assert os.path.exists(os.path.join(out, JOURNAL))

    Counting.break_at, Counting.requests, Counting.received = None, [], 0
    r = get(address, cid, "-o", out)
    assert r.exit_code == 0, r.output
    assert "resuming: 2 of 3 pod file(s) already complete" in r.stderr
    (missing,) = [p for p in st["pods"] if f"{p['pod']['name']}.pcap" not in done]
    assert Counting.requests == [[missing["pod"]["uid"]]]
    assert Counting.received == os.path.getsize(os.path.join(out, node.namespace, f"{missing['pod']['name']}.pcap"))
    assert not os.path.exists(os.path.join(out, JOURNAL))
    for name in RECEIVERS:
        ours, theirs = (os.path.join(d, node.namespace, f"{name}.pcap") for d in (out, whole))
        assert read_file(ours) == read_file(theirs) and len(read_file(ours)[1]) == COUNT
        with open(ours, "rb") as a, open(theirs, "rb") as b:
            assert a.read() == b.read()

    # Progress: on a terminal, and not when piped.
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([tool("podcap"), "--collector", address, "get", cid, "-o",
                                 os.path.join(tmp_path, "tty")], stdout=subprocess.DEVNULL, stderr=follower,
                                env={**os.environ, "COLUMNS": "160", "TERM": "xterm"})
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the process closed its end
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    text = b"".join(chunks).decode(errors="replace")
    assert "all (3/3 pods)" in text and "KiB" in text and "iB/s" in text and "kB" not in text, text[-2000:]
    piped = podcap(address, "get", cid, "-o", os.path.join(tmp_path, "piped"))
    assert piped.stderr == ""
