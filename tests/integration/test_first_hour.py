"""A new user's first hour (issue 26), end to end: podcap-collector and podcap-agent processes, netns pods with
real UDP and HTTP between two captured pods, the podcap CLI as a user runs it, and tshark reading what it wrote.

- ``follow`` of both ends of a conversation is pcapng, one interface per pod, in time order, each packet once:
  tshark marks no TCP segment as a retransmission or duplicate (it does with ``--all-copies``, every copy kept);
  ``get --merge`` is the same view; the per-pod files keep every pod's own packets.
- Reads of pods the capture does not have, an empty window, a follow of an ended capture fail with one line; a
  read refused for its filter is audited as failed, and the audit's detail names pods and RFC 3339 times.
- ``stop`` says why each pod stopped as it says why the capture did, and a second ``stop`` says it had ended.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from podcap.collector.cli.client import CollectorClient, CollectorError
from podcap.collector.demo.node import DemoNode
from tests.conftest import Proc, podcap, tool
from tests.integration.helpers import PORT, SENDER, capture_id, wait_capturing, warm_up
from tests.pcapng_reader import read_pcapng

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark (apt install tshark)")]

HTTP_PORT = 8080
COUNT = 300
ANALYSIS = ("tcp.analysis.retransmission or tcp.analysis.fast_retransmission or tcp.analysis.duplicate_ack or "
            "tcp.analysis.keep_alive or tcp.analysis.out_of_order or tcp.analysis.spurious_retransmission")


def tshark_count(path: str, display_filter: str) -> int:
    r = subprocess.run(["tshark", "-r", path, "-Y", display_filter, "-T", "fields", "-e", "frame.number"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return len(r.stdout.split())


def one_line(r: subprocess.CompletedProcess[str], needle: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("podcap"), r.stderr
    assert needle in lines[0], lines[0]


def test_views_across_a_client_and_its_server_show_each_packet_once_in_time_order(
    collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, tmp_path: str
) -> None:
    address = collector[0]
    warm_up(node)
    client, server = node.pod("sender"), node.pod("rx-0")
    cid = capture_id(podcap(address, "start", f"{node.namespace}/sender", f"{node.namespace}/rx-0",
                            "--filter", f"udp port {PORT} or tcp port {HTTP_PORT}"))
    wait_capturing(address, cid, 2)
    views = {}
    for name, extra in (("one", []), ("all", ["--all-copies"])):
        out = open(os.path.join(tmp_path, f"follow-{name}.pcapng"), "wb")  # noqa: SIM115 (the child's stdout)
        views[name] = (subprocess.Popen([tool("podcap"), "--collector", address, "follow", cid, *extra], stdout=out,
                                        stderr=subprocess.PIPE, text=True), out)
    time.sleep(1)
    node.spawn(server, [sys.executable, "-m", "podcap.collector.demo.traffic", "serve", str(HTTP_PORT), "8"])
    time.sleep(0.5)
    node.exec(client, [sys.executable, "-m", "podcap.collector.demo.traffic", "client",
                       f"http://{server.ip}:{HTTP_PORT}/", server.ip, "3"], timeout=30)
    done = node.exec(client, [sys.executable, SENDER, str(PORT), str(COUNT), server.ip])
    assert done.returncode == 0, done.stderr
    time.sleep(3)  # the last chunks reach the collector (an agent sends a pod's chunk within 2 s)
    podcap(address, "stop", cid)
    stderr = {}
    for name, (proc, out) in views.items():
        _, stderr[name] = proc.communicate(timeout=60)
        out.close()
        assert proc.returncode == 0, stderr[name]
    st = json.loads(podcap(address, "status", cid, "-o", "json").stdout)
    stored = {p["pod"]["name"]: p["packets"] for p in st["pods"]}
    assert stored["sender"] > COUNT and stored["rx-0"] > COUNT  # both pods saw the conversation

    for name in ("one", "all"):
        path = os.path.join(tmp_path, f"follow-{name}.pcapng")
        f = read_pcapng(path)
        assert sorted(i.name for i in f.interfaces) == [f"{node.namespace}/rx-0", f"{node.namespace}/sender"]
        assert [p.ts_ns for p in f.packets] == sorted(p.ts_ns for p in f.packets), "time goes backwards"
    one, every = (os.path.join(tmp_path, f"follow-{n}.pcapng") for n in ("one", "all"))
    assert tshark_count(one, f"udp.dstport == {PORT}") == COUNT
    assert tshark_count(every, f"udp.dstport == {PORT}") == 2 * COUNT
    assert tshark_count(one, "tcp") > 20 and tshark_count(one, ANALYSIS) == 0
    assert tshark_count(every, ANALYSIS) > 0  # what the issue saw: each second copy looks like a retransmission
    assert "second sightings of packets seen on two pods left out" in stderr["one"]
    assert f"capture {cid} ended (stopped by user)" in stderr["one"]

    # SIGTERM (as `timeout` sends) ends a view as Ctrl+C does: what it held is written, the last line says so.
    path = os.path.join(tmp_path, "follow-term.pcapng")
    with open(path, "wb") as out:
        cid2 = capture_id(podcap(address, "start", f"{node.namespace}/rx-1"))
        proc = subprocess.Popen([tool("podcap"), "--collector", address, "follow", cid2], stdout=out,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    podcap(address, "stop", cid2)
    assert proc.returncode == 0 and "1 pod(s) followed" in err, err
    assert read_pcapng(path).interfaces  # a whole pcapng file

    merged = os.path.join(tmp_path, "merged.pcapng")
    r = podcap(address, "get", cid, "--merge", merged)
    assert "second sightings of packets seen on two pods left out" in r.stdout
    assert tshark_count(merged, f"udp.dstport == {PORT}") == COUNT and tshark_count(merged, ANALYSIS) == 0
    assert len(read_pcapng(merged).packets) == len(read_pcapng(one).packets)
    out_dir = os.path.join(tmp_path, "pods")
    podcap(address, "get", cid, "-o", out_dir)  # the per-pod truth: every pod its own packets
    for pod in ("sender", "rx-0"):
        assert tshark_count(os.path.join(out_dir, node.namespace, f"{pod}.pcap"), f"udp.dstport == {PORT}") == COUNT


def test_reads_that_cannot_hold_anything_fail_and_are_audited_as_such(
    collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, tmp_path: str
) -> None:
    address = collector[0]
    cid = capture_id(podcap(address, "start", "-n", node.namespace, "rx-0", "rx-1"))
    wait_capturing(address, cid, 2)
    out = os.path.join(tmp_path, "out")
    one_line(podcap(address, "follow", cid, "nosuchpod", check=False), f"capture {cid} has no pod nosuchpod")
    one_line(podcap(address, "get", cid, "nosuchpod", "-o", out, check=False), f"capture {cid} has no pod nosuchpod")
    one_line(podcap(address, "get", cid, "-o", out, "--since", "1m", "--until", "2m", check=False), "is after --until")
    one_line(podcap(address, "get", cid, "-o", out, "--filter", "tcp prt", check=False), "invalid filter 'tcp prt'")
    assert not os.path.exists(out)
    r = podcap(address, "get", cid, "rx-1", "-o", out, "--since", "2020-01-01T00:00:00Z")
    assert f"capture {cid} is still running: this is what it had stored at" in r.stderr

    st = json.loads(podcap(address, "stop", cid, "-o", "json").stdout)
    assert st["end_reason"] == "stopped by user"
    assert [p["message"] for p in st["pods"]] == ["stopped by user"] * 2, st["pods"]
    r = podcap(address, "stop", cid)
    assert f"capture {cid} had already ended (stopped by user, " in r.stderr
    one_line(podcap(address, "follow", cid, check=False), f"capture {cid} has ended (stopped by user)")

    # The collector refuses such reads itself (for any client of its API), and audits them as failed.
    with CollectorClient(address) as c:
        with pytest.raises(CollectorError, match="has no pod 'nosuchpod'"):
            list(c.download(cid, ["nosuchpod"]))
        with pytest.raises(CollectorError, match="is after --until"):
            list(c.download(cid, since_ns=2 * 10**18, until_ns=10**18))
        with pytest.raises(CollectorError, match="has ended"):
            list(c.follow(cid))

    records = json.loads(podcap(address, "audit", "--capture", cid, "-o", "json").stdout)
    reads = [(r["action"], r["result"], r["filter"], r["detail"]) for r in reversed(records)
             if r["action"] in ("download", "follow")]
    assert reads[0][:3] == ("download", "failed", "tcp prt") and "invalid filter" in reads[0][3]
    assert reads[1] == ("download", "allowed", "",
                        f"pods {node.namespace}/rx-1; from 2020-01-01T00:00:00.000Z to the end")
    assert reads[2] == ("download", "failed", "", f"capture {cid} has no pod 'nosuchpod' (its pods: "
                        f"{node.namespace}/rx-0, {node.namespace}/rx-1)")
    assert reads[3][:2] == ("download", "failed") and "2033-05-18T03:33:20.000Z is after --until" in reads[3][3]
    assert reads[4][:2] == ("follow", "failed") and "has ended (stopped by user)" in reads[4][3]
    table = podcap(address, "audit", "--capture", cid).stdout
    assert "tcp prt" in table and "failed" in table
