"""Metrics and health: the collector's /metrics serves per-pod counters equal to `podcap status`, the agent's
/metrics shows what it captured, and its gRPC health turns SERVING once it is connected."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from podcap.collector.demo.node import DemoNode
from tests.conftest import Proc, free_port, podcap, start_proc, tool
from tests.integration.helpers import PORT, SENDER, capture_id, wait_capturing, warm_up

pytestmark = pytest.mark.root


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.fixture
def stack(node: DemoNode, tmp_path: str) -> Iterator[tuple[str, int, int, int, Proc, Proc]]:
    port, cm, am, ah = free_port(), free_port(), free_port(), free_port()
    address = f"127.0.0.1:{port}"
    collector = start_proc([tool("podcap-collector"), "--insecure", "--listen", address, "--data-dir",
                            os.path.join(tmp_path, "data"), "--metrics-listen", f"127.0.0.1:{cm}"],
                           os.path.join(tmp_path, "collector.log"))
    agent = start_proc([tool("podcap-agent"), "--insecure", "--collector", address, "--node", "node-" + node.tag,
                        "--pod-source", "netns", "--metrics-listen", f"127.0.0.1:{am}", "--health-listen",
                        f"127.0.0.1:{ah}"], os.path.join(tmp_path, "agent.log"))
    try:
        yield address, cm, am, ah, collector, agent
    finally:
        agent.stop()
        collector.stop()


def test_metrics_match_status_and_health_follows_the_session(stack: tuple[str, int, int, int, Proc, Proc],
                                                             node: DemoNode) -> None:
    address, cm, am, ah, _collector, agent = stack
    channel = grpc.insecure_channel(f"127.0.0.1:{ah}")
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 15
    while True:
        try:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                    health_pb2.HealthCheckResponse.SERVING:
                break
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, agent.log()
        time.sleep(0.1)
    warm_up(node)
    cid = capture_id(podcap(address, "start", "-n", node.namespace, "rx-0", "rx-1", "--filter", f"udp port {PORT}"))
    wait_capturing(address, cid, 2)
    node.exec(node.pod("sender"), [sys.executable, SENDER, str(PORT), "300", node.pod("rx-0").ip,
                                   node.pod("rx-1").ip])
    st = json.loads(podcap(address, "stop", cid, "-o", "json").stdout)
    metrics = scrape(cm)
    for p in st["pods"]:
        key = f'{{capture="{cid}",namespace="{node.namespace}",pod="{p["pod"]["name"]}"}}'
        assert metrics[f"podcap_stored_packets_total{key}"] == int(p["packets"]) == 300
        assert metrics[f"podcap_stored_bytes_total{key}"] == int(p["bytes"])
    assert metrics["podcap_agents_connected"] == 1
    agent_metrics = scrape(am)
    assert agent_metrics[f'podcap_agent_captured_packets_total{{capture="{cid}"}}'] == 600
    assert agent_metrics["podcap_agent_connected"] == 1
    channel.close()
