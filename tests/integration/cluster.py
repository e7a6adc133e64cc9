"""A restartable collector and one agent over a DemoNode as real processes (``Cluster``), a paced UDP sender, and
the exactly-once check of what ``podcap get`` returns: what the durability, busy-pod and object-storage tests share.
The ``cluster`` fixture (tests/integration/conftest.py) gives a test one over a node of four pods."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from podcap.collector.demo.node import DemoNode
from tests.conftest import Proc, free_port, podcap, start_proc, tool
from tests.integration.helpers import PORT, capture_id, udp_payloads, warm_up

PACED = os.path.join(os.path.dirname(__file__), "udp_send_paced.py")


class Cluster:
    """A collector (restartable on the same port and data dir) and one agent, over a DemoNode."""

    def __init__(self, tmp: str, node: DemoNode, data_dir: str | None = None) -> None:
        self.tmp = tmp
        self.node = node
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.data = data_dir or os.path.join(tmp, "data")
        self.collector: Proc | None = None
        self.agent: Proc | None = None
        self.runs = 0

    def start_collector(self, *extra: str, env: dict[str, str] | None = None) -> None:
        self.runs += 1
        self.collector = start_proc([tool("podcap-collector"), "--insecure", "--listen", self.address, "--data-dir",
                                     self.data, *extra],
                                    os.path.join(self.tmp, f"collector-{self.runs}.log"), env)
        deadline = time.monotonic() + 15
        while podcap(self.address, "list", check=False, timeout=30).returncode != 0:
            assert time.monotonic() < deadline, self.collector.log()
            time.sleep(0.1)

    def start_agent(self, *extra: str) -> None:
        self.runs += 1
        self.agent = start_proc([tool("podcap-agent"), "--insecure", "--collector", self.address,
                                 "--node", "node-" + self.node.tag, "--pod-source", "netns", *extra],
                                os.path.join(self.tmp, f"agent-{self.runs}.log"))

    def wait_pods(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            r = podcap(self.address, "start", "-n", self.node.namespace, "--max-packets", "1", "--duration", "1",
                       check=False)
            if r.returncode == 0:
                podcap(self.address, "stop", capture_id(r))
                return
            assert time.monotonic() < deadline, r.stderr
            time.sleep(0.2)

    def up(self, *, warm: bool = True) -> None:
        """Collector and agent running, the node's pods known to the collector, neighbours resolved."""
        self.start_collector()
        self.start_agent()
        self.wait_pods()
        if warm:
            warm_up(self.node)

    def status(self, cid: str) -> dict[str, object]:
        return json.loads(podcap(self.address, "status", cid, "-o", "json").stdout)

    def wait(self, cid: str, ok: object, timeout: float = 20) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(cid)
            if ok(st):  # type: ignore[operator]
                return st
            assert time.monotonic() < deadline, st
            time.sleep(0.1)

    def close(self) -> None:
        for p in (self.agent, self.collector):
            if p is not None:
                p.stop()


def all_capturing(n: int) -> object:
    return lambda st: sum(p["state"] == "capturing" for p in st["pods"]) == n


def send(c: Cluster, count: int, seconds: float, pods: list[str]) -> subprocess.Popen[bytes]:
    ips = [c.node.pod(p).ip for p in pods]
    return c.node.spawn(c.node.pod("sender"), [sys.executable, PACED, str(PORT), str(count), str(seconds), *ips],
                        cwd=os.path.dirname(PACED))


def check_exactly_once(c: Cluster, cid: str, pods: list[str], count: int) -> None:
    out = os.path.join(c.tmp, "out-" + cid)
    podcap(c.address, "get", cid, "-o", out)
    for d, name in enumerate(pods):
        got = udp_payloads(os.path.join(out, c.node.namespace, name + ".pcap"))
        seqs = [g[1] for g in got]
        assert sorted(seqs) == list(range(count)), (
            f"{name}: {len(seqs)} packets, {len(set(seqs))} distinct, missing "
            f"{sorted(set(range(count)) - set(seqs))[:10]}, duplicated {len(seqs) - len(set(seqs))}")
        assert seqs == list(range(count)), f"{name}: out of order"
        assert {g[0] for g in got} == {d}
