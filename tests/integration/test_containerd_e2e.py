"""End to end on a real node: ``podcap-agent --pod-source cri`` (and ``proc``) against containerd pods from
tests/node, a real ``podcap-collector`` and the ``podcap`` CLI, as a user would run them.

The pods are real CRI sandboxes on the harness's CNI bridge: a busybox ``httpd`` web pod and a client pod running a
bounded ``wget`` loop against it. Every check reads the pcap files that ``podcap get`` downloads: HTTP GETs from
the client's IP to the web pod's port 8080 (and the answers) must be in the web pod's file. Traffic only ever flows
between pods these tests create, on the harness's private bridge.

Each test works in a namespace of its own (so leftovers of another test can never match), starts its own collector
and agent, and removes its pods whatever the outcome; the node itself is torn down at the end of the session.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from podcap.agent.pods.proc_source import PROC_NAMESPACE
from tests.conftest import Proc, podcap, start_proc, tool
from tests.integration.http_pods import WEB, assert_http_exchange, ip_text, ipv4_frames, wget_loop
from tests.node.harness import ContainerSpec, Pod, TestNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.timeout(120)]

# What the issue promises: a restarted or newly created pod is capturing again within this many seconds.
ATTACH_WITHIN_S = 5.0
# Packets a pod's capture must have stored before a test looks at it (a few HTTP exchanges).
MIN_PACKETS = 20


# -- fixtures ---------------------------------------------------------------------------------------------------



@pytest.fixture(scope="session")
def node(containerd_node: TestNode) -> TestNode:
    """The real containerd node (tests/node/fixtures.py), not tests/integration/conftest.py's netns node."""
    return containerd_node


@pytest.fixture
def namespace() -> str:
    return f"e2e-{secrets.token_hex(3)}"


@pytest.fixture
def pods(containerd_pods: Callable[..., Pod]) -> Callable[..., Pod]:
    """tests/integration/conftest.py's ``containerd_pods``."""
    return containerd_pods


@pytest.fixture
def agent(collector: tuple[str, str, Proc], node: TestNode, tmp_path: str) -> Iterator[Callable[[str], Proc]]:
    """Start a ``podcap-agent`` for the node with the given pod source (``cri`` or ``proc``); stopped after the test,
    which must end it cleanly."""
    started: list[Proc] = []

    def start(source: str = "cri") -> Proc:
        argv = [tool("podcap-agent"), "--insecure", "--collector", collector[0], "--node", node.node_name,
                "--pod-source", source]
        if source == "cri":
            argv += ["--cri-endpoint", "unix://" + node.socket]
        else:
            argv += ["--proc-root", "/proc"]
        p = start_proc(argv, os.path.join(tmp_path, f"agent-{source}-{len(started)}.log"))
        started.append(p)
        return p

    yield start
    codes = [(p.stop(), p) for p in started]
    for code, p in codes:
        assert code == 0, "agent did not stop cleanly on SIGTERM:\n" + p.log()


# -- CLI helpers ------------------------------------------------------------------------------------------------

# What `podcap start` says while the agent has not reported the pods yet (its inventory is sent every second).
_NOT_KNOWN_YET = ("has no pods on any connected node", "no pod ", "no pods in")


def try_start(address: str, agent: Proc, *args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    """``podcap start ARGS``, retried while the collector does not know the pods yet."""
    deadline = time.monotonic() + timeout
    while True:
        r = podcap(address, "start", *args, check=False)
        if r.returncode == 0 or not any(s in r.stderr for s in _NOT_KNOWN_YET):
            return r
        if time.monotonic() > deadline or agent.proc.poll() is not None:
            raise AssertionError(f"the collector never learned the pods ({r.stderr.strip()}):\n{agent.log()}")
        time.sleep(0.2)


def start_capture(address: str, agent: Proc, *args: str) -> str:
    r = try_start(address, agent, *args)
    assert r.returncode == 0, f"podcap start {' '.join(args)} failed:\n{r.stderr}\n{agent.log()}"
    return r.stdout.strip().splitlines()[-1]


def status(address: str, cid: str) -> dict[str, Any]:
    st: dict[str, Any] = json.loads(podcap(address, "status", cid, "-o", "json").stdout)
    return st


def pod_status(address: str, cid: str, name: str) -> dict[str, Any] | None:
    return next((p for p in status(address, cid)["pods"] if p["pod"]["name"] == name), None)


def wait_pod(address: str, cid: str, name: str, ok: Callable[[dict[str, Any]], bool], what: str,
             timeout: float = 15, agent: Proc | None = None) -> dict[str, Any]:
    """Poll ``podcap status`` until pod ``name`` satisfies ``ok``; return its status."""
    deadline = time.monotonic() + timeout
    while True:
        pod = pod_status(address, cid, name)
        if pod is not None and ok(pod):
            return pod
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: not {what} within {timeout:g} s: {pod}\n" + (agent.log() if agent else ""))
        time.sleep(0.1)


def capturing(min_packets: int = 0) -> Callable[[dict[str, Any]], bool]:
    return lambda p: p["state"] == "capturing" and int(p["packets"]) >= min_packets


def stop_and_get(address: str, cid: str, out: str) -> dict[str, Any]:
    """Stop the capture (returns once every pod's last packets are stored) and download its files into ``out``."""
    st: dict[str, Any] = json.loads(podcap(address, "stop", cid, "-o", "json").stdout)
    assert st["state"] == "done", st
    podcap(address, "get", cid, "-o", out)
    return st


def downloaded(out: str) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs}


# -- the tests ------------------------------------------------------------------------------------------------------


def test_pod_by_name_and_by_label_selector(collector: tuple[str, str, Proc], agent: Callable[[str], Proc],
                                           pods: Callable[..., Pod], namespace: str, tmp_path: str) -> None:
    """Two captures of the same web pod, one naming it and one by ``-l app=web``: each stores the client's HTTP
    requests and the answers, and nothing of the client pod (which the selector does not match)."""
    address = collector[0]
    web = pods("web-0", namespace, labels={"app": "web"}, containers=[ContainerSpec("httpd", WEB)])
    client = pods("client-0", namespace, labels={"app": "client"},
                  containers=[ContainerSpec("wget", wget_loop(web.ip))])
    a = agent("cri")
    by_name = start_capture(address, a, "-n", namespace, "web-0")
    by_label = start_capture(address, a, "-n", namespace, "-l", "app=web")
    for cid in (by_name, by_label):
        wait_pod(address, cid, "web-0", capturing(MIN_PACKETS), f"capturing {MIN_PACKETS} packets", agent=a)
    for cid in (by_name, by_label):
        out = os.path.join(tmp_path, cid)
        st = stop_and_get(address, cid, out)
        assert [p["pod"]["name"] for p in st["pods"]] == ["web-0"]
        assert st["pods"][0]["pod"]["uid"] == web.uid
        assert downloaded(out) == {f"{namespace}/web-0.pcap"}
        path = os.path.join(out, namespace, "web-0.pcap")
        assert_http_exchange(path, client.ip, web.ip)
        # The web pod's host veth carries the web pod's unicast traffic only.
        assert all(web.ip in (ip_text(ip[12:16]), ip_text(ip[16:20])) for _, ip in ipv4_frames(path, unicast_only=True))


def test_multi_container_and_non_root_pods_captured_unchanged(
    collector: tuple[str, str, Proc], node: TestNode, agent: Callable[[str], Proc], pods: Callable[..., Pod],
    namespace: str, tmp_path: str
) -> None:
    """A pod of three containers and a pod whose only container runs as uid 65534 are captured as they are: the
    agent captures from the host side and changes nothing in them (same containers, processes and user)."""
    address = collector[0]
    nobody = pods("nobody-0", namespace, containers=[ContainerSpec("httpd", WEB, run_as_user=65534)])
    multi = pods("multi-0", namespace, containers=[
        ContainerSpec("httpd", WEB), ContainerSpec("fetch", wget_loop(nobody.ip)), ContainerSpec("idle"),
    ])

    def containers(pod: Pod) -> list[tuple[str, int]]:
        assert node.client is not None
        resp = node.client.invoke("ListContainers", {"filter": {"pod_sandbox_id": pod.sandbox_id}})
        return sorted((c.id, c.state) for c in resp.containers)

    def user(pid: int) -> str:
        with open(f"/proc/{pid}/status") as f:
            return next(line.split()[1] for line in f if line.startswith("Uid:"))

    before = {p.name: containers(p) for p in (nobody, multi)}
    assert user(nobody.container_pids["httpd"]) == "65534"
    a = agent("cri")
    cid = start_capture(address, a, "-n", namespace, "nobody-0", "multi-0")
    for name in ("nobody-0", "multi-0"):
        wait_pod(address, cid, name, capturing(MIN_PACKETS), f"capturing {MIN_PACKETS} packets", agent=a)
    out = os.path.join(tmp_path, "out")
    stop_and_get(address, cid, out)
    for name in ("nobody-0", "multi-0"):
        assert_http_exchange(os.path.join(out, namespace, f"{name}.pcap"), multi.ip, nobody.ip)
    # Nothing about the pods changed: same containers, all still running, same processes, same user.
    assert {p.name: containers(p) for p in (nobody, multi)} == before
    assert all(state == 1 for cs in before.values() for _, state in cs)  # CONTAINER_RUNNING
    for pod in (nobody, multi):
        for pid in pod.container_pids.values():
            os.kill(pid, 0)
    assert user(nobody.container_pids["httpd"]) == "65534"


def test_sandbox_restart_mid_capture_is_reattached(
    collector: tuple[str, str, Proc], node: TestNode, agent: Callable[[str], Proc], pods: Callable[..., Pod],
    namespace: str, tmp_path: str
) -> None:
    """The captured client pod's sandbox is replaced as the kubelet does it (stop + remove, then a new sandbox with
    the same uid, name and namespace, attempt + 1): the pod is capturing again within 5 s, counted as one
    re-attachment with the gap in its message, and its traffic from before and after the restart is stored."""
    address = collector[0]
    web = pods("web-0", namespace, labels={"app": "web"}, containers=[ContainerSpec("httpd", WEB)])
    uid = str(uuid.uuid4())
    spec: dict[str, Any] = {"uid": uid, "labels": {"app": "client"},
                            "containers": [ContainerSpec("wget", wget_loop(web.ip))]}
    first = pods("client-0", namespace, **spec)
    a = agent("cri")
    cid = start_capture(address, a, "-n", namespace, "client-0")
    wait_pod(address, cid, "client-0", capturing(MIN_PACKETS), f"capturing {MIN_PACKETS} packets", agent=a)

    node.remove_pod(first)
    restarted_ns = time.time_ns()
    second = pods("client-0", namespace, attempt=1, **spec)
    ready = time.monotonic()
    pod = wait_pod(address, cid, "client-0", lambda p: p["state"] == "capturing" and p["reattachments"] == 1,
                   "re-attached", timeout=ATTACH_WITHIN_S, agent=a)
    assert time.monotonic() - ready <= ATTACH_WITHIN_S
    assert pod["pod"]["uid"] == uid
    assert "re-attached" in pod["message"] and "no capture for" in pod["message"], pod["message"]
    after = int(pod["packets"])
    wait_pod(address, cid, "client-0", capturing(after + MIN_PACKETS), "capturing after the restart", agent=a)

    out = os.path.join(tmp_path, "out")
    st = stop_and_get(address, cid, out)
    assert st["pods"][0]["reattachments"] == 1
    gets = assert_http_exchange(os.path.join(out, namespace, "client-0.pcap"), first.ip, web.ip)
    assert any(g.ts_ns < restarted_ns for g in gets), "no request of the first sandbox stored"
    later = assert_http_exchange(os.path.join(out, namespace, "client-0.pcap"), second.ip, web.ip)
    assert any(g.ts_ns > restarted_ns for g in later), "no request of the new sandbox stored"


def test_pod_created_mid_capture_is_attached(
    collector: tuple[str, str, Proc], agent: Callable[[str], Proc], pods: Callable[..., Pod], namespace: str,
    tmp_path: str
) -> None:
    """A selector capture attaches a matching pod created while it runs within 5 s, and stores its packets; a new
    pod that does not match stays out."""
    address = collector[0]
    pods("web-0", namespace, labels={"app": "web"}, containers=[ContainerSpec("httpd", WEB)])
    a = agent("cri")
    cid = start_capture(address, a, "-n", namespace, "-l", "app=web")
    wait_pod(address, cid, "web-0", capturing(), "capturing", agent=a)

    late = pods("web-1", namespace, labels={"app": "web"}, containers=[ContainerSpec("httpd", WEB)])
    created = time.monotonic()
    wait_pod(address, cid, "web-1", capturing(), "attached", timeout=ATTACH_WITHIN_S, agent=a)
    assert time.monotonic() - created <= ATTACH_WITHIN_S
    client = pods("client-1", namespace, labels={"app": "client"},
                  containers=[ContainerSpec("wget", wget_loop(late.ip))])
    wait_pod(address, cid, "web-1", capturing(MIN_PACKETS), f"capturing {MIN_PACKETS} packets", agent=a)

    out = os.path.join(tmp_path, "out")
    st = stop_and_get(address, cid, out)
    assert sorted(p["pod"]["name"] for p in st["pods"]) == ["web-0", "web-1"]
    assert_http_exchange(os.path.join(out, namespace, "web-1.pcap"), client.ip, late.ip)


def test_host_network_pod_by_name_is_a_clear_error(
    collector: tuple[str, str, Proc], agent: Callable[[str], Proc], pods: Callable[..., Pod], namespace: str
) -> None:
    """A hostNetwork pod has no interface of its own: naming it fails with one line, non-zero, and starts nothing."""
    address = collector[0]
    pods("hostnet-0", namespace, host_network=True)
    a = agent("cri")
    before = json.loads(podcap(address, "list", "-o", "json").stdout)
    r = try_start(address, a, "-n", namespace, "hostnet-0")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "hostNetwork" in lines[0] and f"{namespace}/hostnet-0" in lines[0], r.stderr
    assert json.loads(podcap(address, "list", "-o", "json").stdout) == before


def test_proc_fallback_captures_the_same_pod(
    collector: tuple[str, str, Proc], agent: Callable[[str], Proc], pods: Callable[..., Pod], namespace: str,
    tmp_path: str
) -> None:
    """``--pod-source proc`` knows pods only by uid (namespace ``podcap-proc``, name = uid, see proc_source.py):
    capturing ``-n podcap-proc <uid>`` stores the same web pod's HTTP traffic as the CRI source does."""
    address = collector[0]
    web = pods("web-0", namespace, labels={"app": "web"}, containers=[ContainerSpec("httpd", WEB)])
    client = pods("client-0", namespace, containers=[ContainerSpec("wget", wget_loop(web.ip))])
    a = agent("proc")
    cid = start_capture(address, a, "-n", PROC_NAMESPACE, web.uid)
    pod = wait_pod(address, cid, web.uid, capturing(MIN_PACKETS), f"capturing {MIN_PACKETS} packets", agent=a)
    assert (pod["pod"]["namespace"], pod["pod"]["uid"], pod["pod"]["labels"]) == (PROC_NAMESPACE, web.uid, {})
    out = os.path.join(tmp_path, "out")
    stop_and_get(address, cid, out)
    assert downloaded(out) == {f"{PROC_NAMESPACE}/{web.uid}.pcap"}
    assert_http_exchange(os.path.join(out, PROC_NAMESPACE, f"{web.uid}.pcap"), client.ip, web.ip)
    # The real names are unknown to this source: naming the pod fails and says where its pods are.
    r = podcap(address, "start", "-n", namespace, "web-0", check=False)
    assert r.returncode != 0 and f"namespaces with pods: {PROC_NAMESPACE}" in r.stderr, r.stderr


# -- regressions of bugs found by these tests ------------------------------------------------------------------


def test_selector_capture_skips_host_network_pods(
    collector: tuple[str, str, Proc], agent: Callable[[str], Proc], pods: Callable[..., Pod], namespace: str
) -> None:
    """``-l app=web`` matching a normal and a hostNetwork pod captures the normal one (the other has no interface
    of its own), as it does for matching pods that appear later."""
    address = collector[0]
    pods("web-0", namespace, labels={"app": "web"}, containers=[ContainerSpec("httpd", WEB)])
    pods("hostnet-0", namespace, labels={"app": "web"}, host_network=True)
    a = agent("cri")
    # Naming both waits until the collector knows both, and fails on the hostNetwork one.
    assert "hostNetwork" in try_start(address, a, "-n", namespace, "web-0", "hostnet-0").stderr
    r = podcap(address, "start", "-n", namespace, "-l", "app=web", check=False)
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip().splitlines()[-1]
    assert [p["pod"]["name"] for p in status(address, cid)["pods"]] == ["web-0"]
    podcap(address, "stop", cid)


def test_status_shows_the_ip_of_the_restarted_sandbox(
    collector: tuple[str, str, Proc], node: TestNode, agent: Callable[[str], Proc], pods: Callable[..., Pod],
    namespace: str
) -> None:
    """After a sandbox restart the pod usually has a new IP; the capture's pod status shows the current one (what a
    user filters the pod's file by)."""
    address = collector[0]
    uid = str(uuid.uuid4())
    first = pods("idle-0", namespace, uid=uid)
    a = agent("cri")
    cid = start_capture(address, a, "-n", namespace, "idle-0")
    wait_pod(address, cid, "idle-0", capturing(), "capturing", agent=a)
    node.remove_pod(first)
    second = pods("idle-0", namespace, uid=uid, attempt=1)
    assert second.ip != first.ip  # host-local IPAM hands out the next free address
    wait_pod(address, cid, "idle-0", lambda p: p["reattachments"] == 1, "re-attached", agent=a)
    wait_pod(address, cid, "idle-0", lambda p: p["pod"]["ip"] == second.ip, "showing its new IP", timeout=3)
