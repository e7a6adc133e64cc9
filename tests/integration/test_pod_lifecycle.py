"""Pods that appear during a selector capture are attached; a deleted pod's stream ends cleanly."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from podcap.collector.demo.node import DemoNode
from tests.conftest import Proc, podcap
from tests.integration.helpers import PORT, SENDER, capture_id, udp_payloads

pytestmark = pytest.mark.root


def _status(address: str, cid: str) -> dict[str, object]:
    return json.loads(podcap(address, "status", cid, "-o", "json").stdout)


def test_new_pod_attached_and_deleted_pod_ends(collector: tuple[str, str, Proc], node: DemoNode,
                                               agent: Proc, tmp_path: str) -> None:
    address = collector[0]
    cid = capture_id(podcap(address, "start", "-n", node.namespace, "--filter", f"udp port {PORT}"))
    late = node.add_pod("late-0")
    deadline = time.monotonic() + 5
    while True:
        pods = {p["pod"]["name"]: p["state"] for p in _status(address, cid)["pods"]}  # type: ignore[index]
        if pods.get("late-0") == "capturing":
            break
        assert time.monotonic() < deadline, f"new pod not attached within 5 s: {pods}"
        time.sleep(0.1)
    sender = node.pod("sender")
    node.exec(sender, ["ping", "-c", "1", "-W", "2", late.ip])
    node.exec(sender, [sys.executable, SENDER, str(PORT), "100", late.ip])
    time.sleep(0.5)
    gone = node.pod("rx-0")
    node.remove_pod(gone)
    deadline = time.monotonic() + 20  # the agent's 5 s grace for restarts, plus a loaded CI machine
    while True:
        pods = {p["pod"]["name"]: p for p in _status(address, cid)["pods"]}  # type: ignore[index]
        if pods["rx-0"]["state"] == "done":
            break
        assert time.monotonic() < deadline, f"deleted pod's stream did not end: {pods['rx-0']}"
        time.sleep(0.1)
    assert pods["rx-0"]["message"] == "pod deleted from the node"  # after the 5 s grace for restarts
    podcap(address, "stop", cid)
    out = os.path.join(tmp_path, "out")
    podcap(address, "get", cid, "-o", out)
    assert [g[1] for g in udp_payloads(os.path.join(out, node.namespace, "late-0.pcap"))] == list(range(100))


def test_sandbox_restart_is_reattached_and_the_gap_reported(collector: tuple[str, str, Proc], node: DemoNode,
                                                             agent: Proc, tmp_path: str) -> None:
    """The pod's network namespace is recreated (a sandbox restart): same pod, new netns and veth."""
    address = collector[0]
    cid = capture_id(podcap(address, "start", "-n", node.namespace, "rx-1", "--filter", f"udp port {PORT}"))
    sender = node.pod("sender")

    def send(first: int) -> None:
        rx = node.pod("rx-1")
        node.exec(sender, ["ping", "-c", "1", "-W", "2", rx.ip])
        node.exec(sender, [sys.executable, SENDER, str(PORT), "50", rx.ip])

    deadline = time.monotonic() + 5
    while _status(address, cid)["pods"][0]["state"] != "capturing":  # type: ignore[index]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    send(0)
    time.sleep(0.5)
    node.remove_pod(node.pod("rx-1"))
    time.sleep(0.5)
    node.add_pod("rx-1")
    deadline = time.monotonic() + 15  # ~1 s here when quiet; CI machines run other sessions' tests beside it
    while True:
        pod = _status(address, cid)["pods"][0]  # type: ignore[index]
        if pod["state"] == "capturing" and pod.get("reattachments") == 1:
            break
        assert time.monotonic() < deadline, f"not re-attached within 15 s: {pod}"
        time.sleep(0.1)
    assert "re-attached" in pod["message"] and "no capture for" in pod["message"]
    send(0)
    time.sleep(0.5)
    podcap(address, "stop", cid)
    out = os.path.join(tmp_path, "out")
    podcap(address, "get", cid, "-o", out)
    # Both runs of the pod are in its file: 50 datagrams before the restart and 50 after.
    assert [g[1] for g in udp_payloads(os.path.join(out, node.namespace, "rx-1.pcap"))] == list(range(50)) * 2
