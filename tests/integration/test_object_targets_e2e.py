"""Workload, Service and node targets and the payload cap end to end: a podcap-collector process reading the
stand-in API server (``--kube-auth``: TokenReview and SubjectAccessReview decide), a podcap-agent process on a
DemoNode of network-namespace pods, the podcap CLI, and the stored files parsed.

- ``deploy/web`` attaches a pod created mid-capture (the Deployment's scale-up), and only the Deployment's pods;
- ``svc/api`` attaches a pod once its EndpointSlice lists it;
- ``node/NAME`` is refused without ``create nodes/capture`` and captures the node's own traffic with it (a network
  namespace of this test stands in for the node's: traffic only on its loopback, never the machine's interfaces);
- a namespace annotated ``podcap.io/max-snaplen=64`` stores at most 64 bytes of each packet, wire lengths intact,
  for a user without ``create pods/capture-payload``, and whole packets for one with it;
- bad input (an unknown kind, a Service without a selector, a Deployment that does not exist) is one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from podcap.collector.demo.node import DemoNode
from podcap.formats.pcap import read_file
from tests.conftest import Proc, collector_process, start_proc, tool
from tests.integration.helpers import PORT, SENDER, udp_payloads
from tests.kubeapi.standin import KubeApiStandin, write_kubeconfig

pytestmark = pytest.mark.root

TOKENS = {"sa-collector": "system:serviceaccount:podcap:collector", "t-admin": "admin", "t-alice": "alice",
          "t-ops": "ops", "t-sec": "sec"}
_NETNS_UID_NAMESPACE = uuid.UUID("6f1c1f4e-8a3e-4c55-9b8e-6f2d2b1c0a11")  # the netns pod source's uids


@dataclass
class World:
    kube: KubeApiStandin
    node: DemoNode
    node_name: str
    node_netns: str
    address: str
    agent: Proc
    tmp: str

    def cli(self, token: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([tool("podcap"), "--collector", self.address, "--token", token, *args],
                           capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"podcap {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n"
                                 f"agent:\n{self.agent.log()[-3000:]}")
        return r

    def add_pod(self, name: str, labels: dict[str, str]) -> None:
        """A DemoNode pod and the same pod in the API (the uid the agent's netns source derives for it)."""
        pod = self.node.add_pod(name) if name not in {p.name for p in self.node.pods} else self.node.pod(name)
        uid = str(uuid.uuid5(_NETNS_UID_NAMESPACE, f"{self.node_name}/{self.node.namespace}/{name}"))
        self.kube.add_pod(self.node.namespace, name, labels=labels, node=self.node_name, ip=pod.ip, uid=uid)

    def status(self, cid: str) -> dict[str, Any]:
        return dict(json.loads(self.cli("t-admin", "status", cid, "-o", "json").stdout))

    def wait_capturing(self, cid: str, names: set[str], token: str = "t-admin") -> None:
        deadline = time.monotonic() + 20
        while True:
            st = json.loads(self.cli(token, "status", cid, "-o", "json").stdout)
            capturing = {p["pod"]["name"] for p in st["pods"] if p["state"] == "capturing"}
            if capturing == names:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"capturing {capturing}, not {names}: {json.dumps(st)[:3000]}")
            time.sleep(0.2)

    def send(self, count: int, *targets: str) -> None:
        sender = self.node.pod("sender")
        ips = [self.node.pod(t).ip for t in targets]
        for ip in ips:  # resolve ARP first: the kernel queues only a few datagrams per unresolved neighbour
            self.node.exec(sender, ["ping", "-c", "1", "-W", "2", ip])
        done = self.node.exec(sender, [sys.executable, SENDER, str(PORT), str(count), *ips])
        assert done.returncode == 0, done.stderr

    def get(self, token: str, cid: str) -> str:
        out = os.path.join(self.tmp, f"out-{cid}")
        self.cli(token, "get", cid, "-o", out)
        return out


def _endpoint_slice(world_ns: str, pods: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": "api-x1", "namespace": world_ns, "labels": {"kubernetes.io/service-name": "api"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [p["status"]["podIP"]], "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": world_ns,
                                         "uid": p["metadata"]["uid"]}} for p in pods],
            "ports": [{"port": PORT, "protocol": "UDP"}]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = str(tmp_path_factory.mktemp("objects"))
    node = DemoNode()
    node_netns = f"h7t-node-{node.tag}"
    kube = KubeApiStandin(tokens=TOKENS)
    collector = None
    agent = None
    try:
        node.create(["sender"])
        subprocess.run(["ip", "netns", "add", node_netns], check=True)
        subprocess.run(["ip", "-n", node_netns, "link", "set", "lo", "up"], check=True)
        w = World(kube, node, f"node-{node.tag}", node_netns, "", None, tmp)  # type: ignore[arg-type]
        ns = node.namespace
        w.add_pod("sender", {"app": "sender"})
        for name, app in (("web-0", "web"), ("web-1", "web"), ("api-0", "api"), ("api-1", "api")):
            w.add_pod(name, {"app": app})
        kube.create("deployments", {"metadata": {"name": "web", "namespace": ns}, "spec": {
            "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c",
                                                                                         "image": "x"}]}}}})
        kube.create("services", {"metadata": {"name": "api", "namespace": ns},
                                 "spec": {"selector": {"app": "api"}, "ports": [{"port": PORT}]}})
        kube.create("services", {"metadata": {"name": "external", "namespace": ns},
                                 "spec": {"ports": [{"port": 80}]}})
        kube.create("endpointslices", _endpoint_slice(ns, [kube.get("pods", ns, "api-0")]))
        for verb in ("create", "get", "delete"):
            kube.grant(verb, None, user="ops", resource="nodes", subresource="capture")
        kube.grant("create", ns, user="sec", resource="pods", subresource="capture-payload")
        kubeconfig = write_kubeconfig(os.path.join(tmp, "kubeconfig"), kube.url, token="sa-collector")
        collector = collector_process(tmp, "--kubeconfig", kubeconfig, "--kube-auth")
        w.address = next(collector)[0]
        w.agent = agent = start_proc(
            [tool("podcap-agent"), "--insecure", "--collector", w.address, "--node", w.node_name, "--pod-source",
             "netns"], os.path.join(tmp, "agent.log"), env={"PODCAP_NODE_NETNS": f"/run/netns/{node_netns}"})
        deadline = time.monotonic() + 20
        while True:  # until the collector knows the node's agent
            r = w.cli("t-admin", "start", "-n", ns, "sender", "--duration", "1", "--max-packets", "1", check=False)
            if r.returncode == 0:
                w.cli("t-admin", "stop", r.stdout.strip().splitlines()[-1])
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"agent never registered:\n{r.stderr}\n{agent.log()}")
            time.sleep(0.3)
        yield w
    finally:
        if agent is not None:
            agent.stop()
        if collector is not None:
            collector.close()
        kube.close()
        node.destroy()
        subprocess.run(["ip", "netns", "del", node_netns], capture_output=True)


def _cid(r: subprocess.CompletedProcess[str]) -> str:
    return r.stdout.strip().splitlines()[-1]


def _seqs(path: str) -> set[int]:
    return {seq for _, seq, _, _, _ in udp_payloads(path)}


def test_a_deployment_capture_attaches_a_pod_created_mid_capture(world: World) -> None:
    ns = world.node.namespace
    cid = _cid(world.cli("t-admin", "start", "-n", ns, "deploy/web", "--filter", f"udp port {PORT}"))
    world.wait_capturing(cid, {"web-0", "web-1"})
    world.add_pod("web-2", {"app": "web"})  # the Deployment scaled up
    world.add_pod("other-0", {"app": "other"})  # not the Deployment's
    world.wait_capturing(cid, {"web-0", "web-1", "web-2"})
    world.send(200, "web-0", "web-1", "web-2", "other-0")
    world.cli("t-admin", "stop", cid)
    out = world.get("t-admin", cid)
    for name in ("web-0", "web-1", "web-2"):
        assert _seqs(os.path.join(out, ns, f"{name}.pcap")) == set(range(200)), name
    assert sorted(os.listdir(os.path.join(out, ns))) == ["web-0.pcap", "web-1.pcap", "web-2.pcap"]


def test_a_service_capture_follows_its_endpoint_slice(world: World) -> None:
    ns = world.node.namespace
    cid = _cid(world.cli("t-admin", "start", "-n", ns, "svc/api", "--filter", f"udp port {PORT}"))
    world.wait_capturing(cid, {"api-0"})
    world.kube.modify("endpointslices", ns, "api-x1", lambda o: o.update(
        _endpoint_slice(ns, [world.kube.get("pods", ns, "api-0"), world.kube.get("pods", ns, "api-1")])))
    world.wait_capturing(cid, {"api-0", "api-1"})
    world.send(100, "api-0", "api-1")
    world.cli("t-admin", "stop", cid)
    out = world.get("t-admin", cid)
    for name in ("api-0", "api-1"):
        assert _seqs(os.path.join(out, ns, f"{name}.pcap")) == set(range(100)), name


def _sll_seqs(path: str) -> tuple[int, set[int]]:
    """(linktype, sequence numbers) of the PODCAPSEQ datagrams in a file of any link type."""
    fmt, recs = read_file(path)
    seqs = set()
    for r in recs:
        at = r.data.find(b"PODCAPSEQ")
        if at >= 0:
            seqs.add(int.from_bytes(r.data[at + 13:at + 17], "big"))
    return fmt.linktype, seqs


def test_a_node_capture_needs_the_right_and_captures_the_nodes_own_traffic(world: World) -> None:
    refused = world.cli("t-alice", "start", f"node/{world.node_name}", check=False)
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "may not create nodes/capture cluster-wide" in lines[0], refused.stderr
    cid = _cid(world.cli("t-ops", "start", f"node/{world.node_name}", "--filter", f"udp port {PORT}"))
    world.wait_capturing(cid, {world.node_name}, token="t-ops")
    done = subprocess.run(["ip", "netns", "exec", world.node_netns, sys.executable, SENDER, str(PORT), "100",
                           "127.0.0.1"], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    world.cli("t-ops", "stop", cid)
    out = world.get("t-ops", cid)
    linktype, seqs = _sll_seqs(os.path.join(out, "node", f"{world.node_name}.pcap"))
    assert linktype in (113, 276) and seqs == set(range(100))  # every interface of the node: SLL
    assert world.cli("t-alice", "status", cid, check=False).returncode != 0  # not hers to read


def test_the_payload_cap_holds_and_the_payload_right_lifts_it(world: World) -> None:
    ns = world.node.namespace
    world.kube.modify("namespaces", None, ns, {"metadata": {"annotations": {"podcap.io/max-snaplen": "64"}}})
    try:
        started = world.cli("t-alice", "start", "-n", ns, "web-0", "--filter", f"udp port {PORT}")
        assert "snaplen capped at 64 bytes" in started.stderr
        capped = _cid(started)
        whole = _cid(world.cli("t-sec", "start", "-n", ns, "web-1", "--filter", f"udp port {PORT}"))
        world.wait_capturing(capped, {"web-0"}, token="t-alice")
        world.wait_capturing(whole, {"web-1"}, token="t-sec")
        assert "snaplen capped at 64 bytes" in world.cli("t-alice", "status", capped).stdout
        world.send(300, "web-0", "web-1")
        world.cli("t-alice", "stop", capped)
        world.cli("t-sec", "stop", whole)
        for token, cid, name, cap in (("t-alice", capped, "web-0", 64), ("t-sec", whole, "web-1", None)):
            path = os.path.join(world.get(token, cid), ns, f"{name}.pcap")
            fmt, recs = read_file(path)
            got = udp_payloads(path)
            assert {seq for _, seq, _, _, _ in got} == set(range(300))
            for _, seq, wirelen, _, _ in got:
                assert wirelen == 14 + 20 + 8 + 17 + seq % 200  # the wire length is always intact
            if cap is not None:
                assert fmt.snaplen == cap and all(r.caplen <= cap for r in recs)
                assert any(r.wirelen > cap for r in recs)
            else:
                assert all(r.caplen == r.wirelen for r in recs)
        audit = world.cli("t-admin", "audit", "-o", "json").stdout
        assert "snaplen capped at 64" in audit
    finally:
        world.kube.modify("namespaces", None, ns, {"metadata": {"annotations": {"podcap.io/max-snaplen": None}}})


@pytest.mark.parametrize("args,code,says", [
    (("cronjob/nightly",), 2, "'cronjob' is not a kind podcap can capture"),
    (("svc/external",), 1, "service 'external' has no selector"),
    (("deploy/nope",), 1, "no deployment 'nope' in namespace"),
])
def test_bad_object_targets_are_one_line(world: World, args: tuple[str, ...], code: int, says: str) -> None:
    r = world.cli("t-admin", "start", "-n", world.node.namespace, *args, check=False)
    assert r.returncode == code
    lines = [line for line in r.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and says in lines[0], r.stderr
