"""CriPodSource and ProcPodSource against real containerd pods (tests/node): inventory, netns, host veth, restarts.

Every pod a test creates is removed by the test; the node itself is torn down at the end of the session.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from podcap.agent.pods import cri
from podcap.agent.pods.cri_source import CriPodSource
from podcap.agent.pods.proc_source import PROC_NAMESPACE, ProcPodSource
from podcap.agent.pods.source import PodNotFoundError, PodSourceError
from podcap.names import NodeName, PodUid
from tests.node.harness import ContainerSpec, Pod, TestNode

pytest_plugins = ["tests.node.fixtures"]

NODE = NodeName("podcap-test-node")
node_only = [pytest.mark.root, pytest.mark.containerd]


def inode(path: str) -> int:
    return os.stat(path).st_ino


def pod_eth0_peer_ifindex(netns_path: str) -> int:
    """The ifindex of eth0's peer as `ip` itself reports it inside the pod ("eth0@if<N>")."""
    out = subprocess.run(
        ["nsenter", f"--net={netns_path}", "ip", "-o", "link", "show", "eth0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    m = re.search(r"eth0@if(\d+)", out)
    assert m, out
    return int(m.group(1))



@pytest.fixture(scope="session")
def node(containerd_node: TestNode) -> TestNode:
    """The real containerd node (tests/node/fixtures.py), not tests/integration/conftest.py's netns node."""
    return containerd_node


@pytest.fixture
def source(node: TestNode) -> Iterator[CriPodSource]:
    src = CriPodSource(NODE, node.socket)
    yield src
    src.close()


@pytest.fixture
def pods(node: TestNode) -> Iterator[list[Pod]]:
    """Pods to remove after the test, whatever its outcome."""
    made: list[Pod] = []
    yield made
    for pod in made:
        if pod.sandbox_id in node.pods:
            node.remove_pod(pod)


@pytest.mark.root
@pytest.mark.containerd
def test_inventory_has_names_labels_ip_and_sandbox(node: TestNode, source: CriPodSource, pods: list[Pod]) -> None:
    """list_pods: name, namespace, uid, the pod's labels (no io.kubernetes.*), IP from status, sandbox id as key."""
    pod = node.run_pod("web-0", "shop", labels={"app": "web", "tier": "front"})
    pods.append(pod)
    found = {p.uid: p for p in source.list_pods()}
    info = found[PodUid(pod.uid)]
    assert (info.namespace, info.name, info.node) == ("shop", "web-0", NODE)
    assert dict(info.labels) == {"app": "web", "tier": "front"}
    assert info.ip == pod.ip and info.ip.startswith(str(node.subnet).rsplit(".", 1)[0])
    assert info.host_network is False
    assert info.sandbox_key == pod.sandbox_id


@pytest.mark.root
@pytest.mark.containerd
def test_locate_gives_sandbox_netns_and_host_veth(node: TestNode, source: CriPodSource, pods: list[Pod]) -> None:
    """locate: the netns is the sandbox process's, the host veth is the peer of the pod's eth0 and on the bridge."""
    pod = node.run_pod("api-0", labels={"app": "api"})
    pods.append(pod)
    net = source.locate(PodUid(pod.uid))
    assert inode(net.netns_path) == inode(f"/proc/{pod.sandbox_pid}/ns/net")
    assert net.sandbox_key == pod.sandbox_id
    assert net.host_veth is not None
    host_index = int(open(f"/sys/class/net/{net.host_veth}/ifindex").read())
    assert pod_eth0_peer_ifindex(net.netns_path) == host_index
    assert os.path.basename(os.readlink(f"/sys/class/net/{net.host_veth}/master")) == node.bridge


@pytest.mark.root
@pytest.mark.containerd
def test_multi_container_pod_shares_the_located_netns(node: TestNode, source: CriPodSource, pods: list[Pod]) -> None:
    """All containers of a pod are in the netns locate() returns."""
    pod = node.run_pod("multi-0", containers=[ContainerSpec("a"), ContainerSpec("b"), ContainerSpec("c")])
    pods.append(pod)
    net = source.locate(PodUid(pod.uid))
    assert len(pod.container_pids) == 3
    for pid in pod.container_pids.values():
        assert inode(f"/proc/{pid}/ns/net") == inode(net.netns_path)


@pytest.mark.root
@pytest.mark.containerd
def test_non_root_container(node: TestNode, source: CriPodSource, pods: list[Pod]) -> None:
    """A pod whose only container runs as uid 65534 is located like any other."""
    pod = node.run_pod("nobody-0", containers=[ContainerSpec("app", run_as_user=65534)])
    pods.append(pod)
    pid = pod.container_pids["app"]
    uids = re.search(r"^Uid:\s+(\d+)", open(f"/proc/{pid}/status").read(), re.M)
    assert uids and uids.group(1) == "65534"
    net = source.locate(PodUid(pod.uid))
    assert inode(net.netns_path) == inode(f"/proc/{pid}/ns/net")
    assert net.host_veth is not None


@pytest.mark.root
@pytest.mark.containerd
@pytest.mark.parametrize("cgroup_driver", ["cgroupfs", "systemd"])
def test_proc_fallback_matches_cri(node: TestNode, source: CriPodSource, pods: list[Pod], cgroup_driver: str) -> None:
    """ProcPodSource finds the same netns and veth as the CRI path, from either cgroup naming."""
    pod = node.run_pod(
        f"proc-{cgroup_driver}",
        containers=[ContainerSpec("a"), ContainerSpec("b")],
        qos="burstable",
        cgroup_driver=cgroup_driver,
    )
    pods.append(pod)
    via_cri = source.locate(PodUid(pod.uid))
    proc = ProcPodSource(NODE)
    via_proc = proc.locate(PodUid(pod.uid))
    assert inode(via_proc.netns_path) == inode(via_cri.netns_path)
    assert via_proc.netns_path == f"/proc/{pod.sandbox_pid}/ns/net"  # the sandbox, not a container
    assert via_proc.host_veth == via_cri.host_veth
    listed = {p.uid: p for p in proc.list_pods()}
    assert listed[PodUid(pod.uid)].namespace == PROC_NAMESPACE
    assert listed[PodUid(pod.uid)].sandbox_key == via_proc.sandbox_key


@pytest.mark.root
@pytest.mark.containerd
def test_sandbox_restart_changes_key(node: TestNode, source: CriPodSource, pods: list[Pod]) -> None:
    """Stop+remove+run again with the same uid: new sandbox key and new netns, same pod."""
    uid = str(uuid.uuid4())
    first = node.run_pod("restart-0", uid=uid)
    pods.append(first)
    before = source.locate(PodUid(uid))
    node.remove_pod(first)
    second = node.run_pod("restart-0", uid=uid, attempt=1)
    pods.append(second)
    after = source.locate(PodUid(uid))
    assert after.sandbox_key == second.sandbox_id != before.sandbox_key
    # Not "a different netns inode": the kernel reuses namespace inode numbers once the old one is freed.
    assert after.netns_path != before.netns_path  # containerd names each sandbox's netns afresh (cni-<uuid>)
    assert inode(after.netns_path) == inode(f"/proc/{second.sandbox_pid}/ns/net")


@pytest.mark.root
@pytest.mark.containerd
def test_newest_ready_sandbox_wins(node: TestNode, source: CriPodSource, pods: list[Pod]) -> None:
    """While the kubelet replaces a sandbox the old one lingers NOTREADY: locate and list_pods use the new one."""
    uid = str(uuid.uuid4())
    old = node.run_pod("replace-0", uid=uid)
    pods.append(old)
    node.stop_pod(old)
    with pytest.raises(PodNotFoundError):
        source.locate(PodUid(uid))
    new = node.run_pod("replace-0", uid=uid, attempt=1)
    pods.append(new)
    assert source.locate(PodUid(uid)).sandbox_key == new.sandbox_id
    listed = [p for p in source.list_pods() if p.uid == uid]
    assert [p.sandbox_key for p in listed] == [new.sandbox_id]


@pytest.mark.root
@pytest.mark.containerd
def test_host_network_pod(node: TestNode, source: CriPodSource, pods: list[Pod]) -> None:
    """A hostNetwork pod is reported as such and located in the host's namespace, without a veth."""
    pod = node.run_pod("hostnet-0", host_network=True)
    pods.append(pod)
    info = {p.uid: p for p in source.list_pods()}[PodUid(pod.uid)]
    assert info.host_network is True
    net = source.locate(PodUid(pod.uid))
    assert inode(net.netns_path) == inode("/proc/self/ns/net")
    assert net.host_veth is None


@pytest.mark.root
@pytest.mark.containerd
def test_unknown_uid_is_not_found(node: TestNode, source: CriPodSource) -> None:
    with pytest.raises(PodNotFoundError):
        source.locate(PodUid(str(uuid.uuid4())))
    with pytest.raises(PodNotFoundError):
        ProcPodSource(NODE).locate(PodUid(str(uuid.uuid4())))


# -- errors without a node (no root needed) ---------------------------------------------------------------------


def test_missing_socket_says_what_to_do(tmp_path: Path) -> None:
    src = CriPodSource(NODE, f"unix://{tmp_path}/nope.sock", timeout=1)
    with pytest.raises(PodSourceError, match="does not exist: is the container runtime running"):
        src.list_pods()
    src.close()


def test_socket_that_is_not_cri_times_out_or_fails_cleanly(tmp_path: Path) -> None:
    path = f"{tmp_path}/silent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        src = CriPodSource(NODE, path, timeout=0.5)
        with pytest.raises(PodSourceError, match=r"CRI ListPodSandbox at unix://"):
            src.list_pods()
        src.close()


def test_detect_endpoint_prefers_first_existing_socket(tmp_path: Path) -> None:
    host = f"{tmp_path}/host"
    os.makedirs(f"{host}/run/crio")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(f"{host}/run/crio/crio.sock")
        assert cri.detect_endpoint(host_roots=[str(tmp_path), host]) == f"{host}/run/crio/crio.sock"
    with pytest.raises(PodSourceError, match="no container runtime"):
        cri.detect_endpoint(host_roots=[str(tmp_path)])
