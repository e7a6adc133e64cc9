"""Issue 24 end to end with real processes: a podcap-collector, a podcap-agent keeping rings on its disk, DemoNode
netns pods and the podcap CLI. `podcap record` starts a recorder on a pod; numbered datagrams go to it while
nothing travels to the collector but counters (status shows the ring growing); `podcap trigger` waits for the save
and prints its capture id; the save's stored file holds every datagram sent before the trigger within --before
(parsed), its pod's accounting balances (nothing unaccounted, final), and `podcap status REC` names the save; an
agent restart between the traffic and the trigger loses nothing (the ring is on the node's disk)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import pytest

from podcap.collector.cli.client import CollectorClient
from podcap.collector.demo.node import DemoNode
from podcap.formats.pcap import iter_records, parse_file_header
from podcap.v1 import control_pb2
from tests.conftest import Proc, podcap, start_proc, tool
from tests.integration.helpers import PORT, send_numbered, stored_seqs, warm_up

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]


@pytest.fixture
def node_pods() -> list[str]:
    return ["sender", "rx-0"]


def start_agent(node: DemoNode, address: str, tmp_path: str, n: int = 0) -> Proc:
    return start_proc([tool("podcap-agent"), "--insecure", "--collector", address, "--node", "node-" + node.tag,
                       "--pod-source", "netns", "--ring-dir", os.path.join(tmp_path, "rings"), "--ring-min-free",
                       "0"], os.path.join(tmp_path, f"agent-{n}.log"))


@pytest.fixture
def agent(node: DemoNode, collector: tuple[str, str, Proc], tmp_path: str) -> Iterator[Proc]:
    p = start_agent(node, collector[0], tmp_path)
    try:
        yield p
    finally:
        p.stop()


def wait_for(ok: object, timeout: float = 30, what: str = "") -> None:
    assert callable(ok)
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_manual_trigger_saves_the_pods_packets_from_before_it(
        node: DemoNode, collector: tuple[str, str, Proc], agent: Proc) -> None:
    address, _, _ = collector
    with CollectorClient(address) as cli:
        wait_for(lambda: any(p.name == "rx-0" and p.namespace == node.namespace
                             for p in cli.capturable_pods(node.namespace).pods), what="the agent's pods")
        warm_up(node)
        r = podcap(address, "record", "-n", node.namespace, "rx-0", "--filter", f"udp port {PORT}", "--keep", "2m",
                   "--before", "20s", "--after", "1s")
        rid = r.stdout.strip().splitlines()[-1]
        wait_for(lambda: [p.state for p in cli.get_recorder(rid).pods] == ["recording"],
                 what="the ring recording (agent log:\n" + agent.log()[-2000:] + ")")
        send_numbered(node, 0, 500)
        time.sleep(0.5)
        send_numbered(node, 1000, 500)
        time.sleep(2.5)  # the agent's last chunks reach the ring
        wait_for(lambda: cli.get_recorder(rid).pods[0].packets >= 1000, what="ring counters in status")
        assert not cli.list_all().captures  # while idle, nothing but counters reached the collector
        t = podcap(address, "trigger", rid, "--reason", "e2e", timeout=120)
        cid = t.stdout.strip().splitlines()[-1]
        st = cli.get(cid)
        assert st.state == control_pb2.CAPTURE_STATE_DONE, st
        (p,) = st.pods
        assert p.final and p.unaccounted == 0, p
        seqs = stored_seqs(cli, cid)
        assert seqs == list(range(0, 500)) + list(range(1000, 1500)), (len(seqs), seqs[:5], seqs[-5:])
        assert p.packets >= len(seqs)
        status = podcap(address, "status", rid).stdout
        assert cid in status and "e2e" in status
        podcap(address, "stop", rid)


def test_an_agent_restart_between_the_traffic_and_the_trigger_loses_nothing(
        node: DemoNode, collector: tuple[str, str, Proc], tmp_path: str) -> None:
    """The ring is on the node's disk: a new agent process finds it, the collector asks it to record again, and a
    trigger after the restart saves the traffic from before it."""
    address, _, _ = collector
    first = start_agent(node, address, tmp_path)
    try:
        with CollectorClient(address) as cli:
            wait_for(lambda: any(p.name == "rx-0" for p in cli.capturable_pods(node.namespace).pods),
                     what="the agent's pods")
            warm_up(node)
            rid = podcap(address, "record", "-n", node.namespace, "rx-0", "--filter", f"udp port {PORT}", "--keep",
                         "2m", "--before", "30s", "--after", "1s").stdout.strip().splitlines()[-1]
            wait_for(lambda: [p.state for p in cli.get_recorder(rid).pods] == ["recording"], what="recording")
            send_numbered(node, 0, 500)
            time.sleep(2.5)
            assert first.stop() == 0, first.log()
            second = start_agent(node, address, tmp_path, 1)
            try:
                wait_for(lambda: [p.state for p in cli.get_recorder(rid).pods] == ["recording"]
                         and cli.get_recorder(rid).pods[0].packets >= 500, what="recording again")
                send_numbered(node, 1000, 500)
                time.sleep(2.5)
                cid = podcap(address, "trigger", rid, timeout=120).stdout.strip().splitlines()[-1]
                st = cli.get(cid)
                assert st.state == control_pb2.CAPTURE_STATE_DONE and st.pods[0].final, st
                assert st.pods[0].unaccounted == 0
                assert stored_seqs(cli, cid) == list(range(0, 500)) + list(range(1000, 1500))
            finally:
                second.stop()
    finally:
        first.stop()


def test_a_packet_trigger_on_rsts_saves_by_itself(node: DemoNode, collector: tuple[str, str, Proc],
                                                  agent: Proc) -> None:
    """`--trigger-filter` on TCP RSTs, evaluated by the agent: the 5th RST within the window makes a save with no
    one asking, and the save holds those RSTs."""
    address, _, _ = collector
    with CollectorClient(address) as cli:
        wait_for(lambda: any(p.name == "rx-0" for p in cli.capturable_pods(node.namespace).pods),
                 what="the agent's pods")
        warm_up(node)
        rid = podcap(address, "record", "-n", node.namespace, "rx-0", "--filter", "tcp port 9", "--keep", "2m",
                     "--before", "10s", "--after", "1s", "--trigger-filter", "tcp[tcpflags] & tcp-rst != 0",
                     "--trigger-count", "5", "--trigger-window", "10s").stdout.strip().splitlines()[-1]
        wait_for(lambda: [p.state for p in cli.get_recorder(rid).pods] == ["recording"], what="recording")
        assert not cli.get_recorder(rid).saves
        code = ("import socket\nfor i in range(6):\n    s = socket.socket()\n    try:\n"
                f"        s.connect(('{node.pod('rx-0').ip}', 9))\n    except OSError:\n        pass\n"
                "    s.close()\n")
        r = node.exec(node.pod("sender"), [sys.executable, "-c", code])
        assert r.returncode == 0, r.stderr
        wait_for(lambda: cli.get_recorder(rid).saves, what="a save by the packet trigger")
        save = cli.get_recorder(rid).saves[0]
        assert save.info.triggers[0].reason == control_pb2.RECORDER_TRIGGER_PACKETS
        wait_for(lambda: cli.get(save.capture_id).state == control_pb2.CAPTURE_STATE_DONE, what="the save's end")
        data = bytearray()
        for msg in cli.download(save.capture_id):
            if msg.WhichOneof("kind") == "data":
                data += msg.data
        fmt = parse_file_header(bytes(data[:24]))
        rsts = [r for r in iter_records(memoryview(data)[24:], fmt)
                if bytes(r.data)[23] == 6 and bytes(r.data)[14 + (bytes(r.data)[14] & 0x0F) * 4 + 13] & 0x04]
        assert len(rsts) >= 5
