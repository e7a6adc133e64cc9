"""Realistic traffic shapes through real processes on real veths (issue 21): an HTTP server in one netns pod, curl
downloads from another, GSO/GRO left on (the veth default) so libpcap sees frames of up to 64 KiB.

Each shape runs with a collector, an agent (``--pod-source netns``) and a ``podcap start`` of both pods, beside a
``tcpdump -w`` on each pod's host veth in the same run (started before podcap's capture, stopped after it, with the
ring podcap's handle gets). Everything is judged by parsing stored files (``podcap get -o DIR`` through the CLI,
and tcpdump's files), never by counters alone:

- per pod, the TCP + UDP payload podcap stored is at least MIN_PAYLOAD_RATIO of tcpdump's (0.95; the issue's 0.99
  is p10's target), and no more than it when tcpdump
  dropped nothing (more would be data stored twice, e.g. re-sent after a reconnect);
- per pod, once the capture is stopped: packets parsed from the files + kernel drops + every podcap drop by cause
  (+ retention's) == what the kernel received, ``unaccounted`` is 0 and the counters are final;
- the shape was exercised: tcpdump saw every download's bytes, frames past 9000 bytes reached podcap's files (GSO),
  the MTU / IPv6 / UDP the shape asks for is on the wire;
- afterwards a second capture on the same node starts and stores packets: the node did not lose its pods (issue
  21's agent wedged for good, re-sending a chunk larger than gRPC's 16 MiB message limit after every reconnect).

Shapes: bulk (3 × 30 MiB, the issue's), MTU 9000 on both veth ends and the bridge, 8 parallel downloads, UDP of
random sizes (60..9000, fragments included) interleaved with rate-limited bulk TCP, IPv6.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from podcap.agent.capture.settings import EngineSettings, auto_ring_bytes
from podcap.collector.demo.node import DemoNode, DemoPod
from podcap.drops import CAUSES
from tests.conftest import Proc, podcap
from tests.integration.conftest import Status, capture_id, capturing, done, wait_status
from tests.traffic import (
    PayloadStats,
    Tcpdump,
    add_ipv6,
    curl_argv,
    http_server_argv,
    link_mtu,
    payload_stats,
    set_mtu,
    udp_mix_argv,
    udp_sink_argv,
    url,
    write_random_file,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

MIB = 1 << 20
# Issue 21 asks 0.99 of tcpdump's payload (p10 in `make bench` reports the ratio against that target, still missed
# under sustained bulk on 2 cores: see tests/bench/NOTES.md). Here, on a CI machine that also runs the collector and
# the traffic, a shape lands at 0.986-1.0 run to run; below 0.95 is a regression (before issue 21's fix: 0.39-0.91,
# and wedged sessions).
MIN_PAYLOAD_RATIO = 0.95
# What the agent gives each of two pods of a capture (its auto ring): each tcpdump's -B too.
RING = auto_ring_bytes(EngineSettings().ring_budget_bytes, 2)


@dataclass(frozen=True)
class Shape:
    id: str
    file_mib: int = 30
    downloads: int = 3  # one after another, per client
    parallel: int = 1  # clients downloading at once
    mtu: int = 1500
    ipv6: bool = False
    udp_datagrams: int = 0  # UDP of random sizes sent while the downloads run
    limit_rate: str = ""  # curl --limit-rate, so that the downloads last long enough to interleave with the UDP


SHAPES = [
    Shape("bulk"),
    Shape("mtu9000", downloads=2, mtu=9000),
    Shape("parallel8", file_mib=8, downloads=1, parallel=8),
    Shape("udp-mix", downloads=2, udp_datagrams=6000, limit_rate="50M"),
    Shape("ipv6", downloads=2, ipv6=True),
]


@pytest.fixture
def agent_args(tmp_path: str) -> tuple[str, ...]:
    """The agent as deploy/base runs it: a 64 MiB memory buffer, then a 1 GiB spool on the node's disk (a burst
    the collector cannot absorb at once waits there; without it a 30 MiB download at veth speed overflows the
    memory buffer and loses a third of its packets, counted as buffer_full)."""
    return ("--spool-dir", os.path.join(str(tmp_path), "spool"), "--spool-bytes", str(1 << 30))


@pytest.fixture
def node_pods() -> list[str]:
    return ["web", "client"]


def timed(timings: dict[str, float], what: str, t0: float) -> float:
    now = time.monotonic()
    timings[what] = round(now - t0, 2)
    return now


def start_web(node: DemoNode, web: DemoPod, ip: str, www: str, client: DemoPod, probe: str) -> None:
    """The HTTP server in ``web``, answering (probed from ``client``) before this returns."""
    node.spawn(web, http_server_argv(sys.executable, www, ip), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while node.exec(client, ["curl", "-sS", "-o", "/dev/null", "--max-time", "2", probe], timeout=10).returncode:
        assert time.monotonic() < deadline, f"HTTP server in {web.name} never answered {probe}"
        time.sleep(0.1)


def download(node: DemoNode, client: DemoPod, shape: Shape, target: str, size: int) -> None:
    """``shape.parallel`` clients at once, each downloading ``shape.downloads`` times; every byte arrives."""
    script = "; ".join([shlex.join(curl_argv(target, limit_rate=shape.limit_rate))] * shape.downloads)
    procs = [node.spawn(client, ["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(shape.parallel)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out.split() == [str(size).encode()] * shape.downloads, (out, err)


def sessions(agent: Proc) -> str:
    """The agent's log lines about its collector sessions (issue 21: one ended every few seconds)."""
    return "\n".join(line for line in agent.log().splitlines() if "session" in line)[-4000:]


def accounting_problems(st: Status, parsed: dict[str, PayloadStats]) -> list[str]:
    """Per pod, once stopped: what the files hold + every drop == what the kernel received, exactly, with final
    counters. Returns what does not hold."""
    problems = []
    for p in st["pods"]:
        name, kernel, drops = p["pod"]["name"], p["kernel"], p["drops"]
        if not p.get("final", False):
            problems.append(f"{name}: counters not final after the capture ended")
        lost = int(kernel.get("dropped", 0)) + sum(int(drops.get(c, 0)) for c in CAUSES)
        stored = parsed[name].frames
        if stored + lost + int(p.get("retired_packets", 0)) != int(kernel["received"]):
            problems.append(f"{name}: {stored} stored (parsed) + {lost} dropped != {kernel['received']} received")
        if int(p.get("unaccounted", 0)) != 0 or int(p.get("packets", 0)) != stored:
            problems.append(f"{name}: status says {p.get('packets')} packets, {p.get('unaccounted')} unaccounted; "
                            f"{stored} parsed")
    return problems


def second_capture(address: str, node: DemoNode, out: str) -> None:
    """A new capture on the same node starts and stores packets (pings both ways): the node kept its pods."""
    web, client = node.pod("web"), node.pod("client")
    cid = capture_id(podcap(address, "start", "-n", node.namespace, "web", "client"))
    wait_status(address, cid, capturing(2), timeout=20, what="capturing (second capture)")
    r = node.exec(client, ["ping", "-c", "5", "-i", "0.1", "-W", "2", web.ip], timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    podcap(address, "stop", cid)
    wait_status(address, cid, done, timeout=30, what="done (second capture)")
    podcap(address, "get", cid, "-o", out)
    for name in ("web", "client"):
        frames = payload_stats(os.path.join(out, node.namespace, f"{name}.pcap")).frames
        assert frames >= 10, f"second capture: {frames} frames stored for {name} (10 pings sent through it)"


@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
def test_traffic_shape_stored_as_tcpdump_sees_it(shape: Shape, collector: tuple[str, str, Proc], node: DemoNode,
                                                  netns_agent: Proc, tmp_path: str) -> None:
    address, tmp = collector[0], str(tmp_path)
    timings: dict[str, float] = {}
    t = time.monotonic()
    web, client = node.pod("web"), node.pod("client")
    pods = [web, client]
    if shape.mtu != 1500:
        set_mtu(node.bridge, pods, shape.mtu)
        assert {link_mtu(p.host_veth) for p in pods} | {link_mtu("eth0", p.netns) for p in pods} | {
            link_mtu(node.bridge)} == {shape.mtu}
    ip = {p.name: p.ip for p in pods}
    if shape.ipv6:
        ip = add_ipv6(pods, f"fd00:213:{node.subnet_octet:x}::")
    www = os.path.join(tmp, "www")
    os.mkdir(www)
    size = shape.file_mib * MIB
    write_random_file(os.path.join(www, "big.bin"), size)
    start_web(node, web, ip["web"], www, client, url(ip["web"], ""))
    if shape.udp_datagrams:
        node.spawn(web, udp_sink_argv(sys.executable, ip["web"], seconds=60))
    t = timed(timings, "setup", t)

    dumps = {p.name: Tcpdump(p.host_veth, os.path.join(tmp, f"tcpdump-{p.name}.pcap"),
                             os.path.join(tmp, f"tcpdump-{p.name}.log"), buffer_bytes=RING) for p in pods}
    try:
        for d in dumps.values():
            d.wait_listening()
        cid = capture_id(podcap(address, "start", "-n", node.namespace, "web", "client"))
        wait_status(address, cid, capturing(2), timeout=20, what="capturing")
        t = timed(timings, "start", t)
        udp = None
        if shape.udp_datagrams:
            udp = node.spawn(client, udp_mix_argv(sys.executable, ip["web"], count=shape.udp_datagrams,
                                                  seconds=1.5), stdout=subprocess.PIPE)
        download(node, client, shape, url(ip["web"], "big.bin"), size)
        udp_sent = 0
        if udp is not None:
            out, _ = udp.communicate(timeout=30)
            fields = out.split()
            assert udp.returncode == 0 and fields[:1] == [b"SENT"], out
            udp_sent = int(fields[2])
        t = timed(timings, "traffic", t)
        time.sleep(0.5)
        podcap(address, "stop", cid)
        try:
            st = wait_status(address, cid, done, timeout=45, what="done after the stop")
        except AssertionError as e:
            raise AssertionError(f"{e}\nagent's sessions:\n{sessions(netns_agent)}") from None
        t = timed(timings, "stop", t)
    finally:
        for d in dumps.values():
            d.stop()
    out_dir = os.path.join(tmp, "out")
    podcap(address, "get", cid, "-o", out_dir, timeout=120)
    t = timed(timings, "get", t)
    ours = {p.name: payload_stats(os.path.join(out_dir, node.namespace, f"{p.name}.pcap")) for p in pods}
    theirs = {p.name: payload_stats(dumps[p.name].path) for p in pods}
    t = timed(timings, "parse", t)
    summary = {n: {"podcap": vars(ours[n]), "tcpdump": vars(theirs[n]), "tcpdump_dropped": dumps[n].dropped}
               for n in ours}
    print(json.dumps({"shape": shape.id, "summary": summary, "pods": st["pods"]}, default=str)[:6000])

    # First, that the shape happened (else nothing below means anything): a lossless tcpdump saw every byte that
    # arrived (each download arrived whole, checked above), and what the shape asks for is on the wire.
    for name in ("web", "client"):
        mine, base = ours[name], theirs[name]
        if dumps[name].dropped == 0:
            downloaded = shape.downloads * shape.parallel * size
            assert base.tcp_from_port.get(8000, 0) >= downloaded, f"{name}: tcpdump saw {base.tcp_from_port}"
            assert base.udp_payload >= udp_sent, f"{name}: tcpdump saw {base.udp_payload} of {udp_sent} UDP bytes"
        assert base.over_9000 > 0, f"{name}: no frame past 9000 bytes on the veth (max {base.max_frame}): GSO off?"
        if shape.mtu > 1500:
            assert base.max_frame > 1514, base
        if shape.ipv6:
            assert base.ipv6_frames > 0.9 * base.frames, base
        assert mine.truncated == 0 == base.truncated
    # Then every verdict, each one reported (a failure lists them all).
    problems = []
    if "RESOURCE_EXHAUSTED" in netns_agent.log():
        problems.append("the agent's session broke on a message too large:\n" + sessions(netns_agent))
    for name in ("web", "client"):
        mine, base = ours[name], theirs[name]
        if mine.over_9000 == 0:
            problems.append(f"{name}: no frame past 9000 bytes stored (max {mine.max_frame})")
        if shape.udp_datagrams and mine.udp_payload < 0.99 * udp_sent:
            problems.append(f"{name}: {mine.udp_payload} of {udp_sent} UDP payload bytes stored")
        # Stored as tcpdump sees it: nothing missing, nothing twice.
        ratio = mine.payload / base.payload
        if ratio < MIN_PAYLOAD_RATIO:
            problems.append(f"{name}: podcap stored {ratio:.4f} of tcpdump's payload (podcap {vars(mine)}, tcpdump "
                            f"{vars(base)}, tcpdump dropped {dumps[name].dropped})")
        if dumps[name].dropped == 0 and mine.payload > base.payload:
            problems.append(f"{name}: podcap stored {mine.payload - base.payload} payload bytes more than a lossless "
                            "tcpdump")
    problems += accounting_problems(st, ours)
    for path in [d.path for d in dumps.values()] + [os.path.join(out_dir, node.namespace, f"{p.name}.pcap")
                                                    for p in pods]:
        os.unlink(path)  # ~100 MB each
    try:
        second_capture(address, node, os.path.join(tmp, "out2"))
    except AssertionError as e:
        problems.append(f"the node lost its pods: {e}")
    timed(timings, "second capture", t)
    print(json.dumps({"shape": shape.id, "timings_s": timings}))
    assert not problems, "\n".join(problems)
