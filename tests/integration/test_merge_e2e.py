"""``podcap get ID --merge`` end to end: a podcap-collector and a podcap-agent process over gRPC on loopback, three
netns pods receiving sequence-numbered UDP, the CLI downloading and merging. tshark must see the three pods as
the interfaces of one file with every packet, and the blocks must carry the pods' metadata and counters."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter

import pytest

from podcap.collector.demo.node import DemoNode
from podcap.formats.pcapng import ISB_IFDROP, ISB_USRDELIV
from tests.conftest import Proc, podcap
from tests.integration.helpers import PORT, capture_udp, seq_datagram
from tests.pcapng_reader import read_pcapng

pytestmark = pytest.mark.root

RECEIVERS = ["rx-0", "rx-1", "rx-2"]  # the pods of the shared `node` fixture, besides "sender"
COUNT = 1500


def test_merged_pcapng_has_every_pod_as_an_interface_with_every_packet(
    collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, tmp_path: str
) -> None:
    tshark = shutil.which("tshark")
    assert tshark, "tshark is needed to check the merged file (apt-get install tshark)"
    address = collector[0]
    cid, st = capture_udp(address, node, RECEIVERS, COUNT)
    receivers = [node.pod(name) for name in RECEIVERS]
    assert st["state"] == "done"

    merged = os.path.join(tmp_path, "out.pcapng")
    r = podcap(address, "get", cid, "--merge", merged)
    assert f"{COUNT * len(RECEIVERS)} packets from {len(RECEIVERS)} pod(s)" in r.stdout

    t = subprocess.run([tshark, "-r", merged, "-T", "fields", "-e", "frame.interface_name", "-e", "frame.time_epoch",
                        "-e", "ip.dst"], capture_output=True, text=True, timeout=120)
    assert t.returncode == 0, t.stderr
    assert [line for line in t.stderr.splitlines() if not line.startswith("Running as user")] == [], t.stderr
    rows = [line.split("\t") for line in t.stdout.splitlines()]
    names = {f"{node.namespace}/{p.name}": p for p in receivers}
    assert Counter(row[0] for row in rows) == {name: COUNT for name in names}
    assert all(row[2] == names[row[0]].ip for row in rows), "a packet is on another pod's interface"
    times = [int(row[1].replace(".", "")) for row in rows]
    assert times == sorted(times), "merged packets are not in time order"

    f = read_pcapng(merged)
    assert f.comments[0] == f"podcap capture {cid}"
    assert sorted(i.name for i in f.interfaces) == sorted(names)
    for iface_id, iface in enumerate(f.interfaces):
        d = RECEIVERS.index(iface.name.split("/")[1])
        assert iface.filter == f"udp port {PORT}" and iface.tsresol in (6, 9)
        assert f"node node-{node.tag}" in iface.description and "uid " in iface.description
        seqs = [seq_datagram(p.data) for p in f.packets if p.interface_id == iface_id]
        assert seqs == [(d, s) for s in range(COUNT)], f"{iface.name}: missing, duplicated or reordered packets"
    assert sorted(s.interface_id for s in f.stats) == list(range(len(RECEIVERS)))
    for s in f.stats:
        assert s.counter(ISB_USRDELIV) == COUNT and s.counter(ISB_IFDROP) == 0

    # The same capture as one pcapng file per pod.
    out_dir = os.path.join(tmp_path, "per-pod")
    podcap(address, "get", cid, "rx-1", "-o", out_dir, "--format", "pcapng")
    assert os.listdir(os.path.join(out_dir, node.namespace)) == ["rx-1.pcapng"]
    one = read_pcapng(os.path.join(out_dir, node.namespace, "rx-1.pcapng"))
    assert [i.name for i in one.interfaces] == [f"{node.namespace}/rx-1"] and len(one.packets) == COUNT


def test_merge_of_an_unknown_capture_is_one_line_and_writes_nothing(collector: tuple[str, str, Proc],
                                                                    tmp_path: str) -> None:
    merged = os.path.join(tmp_path, "x.pcapng")
    r = podcap(collector[0], "get", "nosuchcapture", "--merge", merged, check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "podcap list" in r.stderr
    assert not any(n.startswith(("x.pcapng", ".podcap-merge")) for n in os.listdir(tmp_path))
