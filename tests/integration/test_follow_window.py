"""Live follow while storing, and time-window/filter retrieval, against real processes and netns pods."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from podcap.collector.cli.client import CollectorClient
from podcap.collector.demo.node import DemoNode
from podcap.formats.pcap import FILE_HEADER_LEN, iter_records, parse_file_header
from tests.conftest import Proc, podcap, tool
from tests.integration.helpers import (
    PORT,
    SENDER,
    capture_id,
    start_udp,
    udp_payloads,
    wait_capturing,
    warm_up,
)
from tests.pcapng_reader import PcapngError, read_pcapng

pytestmark = pytest.mark.root


def _seqs_in(path: str) -> list[int]:
    """The sequence numbers in the live pcapng written so far ([] while a block is half written)."""
    try:
        f = read_pcapng(path)
    except PcapngError:
        return []
    return [int.from_bytes(p.data[42 + 13:42 + 17], "big") for p in f.packets if p.data[42:].startswith(b"PODCAPSEQ")]


def test_follow_streams_a_valid_pcapng_while_the_capture_is_stored(
    collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, tmp_path: str
) -> None:
    address = collector[0]
    cid = start_udp(address, node, ["rx-0"])
    live = os.path.join(tmp_path, "live.pcapng")
    with open(live, "wb") as out:
        follower = subprocess.Popen([tool("podcap"), "--collector", address, "follow", cid], stdout=out,
                                    stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while os.path.getsize(live) < 28:  # the stream starts with its section header at once
            assert time.monotonic() < deadline and follower.poll() is None, "no section header from podcap follow"
            time.sleep(0.05)
        node.exec(node.pod("sender"), [sys.executable, SENDER, str(PORT), "500", node.pod("rx-0").ip])
        # A quiet pod's chunk is cut at the latest after the flush interval (2 s) plus the ring block timeout.
        deadline = time.monotonic() + 8
        while True:
            seqs = _seqs_in(live)
            if len(seqs) >= 500 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert seqs == list(range(500)), "the live stream parses while the capture runs"
        podcap(address, "stop", cid)
        assert follower.wait(timeout=20) == 0, follower.stderr.read() if follower.stderr else ""
    out_dir = os.path.join(tmp_path, "out")
    podcap(address, "get", cid, "-o", out_dir)
    assert [g[1] for g in udp_payloads(os.path.join(out_dir, node.namespace, "rx-0.pcap"))] == list(range(500))
    # tshark reads the followed stream without complaint
    r = subprocess.run(["tshark", "-r", live, "-c", "5"], capture_output=True, text=True)
    complaints = [line for line in r.stderr.splitlines() if "Running as user" not in line and line.strip()]
    assert r.returncode == 0 and not complaints, r.stderr


def test_time_window_and_filter_return_exactly_the_matching_packets(
    collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, tmp_path: str
) -> None:
    address = collector[0]
    warm_up(node)
    cid = capture_id(podcap(address, "start", "-n", node.namespace, "rx-1", "--segment-time", "1"))
    wait_capturing(address, cid, 1)
    rx = node.pod("rx-1")
    for _ in range(3):  # three bursts one second apart: several segments
        node.exec(node.pod("sender"), [sys.executable, SENDER, str(PORT), "200", rx.ip])
        node.exec(node.pod("sender"), ["ping", "-c", "2", "-i", "0.2", rx.ip])
        time.sleep(1.2)
    podcap(address, "stop", cid)
    with CollectorClient(address) as client:
        def fetch(**kw: object) -> bytes:
            return b"".join(m.data for m in client.download(cid, ["rx-1"], **kw)  # type: ignore[arg-type]
                            if m.WhichOneof("kind") == "data")

        full = fetch()
        fmt = parse_file_header(full)
        recs = list(iter_records(full[FILE_HEADER_LEN:], fmt))
        assert len(recs) > 600
        since, until = recs[len(recs) // 4].ts_ns, recs[3 * len(recs) // 4].ts_ns
        window = list(iter_records(fetch(since_ns=since, until_ns=until)[FILE_HEADER_LEN:], fmt))
        assert window == [r for r in recs if since <= r.ts_ns <= until]
        icmp = list(iter_records(fetch(bpf="icmp")[FILE_HEADER_LEN:], fmt))
        assert icmp and icmp == [r for r in recs if r.data[12:14] == b"\x08\x00" and r.data[23] == 1]
    # The same through the CLI: a filter and a relative window that covers everything.
    out = os.path.join(tmp_path, "cli")
    podcap(address, "get", cid, "rx-1", "-o", out, "--filter", "icmp", "--since", "10m")
    with open(os.path.join(out, node.namespace, "rx-1.pcap"), "rb") as f:
        assert list(iter_records(f.read()[FILE_HEADER_LEN:], fmt)) == icmp


def test_a_follower_that_does_not_read_never_slows_the_capture(
    collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, tmp_path: str
) -> None:
    address = collector[0]
    cid = start_udp(address, node, ["rx-2"])
    # stdout is a pipe nobody reads: after 64 KiB the follower blocks, then the collector's buffer for it fills.
    stalled = subprocess.Popen([tool("podcap"), "--collector", address, "follow", cid], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    try:
        count = 200000  # ~25 MB: more than the collector buffers for one follower (16 MiB)
        node.exec(node.pod("sender"), [sys.executable, SENDER, str(PORT), str(count), node.pod("rx-2").ip],
                  timeout=120)
        st = json.loads(podcap(address, "stop", cid, "-o", "json").stdout)
    finally:
        stalled.kill()
        stalled.wait()
    pod = st["pods"][0]
    assert int(pod["kernel"]["dropped"]) == 0 and int(pod["agent_dropped_packets"]) == 0
    out = os.path.join(tmp_path, "out")
    podcap(address, "get", cid, "-o", out)
    assert [g[1] for g in udp_payloads(os.path.join(out, node.namespace, "rx-2.pcap"))] == list(range(count))
