"""Several busy pods at once while the agent's upload buffer overflows (the collector freezes mid-burst): every
packet the kernel delivered is stored or counted by cause, per pod and exactly; the loss is shared between the
pods; no gap stops a stream. Real agent and collector processes, real veths on a bridge, sequence-numbered frames
flooded to every pod; everything checked by parsing the stored files (per-pod pcaps, the merged pcapng, gaps.tsv).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from podcap.collector.demo.node import DemoNode
from podcap.collector.storage.gaps import read_gaps
from podcap.drops import CAUSES
from podcap.formats.pcap import read_file
from podcap.formats.pcapng import ISB_IFDROP, ISB_USRDELIV
from tests.conftest import podcap
from tests.integration.cluster import Cluster, all_capturing
from tests.integration.helpers import capture_id, udp_payloads
from tests.pcapng_reader import read_pcapng
from tests.s3.testbed import Testbed

pytestmark = pytest.mark.root

FLOOD = os.path.join(os.path.dirname(__file__), "flood_send.py")
SENDERS = 4
COUNT = 24_000  # frames per sender: each pod's veth sees SENDERS * COUNT
PPS = 8_000  # per sender: ~7 MB/s through each veth, ~28 MB/s in all, for 3 s
UPLOAD_BUFFER = 2 << 20  # the agent's memory for unacknowledged data (no spool): ~0.1 s of this traffic


def quiet_ipv6(node: DemoNode) -> None:
    """No IPv6 on the pods' links from now on: the only frames on a veth are the ones the test sends."""
    for pod in node.pods:
        node.exec(pod, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
        for link in (pod.host_veth, node.bridge):
            with open(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6", "w") as f:
                f.write("1")


@pytest.fixture(params=["local", "s3"])
def busy(request: pytest.FixtureRequest, tmp_path: str, s3_prefix: str) -> Iterator[tuple[Cluster, str]]:
    """Four pods, an agent with a small buffer, and a collector keeping captures on its disk (``local``) or archiving
    them to the S3 testbed's bucket while the burst goes on (``s3``: small segments, so many are archived)."""
    node = DemoNode()
    node.create([f"p{i}" for i in range(SENDERS)])
    c = Cluster(str(tmp_path), node)
    try:
        quiet_ipv6(node)
        if request.param == "s3":
            s3: Testbed = request.getfixturevalue("s3")
            c.start_collector("--storage", f"s3://{s3.bucket}/{s3_prefix}", "--s3-endpoint", s3.endpoint,
                              env=s3.env())
        else:
            c.start_collector()
        c.start_agent("--upload-buffer", str(UPLOAD_BUFFER))
        c.wait_pods()
        yield c, request.param
    finally:
        if c.collector is not None and c.collector.proc.poll() is None:
            os.kill(c.collector.proc.pid, signal.SIGCONT)
        c.close()
        node.destroy()


def test_busy_pods_every_packet_stored_or_counted_and_the_loss_shared(busy: tuple[Cluster, str]) -> None:
    c, storage = busy
    names = [p.name for p in c.node.pods]
    segments = ("--segment-size", "1MiB") if storage == "s3" else ()  # many segments archived during the burst
    cid = capture_id(podcap(c.address, "start", "-n", c.node.namespace, *names, *segments))
    c.wait(cid, all_capturing(SENDERS))
    assert c.collector is not None
    senders = [c.node.spawn(pod, [sys.executable, FLOOD, str(i), str(COUNT), str(PPS)], stdout=subprocess.PIPE)
               for i, pod in enumerate(c.node.pods)]
    time.sleep(0.7)
    os.kill(c.collector.proc.pid, signal.SIGSTOP)  # a collector that stops reading (say, its disk hangs)
    try:
        time.sleep(1.0)
    finally:
        os.kill(c.collector.proc.pid, signal.SIGCONT)
    for s in senders:
        out, _ = s.communicate(timeout=60)
        assert s.returncode == 0 and out.strip() == f"SENT {COUNT}".encode(), out
    time.sleep(1.0)
    podcap(c.address, "stop", cid)
    st = c.wait(cid, lambda st: st["state"] == "done", timeout=60)
    if storage == "s3":  # every segment goes to the bucket: what get returns below comes from there
        pod_dirs = [os.path.join(c.data, str(p["path"])) for p in st["pods"]]  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while any(n.endswith(".pcap") for d in pod_dirs for n in os.listdir(d)):
            assert time.monotonic() < deadline, [os.listdir(d) for d in pod_dirs]
            time.sleep(0.2)
    out = os.path.join(c.tmp, "out")
    podcap(c.address, "get", cid, "-o", out)
    merged = os.path.join(c.tmp, "all.pcapng")
    podcap(c.address, "get", cid, "--merge", merged)
    isb = {read_pcapng(merged).interfaces[s.interface_id].name: s for s in read_pcapng(merged).stats}

    stored: dict[str, int] = {}
    for p in st["pods"]:  # type: ignore[union-attr]
        name, drops, kernel = p["pod"]["name"], p["drops"], p["kernel"]
        path = os.path.join(out, c.node.namespace, f"{name}.pcap")
        records = read_file(path)[1]
        frames = udp_payloads(path)
        assert len(frames) == len(records), f"{name}: frames other than the test's were captured"
        stored[name] = len(records)
        lost = int(kernel["dropped"]) + sum(int(drops[cause]) for cause in CAUSES)
        # The accounting, exactly: what the kernel delivered is stored (parsed) or counted by cause.
        assert int(kernel["received"]) == SENDERS * COUNT, p
        assert len(records) + lost == int(kernel["received"]), p
        assert int(p["unaccounted"]) == 0 and int(p["packets"]) == len(records), p
        assert int(drops["buffer_full"]) > 0, f"{name}: the agent's buffer never overflowed; the test proves nothing"
        # Every sender's frames, in order, once each; what is missing is exactly what was counted.
        missing = 0
        for sender in range(SENDERS):
            seqs = [f[1] for f in frames if f[0] == sender]
            assert seqs == sorted(set(seqs)), f"{name}: frames of sender {sender} duplicated or out of order"
            assert seqs[-1] == COUNT - 1, f"{name}: sender {sender}'s stream stopped at a gap (last {seqs[-1]})"
            missing += COUNT - len(seqs)
        assert missing == lost, p
        # The stored capture says where it has holes, by cause: gaps.tsv next to the files, the pcapng's ISB.
        gaps: dict[str, int] = {}
        for row in read_gaps(os.path.join(c.data, str(p["path"]), "gaps.tsv")):
            gaps[row[3]] = gaps.get(row[3], 0) + row[2]
        assert gaps == {k: v for k, v in {"kernel": int(kernel["dropped"]), **{cause: int(drops[cause])
                                                                              for cause in CAUSES}}.items() if v}
        stats = isb[f"{c.node.namespace}/{name}"]
        assert (stats.counter(ISB_IFDROP), stats.counter(ISB_USRDELIV)) == (lost, len(records))
    # Fair: with equal traffic no pod keeps much less than another (never "whoever comes next loses everything").
    assert min(stored.values()) >= 0.6 * max(stored.values()), stored
    assert "arrived after" not in c.collector.log() and "rejected" not in c.collector.log()
    print(json.dumps({"stored": stored, "drops": {p["pod"]["name"]: p["drops"] for p in st["pods"]}}))
