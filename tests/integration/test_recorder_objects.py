"""Recorders of a workload's or a Service's pods (``podcap record deploy/NAME``, ``svc/NAME``), resolved as captures'
targets are (``ObjectTargets``): the real CLI and an in-process collector watching the API stand-in, with the fake
ring agent (real gRPC). ``deploy/web`` records the Deployment's pods only (its selector, stored in the request) and
a pod that scales up later; ``svc/api`` records its EndpointSlices' pods and a pod once a slice lists it, and stops
following the Service when the recorder stops; ``node/NAME`` and a Service without a selector are one-line errors.
No root needed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from podcap.collector.kube.inventory import ClusterInventory
from podcap.collector.server import Collector, start_collector
from podcap.v1 import common_pb2
from tests.conftest import podcap
from tests.integration.recorder_agent import RingAgent
from tests.integration.test_recorder_kube import wait_for
from tests.kubeapi.helpers import api_for
from tests.kubeapi.standin import KubeApiStandin

NODE = "node-o"
NS = "shop"


def _slice(pods: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": "api-x1", "namespace": NS, "labels": {"kubernetes.io/service-name": "api"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [p["status"]["podIP"]], "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": NS,
                                         "uid": p["metadata"]["uid"]}} for p in pods],
            "ports": [{"port": 80, "protocol": "TCP"}]}


@pytest.fixture
def world(tmp_path: str) -> Iterator[tuple[KubeApiStandin, Collector, str, RingAgent]]:
    standin = KubeApiStandin()
    pods = [standin.add_pod(NS, name, labels={"app": app}, node=NODE, ip=f"10.1.0.{i + 2}")
            for i, (name, app) in enumerate([("web-0", "web"), ("web-1", "web"), ("api-0", "api"),
                                             ("api-1", "api"), ("other-0", "other")])]
    standin.create("deployments", {"metadata": {"name": "web", "namespace": NS}, "spec": {
        "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
    standin.create("services", {"metadata": {"name": "api", "namespace": NS},
                                "spec": {"selector": {"app": "api"}, "ports": [{"port": 80}]}})
    standin.create("services", {"metadata": {"name": "external", "namespace": NS}, "spec": {"ports": [{"port": 80}]}})
    standin.create("endpointslices", _slice([pods[2]]))
    cluster = ClusterInventory(api_for(standin, str(tmp_path))).start()
    assert cluster.wait_synced(10)
    c = start_collector("127.0.0.1:0", os.path.join(tmp_path, "data"), cluster=cluster)
    agent = RingAgent(f"127.0.0.1:{c.port}", NODE, [
        common_pb2.Pod(namespace=NS, name=p["metadata"]["name"], uid=p["metadata"]["uid"], node=NODE,
                       labels=p["metadata"]["labels"]) for p in pods])
    try:
        yield standin, c, f"127.0.0.1:{c.port}", agent
    finally:
        agent.close()
        c.stop(0)
        standin.close()


def _started(agent: RingAgent, rid: str) -> set[str]:
    return {s.pod.name for s in agent.starts if s.recorder_id == rid}


def test_a_deployment_recorder_records_its_pods_and_one_that_scales_up(
        world: tuple[KubeApiStandin, Collector, str, RingAgent]) -> None:
    standin, c, address, agent = world
    r = podcap(address, "record", "-n", NS, "deploy/web", "--keep", "1m", "-o", "json")
    rid = r.stdout.strip().splitlines()[-1]
    assert rid.startswith("rec-")
    st = json.loads("\n".join(r.stdout.strip().splitlines()[:-1]))
    assert st["request"]["target"]["object"] == {"kind": "deployment", "name": "web"}
    assert st["request"]["target"]["object_selector"] == "app=web"
    assert sorted(p["pod"]["name"] for p in st["pods"]) == ["web-0", "web-1"]
    wait_for(lambda: _started(agent, rid) == {"web-0", "web-1"}, what="the Deployment's pods' rings")
    standin.add_pod(NS, "web-2", labels={"app": "web"}, node=NODE, ip="10.1.0.9")
    standin.add_pod(NS, "other-1", labels={"app": "other"}, node=NODE, ip="10.1.0.10")
    wait_for(lambda: "web-2" in _started(agent, rid), what="the scaled-up pod's ring")
    assert _started(agent, rid) == {"web-0", "web-1", "web-2"}
    listed = json.loads(podcap(address, "list", "-o", "json").stdout)
    assert [(d["kind"], d["id"]) for d in listed] == [("recorder", rid)]


def test_a_service_recorder_follows_its_endpoints_until_it_stops(
        world: tuple[KubeApiStandin, Collector, str, RingAgent]) -> None:
    standin, c, address, agent = world
    rid = podcap(address, "record", "-n", NS, "svc/api", "--keep", "1m").stdout.strip().splitlines()[-1]
    wait_for(lambda: _started(agent, rid) == {"api-0"}, what="the Service's endpoint's ring")
    objects = c.captures.objects
    assert rid in objects._watches  # followed under the recorder's id
    api0, api1 = standin.get("pods", NS, "api-0"), standin.get("pods", NS, "api-1")
    assert api0 is not None and api1 is not None
    standin.modify("endpointslices", NS, "api-x1", _slice([api0, api1]))
    wait_for(lambda: _started(agent, rid) == {"api-0", "api-1"}, what="the new endpoint's ring")
    podcap(address, "stop", rid)
    assert rid not in objects._watches
    wait_for(lambda: {s.recorder_id for s in agent.stops} == {rid}, what="the rings' stop")


@pytest.mark.parametrize("args,needle", [
    (["node/" + NODE], "a recorder keeps rings of pods, not of a node's own network"),
    (["svc/external"], "selector"),
    (["deploy/nope"], "no deployment 'nope'"),
    (["deploy/web", "web-0"], "one recorder covers one workload, Service or node, or pods by name"),
])
def test_targets_a_recorder_cannot_take_are_one_line(world: tuple[KubeApiStandin, Collector, str, RingAgent],
                                                     args: list[str], needle: str) -> None:
    _, c, address, agent = world
    r = podcap(address, "record", "-n", NS, *args, "--keep", "1m", check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and needle in lines[0], r.stderr
    assert c.recorders is not None and not c.recorders.all() and not agent.starts
    assert not c.captures.objects._watches


def test_a_service_recorder_follows_its_endpoints_again_after_a_collector_restart(
        world: tuple[KubeApiStandin, Collector, str, RingAgent], tmp_path: str) -> None:
    standin, c, address, agent = world
    rid = podcap(address, "record", "-n", NS, "svc/api", "--keep", "1m").stdout.strip().splitlines()[-1]
    wait_for(lambda: _started(agent, rid) == {"api-0"}, what="the Service's endpoint's ring")
    agent.close()
    c.stop(0)  # and its pod cache
    cluster = ClusterInventory(api_for(standin, str(tmp_path))).start()
    assert cluster.wait_synced(10)
    c2 = start_collector("127.0.0.1:0", os.path.join(tmp_path, "data"), cluster=cluster)
    agent2 = RingAgent(f"127.0.0.1:{c2.port}", NODE, [])
    try:
        assert rid in c2.captures.objects._watches  # the recorder's Service is watched again
        wait_for(lambda: "api-0" in _started(agent2, rid), what="the ring's start sent again")
        api0, api1 = standin.get("pods", NS, "api-0"), standin.get("pods", NS, "api-1")
        assert api0 is not None and api1 is not None
        standin.modify("endpointslices", NS, "api-x1", _slice([api0, api1]))
        wait_for(lambda: _started(agent2, rid) == {"api-0", "api-1"}, what="the new endpoint's ring")
        assert c2.recorders is not None and [r.id for r in c2.recorders.all()] == [rid]
    finally:
        agent2.close()
        c2.stop(0)
