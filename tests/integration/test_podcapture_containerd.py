"""A PodCapture on real containerd pods (tests/node): applied with the real ``kubectl`` to the API stand-in, it
captures a Deployment's pods, including one the Deployment gets mid-capture from a scale-up, as a real
``podcap-agent --pod-source cri`` sees them on the node.

There is no kubelet or ReplicaSet controller here, so the test plays their part: it starts each replica as a CRI
sandbox (with a busybox container) on the harness's bridge and registers it in the stand-in with the sandbox's uid,
IP and the Deployment's labels, as the kubelet would report it. A client pod sends sequence-numbered UDP datagrams
(tests/integration/udp_send.py) to the replicas before and after the scale-up. Checks: ``kubectl get podcaptures``
shows the phase, pods and packets; each replica's stored file (downloaded with ``podcap get`` and parsed) holds
exactly the datagrams sent to it, the late replica's too; every pod's packets are accounted for (stored + drops ==
received, once final); ``kubectl delete`` stops the capture and deletes its files.

Everything is named ``h12-…``; the pods are removed after the test whatever its outcome (``containerd_pods``).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from podcap.collector.captures.table import CaptureNotFoundError
from podcap.v1 import common_pb2
from tests.conftest import podcap, start_proc, tool
from tests.integration.helpers import PORT, SENDER, udp_payloads
from tests.integration.podcapture_env import KubeEnv, kube_env, phase
from tests.kubeapi.helpers import wait_for
from tests.node.harness import Pod, TestNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.timeout(240)]

DEPLOYMENT = "h12web"
LABELS = {"app": DEPLOYMENT}
COUNT = 300  # datagrams to each replica per round


@pytest.fixture
def env(containerd_node: TestNode, tmp_path: Any) -> Iterator[KubeEnv]:
    """The stand-in with the CRD, a collector, and a ``podcap-agent --pod-source cri`` for the containerd node."""
    namespace = f"h12-{secrets.token_hex(3)}"
    with kube_env(KubeEnv, str(tmp_path), namespace, lambda kube: kube.ensure_namespace(namespace)) as e:
        agent = start_proc([tool("podcap-agent"), "--insecure", "--collector", f"127.0.0.1:{e.collector.port}",
                            "--node", containerd_node.node_name, "--pod-source", "cri",
                            "--cri-endpoint", "unix://" + containerd_node.socket],
                           os.path.join(e.tmp, "agent.log"))
        try:
            yield e
        finally:
            assert agent.stop() == 0, "agent did not stop cleanly on SIGTERM:\n" + agent.log()[-5000:]


def replica(env: KubeEnv, node: TestNode, pods: Callable[..., Pod], name: str, labels: dict[str, str]) -> Pod:
    """A pod sandbox with a container on the node, and the pod in the API as its kubelet reports it."""
    pod = pods(name, env.namespace, labels=labels)
    env.kube.add_pod(env.namespace, name, uid=pod.uid, node=node.node_name, ip=pod.ip, labels=labels)
    return pod


def known(env: KubeEnv, n: int) -> None:
    """Until the collector knows ``n`` pods of the namespace from the agent's inventory."""
    c = env.collector
    wait_for(lambda: len([p for p in c.captures.capturable_pods() if p.namespace == env.namespace]) == n, 30,
             f"the agent's {n} pods")


def send(client: Pod, targets: list[Pod]) -> None:
    """COUNT numbered datagrams from ``client`` to each target (ARP resolved first, so none waits on it)."""
    for t in targets:
        subprocess.run(["nsenter", f"--net={client.netns_path}", "ping", "-c", "1", "-W", "2", t.ip], check=True,
                       capture_output=True, timeout=30)
    subprocess.run(["nsenter", f"--net={client.netns_path}", sys.executable, SENDER, str(PORT), str(COUNT),
                    *[t.ip for t in targets]], check=True, timeout=60)


def test_a_podcapture_captures_a_deployments_containerd_pods_and_one_added_by_a_scale_up(
        env: KubeEnv, containerd_node: TestNode, containerd_pods: Callable[..., Pod]) -> None:
    ns, node = env.namespace, containerd_node
    env.kube.create("deployments", {
        "metadata": {"name": DEPLOYMENT, "namespace": ns},
        "spec": {"replicas": 2, "selector": {"matchLabels": LABELS},
                 "template": {"metadata": {"labels": LABELS},
                              "spec": {"containers": [{"name": "main", "image": "busybox:stable"}]}}}})
    web = [replica(env, node, containerd_pods, f"{DEPLOYMENT}-{i}", LABELS) for i in range(2)]
    client = replica(env, node, containerd_pods, "h12client", {"app": "h12client"})
    known(env, 3)
    ctl = env.controller()
    try:
        env.apply("h12cap", {"targets": [f"deploy/{DEPLOYMENT}"], "filter": f"udp port {PORT}"})
        obj = env.wait_pc("h12cap", lambda o: phase("Running")(o) and o["status"]["podCount"] == 2
                          and all(p["state"] == "capturing" for p in o["status"]["pods"]), "capturing 2 pods")
        cid = obj["status"]["captureId"]
        assert env.captures_of(obj) == [cid]
        send(client, web)

        # The scale-up: the Deployment gets a third replica, which the kubelet starts and reports.
        env.kubectl("scale", f"deployment/{DEPLOYMENT}", "--replicas=3")
        web.append(replica(env, node, containerd_pods, f"{DEPLOYMENT}-2", LABELS))
        env.wait_pc("h12cap", lambda o: o["status"]["podCount"] == 3
                    and all(p["state"] == "capturing" for p in o["status"]["pods"]), "capturing the new pod")
        send(client, web)
        want = {web[0].name: 2 * COUNT, web[1].name: 2 * COUNT, web[2].name: COUNT}
        obj = env.wait_pc("h12cap", lambda o: {p["name"]: p["packets"] for p in o["status"]["pods"]} == want,
                          "counting every datagram", timeout=30)
        assert obj["status"]["packets"] == 5 * COUNT and obj["status"]["drops"] == 0
        out = env.kubectl("get", "podcaptures").stdout.splitlines()
        assert out[0].split() == ["NAME", "PHASE", "PODS", "PACKETS", "DROPS", "AGE"]
        assert out[1].split()[:5] == ["h12cap", "Running", "3", str(5 * COUNT), "0"], out

        # Stopped as a user would stop it: every pod's counters become final, and the status says Done.
        podcap(f"127.0.0.1:{env.collector.port}", "stop", cid)
        env.wait_pc("h12cap", phase("Done"), "done")
        assert env.kubectl("get", "podcapture", "h12cap").stdout.splitlines()[1].split()[:5] == \
            ["h12cap", "Done", "3", str(5 * COUNT), "0"]
        captures = env.collector.captures
        pods = {p.pod.name: p for p in captures.status(captures.get(cid)).pods}
        assert sorted(pods) == sorted(want)
        for name, p in pods.items():
            assert p.final and p.unaccounted == 0 and p.pod.uid == next(w.uid for w in web if w.name == name), p
            dropped = p.kernel.dropped + p.kernel.if_dropped + sum(d for _, d in p.drops.ListFields())
            assert p.packets + dropped == p.kernel.received == want[name], p
            assert p.state == common_pb2.POD_CAPTURE_STATE_DONE and p.retired_packets == 0, p

        # The stored files, parsed: each replica holds exactly the datagrams sent to it, from the client.
        files = os.path.join(env.tmp, "get")
        podcap(f"127.0.0.1:{env.collector.port}", "get", cid, "-o", files)
        for i, pod in enumerate(web):
            got = udp_payloads(os.path.join(files, ns, f"{pod.name}.pcap"))
            rounds = 1 if pod is web[2] else 2
            assert sorted(seq for _, seq, _, _, _ in got) == sorted(list(range(COUNT)) * rounds), pod.name
            assert {(dst, src, to) for dst, _, _, src, to in got} == {
                (i, bytes(map(int, client.ip.split("."))), bytes(map(int, pod.ip.split("."))))}

        # Delete: the capture and its files go, then the resource.
        data = os.path.join(env.tmp, "data", "captures", cid)
        assert os.path.isdir(data)
        env.kubectl("delete", "podcapture", "h12cap", "--timeout=30s")
        assert env.podcapture("h12cap") is None
        with pytest.raises(CaptureNotFoundError):
            captures.get(cid)
        assert not os.path.exists(data)
        assert "No resources found" in env.kubectl("get", "podcaptures").stderr
    finally:
        ctl.stop()
