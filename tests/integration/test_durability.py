"""Nothing captured is lost or duplicated when the collector is SIGKILLed, restarted, or its disk fills up, and an
agent restart shows up as a gap. Real processes, real signals; packets checked by parsing the stored files."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest

from podcap.collector.demo.node import DemoNode
from podcap.formats.pcap import read_file
from tests.conftest import podcap
from tests.integration.cluster import Cluster, all_capturing, check_exactly_once, send
from tests.integration.helpers import PORT, capture_id, small_tmpfs, udp_payloads

pytestmark = pytest.mark.root

def test_collector_sigkill_mid_capture_loses_and_duplicates_nothing(cluster: Cluster) -> None:
    c = cluster
    c.up()
    pods = ["rx-0", "rx-1", "rx-2"]
    cid = capture_id(podcap(c.address, "start", "-n", c.node.namespace, *pods, "--filter", f"udp port {PORT}"))
    c.wait(cid, all_capturing(3))
    count = 3000
    sender = send(c, count, 4.0, pods)
    time.sleep(1.5)
    assert c.collector is not None
    c.collector.stop(signal.SIGKILL)
    time.sleep(1.0)
    c.start_collector()  # same port, same data dir
    assert sender.wait(timeout=30) == 0
    c.wait(cid, all_capturing(3))
    time.sleep(1.0)
    st = json.loads(podcap(c.address, "stop", cid, "-o", "json").stdout)
    assert st["state"] == "done"
    check_exactly_once(c, cid, pods, count)
    for p in st["pods"]:
        assert int(p["agent_dropped_packets"]) == 0 and int(p["kernel"]["dropped"]) == 0


def test_collector_restart_spool_drains(cluster: Cluster) -> None:
    """The agent's connection is cut (graceful collector restart on the same port) while it keeps capturing."""
    c = cluster
    c.up()
    cid = capture_id(podcap(c.address, "start", "-n", c.node.namespace, "rx-0", "--filter", f"udp port {PORT}"))
    c.wait(cid, all_capturing(1))
    sender = send(c, 2000, 3.0, ["rx-0"])
    time.sleep(0.8)
    assert c.collector is not None
    c.collector.stop(signal.SIGTERM)
    time.sleep(1.5)  # the agent spools meanwhile
    c.start_collector()
    assert sender.wait(timeout=30) == 0
    c.wait(cid, all_capturing(1))
    time.sleep(1.0)
    podcap(c.address, "stop", cid)
    check_exactly_once(c, cid, ["rx-0"], 2000)


def test_agent_restart_resumes_and_reports_the_gap(cluster: Cluster) -> None:
    c = cluster
    c.up(warm=False)
    cid = capture_id(podcap(c.address, "start", "-n", c.node.namespace, "rx-0", "rx-1"))
    c.wait(cid, all_capturing(2))
    assert c.agent is not None
    c.agent.stop(signal.SIGKILL)
    c.wait(cid, lambda st: all(p["state"] == "no-agent" for p in st["pods"]), timeout=10)
    t0 = time.monotonic()
    c.start_agent()
    st = c.wait(cid, lambda st: all(p["state"] == "capturing" and p.get("reattachments") == 1 for p in st["pods"]),
                timeout=10)
    assert time.monotonic() - t0 < 5, "capture did not resume within 5 s of the agent's return"
    for p in st["pods"]:
        assert "no capture for" in p["message"], p


@pytest.fixture
def small_disk(tmp_path: str) -> Iterator[str]:
    with small_tmpfs(tmp_path, "3m") as mnt:
        yield mnt


def test_full_disk_pauses_and_resumes_without_corrupt_files(tmp_path: str, small_disk: str) -> None:
    node = DemoNode()
    node.create(["sender", "rx-0"])
    c = Cluster(str(tmp_path), node, data_dir=os.path.join(small_disk, "data"))
    try:
        c.up()
        filler = os.path.join(small_disk, "filler")
        with open(filler, "wb") as f:  # leave well under a megabyte free
            f.write(b"\0" * (2 << 20) + b"\0" * (512 << 10))
        cid = capture_id(podcap(c.address, "start", "-n", node.namespace, "rx-0", "--filter", f"udp port {PORT}",
                                "--snaplen", "1500"))
        c.wait(cid, all_capturing(1))
        count = 6000  # ~1.1 MB stored: more than fits
        sender = send(c, count, 3.0, ["rx-0"])
        st = c.wait(cid, lambda st: bool(st.get("paused")), timeout=20)
        assert "full" in str(st["paused"])
        assert sender.wait(timeout=30) == 0
        os.unlink(filler)  # space returns
        c.wait(cid, lambda st: not st.get("paused") and int(st["packets"]) >= count, timeout=30)
        podcap(c.address, "stop", cid)
        for d, _, files in os.walk(os.path.join(c.data, "captures", cid)):
            for f in files:
                read_file(os.path.join(d, f))  # every segment parses to the last byte
        check_exactly_once(c, cid, ["rx-0"], count)
    finally:
        c.close()
        node.destroy()


def test_duration_that_ends_while_the_collector_is_down_closes_correctly(cluster: Cluster) -> None:
    c = cluster
    c.up()
    cid = capture_id(podcap(c.address, "start", "-n", c.node.namespace, "rx-0", "--filter", f"udp port {PORT}",
                            "--duration", "3"))
    created = int(c.status(cid)["created_unix_ns"])  # type: ignore[call-overload]
    c.wait(cid, all_capturing(1))
    sender = send(c, 2500, 5.0, ["rx-0"])
    time.sleep(1.0)
    assert c.collector is not None
    c.collector.stop(signal.SIGKILL)
    assert sender.wait(timeout=30) == 0  # the deadline passes while the collector is down
    c.start_collector()
    st = c.wait(cid, lambda st: st["state"] == "done", timeout=30)
    assert st["end_reason"] == "duration reached"
    out = os.path.join(c.tmp, "out")
    podcap(c.address, "get", cid, "-o", out)
    _, recs = read_file(os.path.join(out, c.node.namespace, "rx-0.pcap"))
    got = udp_payloads(os.path.join(out, c.node.namespace, "rx-0.pcap"))
    seqs = [g[1] for g in got]
    assert seqs == list(range(len(seqs))), "packets from before the crash and from the outage are all there"
    assert 1000 < len(seqs) < 2500  # ~3 s of the 5 s of traffic
    assert max(r.ts_ns for r in recs) <= created + 3_000_000_000  # nothing after the deadline is kept


def segment_bytes(directory: str) -> int:
    """Bytes of a pod's segment files (and of one being created), read while the collector renames and deletes
    them: a file gone between the listing and its stat is simply not there any more."""
    total = 0
    try:
        names = set(os.listdir(directory))
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.endswith((".pcap", ".pcap.tmp")):
            continue
        for candidate in (name, name.removesuffix(".tmp")):  # a new segment renamed meanwhile is counted as such
            if candidate != name and candidate in names:
                break
            try:
                total += os.stat(os.path.join(directory, candidate)).st_size
                break
            except FileNotFoundError:
                continue  # renamed (try its final name) or deleted by retention
    return total


def test_retention_keeps_each_pod_under_its_cap_through_many_rotations(cluster: Cluster) -> None:
    """A flight recorder: 64 KiB segments, at most 256 KiB kept per pod, ~1 MB of traffic per pod."""
    c = cluster
    c.up()
    pods = ["rx-0", "rx-1"]
    keep = 256 << 10
    cid = capture_id(podcap(c.address, "start", "-n", c.node.namespace, *pods, "--filter", f"udp port {PORT}",
                            "--keep-bytes", "256KiB", "--segment-size", "64KiB"))
    c.wait(cid, all_capturing(2))
    count = 6000
    sender = send(c, count, 3.0, pods)
    peak = 0
    while sender.poll() is None:  # the cap holds all along, not only at the end
        for p in pods:
            peak = max(peak, segment_bytes(os.path.join(c.data, "captures", cid, c.node.namespace, p)))
        time.sleep(0.05)
    st = json.loads(podcap(c.address, "stop", cid, "-o", "json").stdout)
    out = os.path.join(c.tmp, "out")
    podcap(c.address, "get", cid, "-o", out)
    for p in st["pods"]:
        assert int(p["bytes"]) <= keep and int(p["retired_bytes"]) > 2 * keep, p  # ~15 segments retired
        assert int(p["packets"]) + int(p["retired_packets"]) == count
        seqs = [g[1] for g in udp_payloads(os.path.join(out, c.node.namespace, p["pod"]["name"] + ".pcap"))]
        assert seqs == list(range(count - len(seqs), count)), "what is kept is the newest, contiguous"
    assert peak <= keep + 4 * (64 << 10)  # the open segment and a chunk in flight may exceed the cap briefly
