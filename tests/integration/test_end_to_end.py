"""End to end as a user runs it: podcap-collector and podcap-agent processes over gRPC on loopback, pods made of
real network namespaces and veths, the podcap CLI. Packets are checked by parsing the downloaded pcap files."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from podcap.collector.demo.node import DemoNode
from podcap.formats.pcap import read_file
from tests.conftest import Proc, podcap
from tests.integration.helpers import (
    PORT,
    SENDER,
    capture_id,
    udp_payloads,
    wait_capturing,
    wait_state,
    warm_up,
)

pytestmark = pytest.mark.root



# The second run is an agent without podcap's C library: libpcap's pcap_dump into a memory stream (the fallback).
@pytest.mark.parametrize("agent", [None, {"PODCAP_NO_NATIVE": "1"}], indirect=True, ids=["native", "pcap_dump"])
def test_sequence_numbered_udp_into_several_pods_stored_exactly_once(
    collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, tmp_path: str, request: pytest.FixtureRequest
) -> None:
    address = collector[0]
    path = "libpcap's pcap_dump" if "pcap_dump" in request.node.name else "podcap_chunk_handler"
    assert f"per-packet path: {path}" in agent.log()
    warm_up(node)
    count = 3000
    r = podcap(address, "start", "-n", node.namespace, "rx-0", "rx-1", "rx-2", "--filter", f"udp port {PORT}")
    cid = capture_id(r)
    wait_capturing(address, cid, 3)
    sender = node.pod("sender")
    receivers = node.pods[1:]
    done = node.exec(sender, [sys.executable, SENDER, str(PORT), str(count), *[p.ip for p in receivers]])
    assert done.returncode == 0, done.stderr
    # Stop at once: packets still in the kernel's current ring block must be drained, not lost.
    st = json.loads(podcap(address, "stop", cid, "-o", "json").stdout)
    assert st["state"] == "done"
    out = os.path.join(tmp_path, "out")
    podcap(address, "get", cid, "-o", out)
    for d, rx in enumerate(receivers):
        got = udp_payloads(os.path.join(out, node.namespace, rx.name + ".pcap"))
        assert [g[1] for g in got] == list(range(count)), f"{rx.name}: missing, duplicated or reordered packets"
        assert {g[0] for g in got} == {d}, "packets of another pod in this pod's file"
        for _, seq, wirelen, src, dst in got:
            assert wirelen == 14 + 20 + 8 + 17 + seq % 200
            assert src == bytes(map(int, sender.ip.split(".")))
            assert dst == bytes(map(int, rx.ip.split(".")))
        pod_status = next(p for p in st["pods"] if p["pod"]["name"] == rx.name)
        assert int(pod_status["packets"]) == count
        assert int(pod_status["kernel"]["dropped"]) == 0
    assert not os.path.exists(os.path.join(out, node.namespace, "sender.pcap"))
    # Captured packets are readable by the collector's user only.
    for d, _dirs, files in os.walk(os.path.join(collector[1], "captures", cid)):
        assert os.stat(d).st_mode & 0o077 == 0, d
        for f in files:
            assert os.stat(os.path.join(d, f)).st_mode & 0o077 == 0, f


def test_max_packets_and_snaplen(collector: tuple[str, str, Proc], node: DemoNode, agent: Proc,
                                 tmp_path: str) -> None:
    address = collector[0]
    warm_up(node)
    r = podcap(address, "start", "-n", node.namespace, "rx-0", "rx-1", "--filter", f"udp port {PORT}",
               "--max-packets", "1234", "--snaplen", "50")
    cid = capture_id(r)
    wait_capturing(address, cid, 2)
    rx = node.pods[1:3]
    node.exec(node.pod("sender"), [sys.executable, SENDER, str(PORT), "1000", *[p.ip for p in rx]])
    st = wait_state(address, cid, {"done"})
    assert st["state"] == "done" and st["end_reason"] == "max-packets reached", st
    out = os.path.join(tmp_path, "out")
    podcap(address, "get", cid, "-o", out)
    total = 0
    for p in rx:
        fmt, recs = read_file(os.path.join(out, node.namespace, p.name + ".pcap"))
        assert fmt.snaplen == 50
        assert all(r.caplen == 50 < r.wirelen for r in recs)
        total += len(recs)
    assert total == 1234


def test_max_bytes_never_exceeded(collector: tuple[str, str, Proc], node: DemoNode, agent: Proc,
                                  tmp_path: str) -> None:
    address = collector[0]
    warm_up(node)
    limit = 50_000
    cid = capture_id(podcap(address, "start", "-n", node.namespace, "rx-0", "rx-1", "--max-bytes", str(limit)))
    wait_capturing(address, cid, 2)
    node.exec(node.pod("sender"), [sys.executable, SENDER, str(PORT), "1000", *[p.ip for p in node.pods[1:3]]])
    st = wait_state(address, cid, {"done"})
    assert st["end_reason"] == "max-bytes reached", st
    data_dir = collector[1]
    on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(data_dir, "captures", cid))
                  for f in fs if f.endswith(".pcap"))  # the segments (gaps.tsv beside them says what was cut)
    assert limit - 300 < on_disk <= limit
    assert int(st["bytes"]) == on_disk
    for p in st["pods"]:  # what came past the limit is counted, not lost
        assert int(p["unaccounted"]) == 0, p


def test_bad_input_is_one_line_nonzero_and_starts_nothing(collector: tuple[str, str, Proc], node: DemoNode,
                                                          agent: Proc) -> None:
    address = collector[0]
    before = json.loads(podcap(address, "list", "-o", "json").stdout)
    cases = [
        (["-n", node.namespace, "--filter", "tcp port eighty"], "invalid filter"),
        (["-n", node.namespace, "no-such-pod"], "rx-0"),
        (["-n", "no-such-namespace"], node.namespace),
        (["-n", "../etc"], "invalid namespace"),
        (["-n", node.namespace, "Bad_Name"], "invalid pod name"),
        (["-n", node.namespace, "-l", "app in (x"], "selector"),
    ]
    for args, needle in cases:
        r = podcap(address, "start", *args, check=False)
        assert r.returncode != 0, args
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, r.stderr)
    after = json.loads(podcap(address, "list", "-o", "json").stdout)
    assert len(after) == len(before)


def test_unreachable_collector_is_a_clear_error() -> None:
    r = podcap("127.0.0.1:1", "list", check=False, timeout=60)
    assert r.returncode == 1 and "cannot reach the collector" in r.stderr


def test_pod_inside_netns_capture_and_duration(collector: tuple[str, str, Proc], node: DemoNode, agent: Proc,
                                               tmp_path: str) -> None:
    """--interface eth0 opens the handle inside the pod's namespace; --duration ends the capture by itself."""
    address = collector[0]
    warm_up(node)
    cid = capture_id(podcap(address, "start", "-n", node.namespace, "rx-2", "--interface", "eth0",
                            "--filter", f"udp port {PORT}", "--duration", "3"))
    wait_capturing(address, cid, 1)
    node.exec(node.pod("sender"), [sys.executable, SENDER, str(PORT), "200", node.pod("rx-2").ip])
    st = wait_state(address, cid, {"done"}, timeout=20)
    assert st["end_reason"] == "duration reached"
    assert "eth0 in" in st["pods"][0]["interface"]
    out = os.path.join(tmp_path, "out")
    podcap(address, "get", cid, "-o", out)
    assert [g[1] for g in udp_payloads(os.path.join(out, node.namespace, "rx-2.pcap"))] == list(range(200))


def test_collector_sigterm_is_clean(collector: tuple[str, str, Proc]) -> None:
    assert collector[2].stop() == 0


def test_interface_all_with_loopback_traffic_stops_with_nothing_unread(
    collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, tmp_path: str
) -> None:
    """On the "any" device libpcap discards the outgoing copy of every loopback packet after the kernel counted
    it; a clean stop must not report those as "unread" (issue 21: a quiet pod's clean stop showed `unread 6`)."""
    address = collector[0]
    cid = capture_id(podcap(address, "start", "-n", node.namespace, "rx-0", "--interface", "all"))
    wait_capturing(address, cid, 1)
    node.exec(node.pod("rx-0"), ["ping", "-c", "3", "-i", "0.2", "127.0.0.1"])
    podcap(address, "stop", cid)
    st = wait_state(address, cid, {"done"})
    pod = st["pods"][0]
    assert pod["state"] == "done" and not any(pod["drops"].values()), pod
    out = os.path.join(tmp_path, "out")
    podcap(address, "get", cid, "-o", out)
    _, recs = read_file(os.path.join(out, node.namespace, "rx-0.pcap"))
    assert len(recs) == int(pod["packets"]) >= 6  # three echo requests and three replies, once each
    assert int(pod["kernel"]["received"]) == len(recs) and "unread" not in agent.log()


def test_agent_sigterm_during_a_stop_exits_cleanly_and_soon(
    collector: tuple[str, str, Proc], node: DemoNode, agent: Proc
) -> None:
    """SIGTERM while a capture is stopping: no traceback, and the agent exits well within a pod's grace period
    (issue 21: `cannot schedule new futures after interpreter shutdown` and 10-20 s)."""
    address = collector[0]
    cid = capture_id(podcap(address, "start", "-n", node.namespace))
    wait_capturing(address, cid, len(node.pods))
    podcap(address, "stop", cid)
    started = time.monotonic()
    assert agent.stop() == 0
    assert time.monotonic() - started < 8, "agent took too long to exit"
    assert "Traceback" not in agent.log(), agent.log()
