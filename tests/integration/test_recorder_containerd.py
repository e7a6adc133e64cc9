"""Issue 24 on real containerd pods (tests/node): a busybox container OOM-killed by its memory limit, and one whose
process is killed and restarted, each make the recorder save the pod's ring, and the save's file holds the pod's
numbered datagrams from before the kill, up to its last ones; the pod gets a ``PacketsSaved`` Event.

There is no kubelet here, so the test plays its status part: it reads the container's end from the CRI
(``ContainerStatus``: reason ``OOMKilled`` from containerd's OOM event, or ``Error``), starts the next attempt of the
container in the same sandbox as the kubelet does, and writes the pod's status (restartCount, lastState) to the API
stand-in, which the collector watches. The agent (``--pod-source cri``, rings on its disk) and the collector are
real."""

from __future__ import annotations

import datetime
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from podcap.agent.pods import cri
from podcap.collector.cli.client import CollectorClient
from podcap.collector.kube.inventory import ClusterInventory
from podcap.collector.server import Collector, start_collector
from podcap.v1 import common_pb2, control_pb2
from tests.conftest import Proc, start_proc, tool
from tests.integration.helpers import stored_seqs
from tests.kubeapi.helpers import api_for
from tests.kubeapi.standin import KubeApiStandin
from tests.node.harness import BUSYBOX_IMAGE, Pod, TestNode

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.timeout(240)]
PORT = 9999
R = control_pb2


@pytest.fixture(scope="session")
def node(containerd_node: TestNode) -> TestNode:
    return containerd_node


@dataclass
class World:
    node: TestNode
    namespace: str
    standin: KubeApiStandin
    collector: Collector
    address: str
    agent: Proc
    workdir: str
    pods: list[Pod]


@pytest.fixture
def world(node: TestNode, tmp_path: str) -> Iterator[World]:
    standin = KubeApiStandin()
    cluster = ClusterInventory(api_for(standin, str(tmp_path))).start()
    assert cluster.wait_synced(10)
    c = start_collector("127.0.0.1:0", os.path.join(tmp_path, "data"), cluster=cluster)
    address = f"127.0.0.1:{c.port}"
    agent = start_proc([tool("podcap-agent"), "--insecure", "--collector", address, "--node", node.node_name,
                        "--pod-source", "cri", "--cri-endpoint", "unix://" + node.socket, "--ring-dir",
                        os.path.join(tmp_path, "rings"), "--ring-min-free", "0"], os.path.join(tmp_path, "agent.log"))
    w = World(node, f"rec-{secrets.token_hex(3)}", standin, c, address, agent, str(tmp_path), [])
    try:
        yield w
    finally:
        agent.stop()
        c.stop(0)
        standin.close()
        for p in w.pods:
            if p.sandbox_id in node.pods:
                node.remove_pod(p)


def sandbox_config(node: TestNode, pod: Pod) -> dict[str, Any]:
    """The sandbox config ``run_pod`` made the pod with (CreateContainer needs it again)."""
    ns_opts = {"network": "POD", "pid": "CONTAINER", "ipc": "POD"}
    return {"metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid, "attempt": 0},
            "log_directory": os.path.join(node.workdir, "logs", "pods", f"{pod.namespace}_{pod.name}_{pod.uid}"),
            "linux": {"cgroup_parent": pod.cgroup_parent, "security_context": {"namespace_options": ns_opts}}}


def start_container(node: TestNode, pod: Pod, name: str, command: list[str], *, attempt: int,
                    memory_limit: int = 0, mounts: list[dict[str, Any]] | None = None) -> str:
    """A container in the pod's sandbox, as the kubelet starts one (and each restart, with the next attempt)."""
    client = node.cri_client()
    linux: dict[str, Any] = {"security_context": {"namespace_options": {"network": "POD", "pid": "CONTAINER",
                                                                        "ipc": "POD"}}}
    if memory_limit:
        linux["resources"] = {"memory_limit_in_bytes": memory_limit}
    config = {"metadata": {"name": name, "attempt": attempt}, "image": {"image": BUSYBOX_IMAGE},
              "command": command, "log_path": f"{name}/{attempt}.log", "mounts": mounts or [],
              "labels": {"io.kubernetes.container.name": name, "io.kubernetes.pod.name": pod.name,
                         "io.kubernetes.pod.namespace": pod.namespace, "io.kubernetes.pod.uid": pod.uid},
              "linux": linux}
    cid = str(client.invoke("CreateContainer", {"pod_sandbox_id": pod.sandbox_id, "config": config,
                                                "sandbox_config": sandbox_config(node, pod)},
                            timeout=60).container_id)
    client.invoke("StartContainer", {"container_id": cid}, timeout=60)
    return cid


def container_end(node: TestNode, cid: str, timeout: float = 30) -> tuple[str, int]:
    """(reason, exit code) once the container has exited."""
    deadline = time.monotonic() + timeout
    while True:
        st = node.cri_client().invoke("ContainerStatus", {"container_id": cid}).status
        if int(st.state) == 2:  # CONTAINER_EXITED
            return str(st.reason), int(st.exit_code)
        assert time.monotonic() < deadline, f"container {cid} did not exit"
        time.sleep(0.1)


def container_pid(node: TestNode, cid: str) -> int:
    resp = node.cri_client().invoke("ContainerStatus", {"container_id": cid, "verbose": True})
    return cri.sandbox_pid(cri.decode_info(resp.info))


def report_restart(w: World, pod: Pod, container: str, old: str, new: str, reason: str, code: int,
                   restarts: int, finished_ns: int) -> None:
    """What the kubelet writes to the API after a container ended and its next attempt started (a few seconds
    later in a real cluster: the recorder dates the trigger by finishedAt)."""
    finished = datetime.datetime.fromtimestamp(finished_ns / 1e9, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def change(obj: dict[str, Any]) -> None:
        obj["status"]["containerStatuses"] = [{
            "name": container, "image": BUSYBOX_IMAGE, "imageID": "", "ready": True, "started": True,
            "restartCount": restarts, "containerID": "containerd://" + new,
            "state": {"running": {"startedAt": "2026-12-08T00:00:10Z"}},
            "lastState": {"terminated": {"reason": reason, "exitCode": code, "containerID": "containerd://" + old,
                                         "finishedAt": finished}}}]
    w.standin.modify("pods", pod.namespace, pod.name, change)


class Sender:
    """Numbered datagrams (the ``PODCAPSEQ`` payload) from a client pod to the recorded pod, 200 a second, until
    stopped; ``sent()`` is the last number sent."""

    def __init__(self, client: Pod, ip: str, progress: str) -> None:
        self.progress = progress
        code = ("import socket, time, os\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nseq = 0\n"
                "while True:\n"
                f"    s.sendto(b'PODCAPSEQ' + bytes(4) + seq.to_bytes(4, 'big'), ('{ip}', {PORT}))\n"
                f"    open('{progress}.tmp', 'w').write(str(seq)); os.replace('{progress}.tmp', '{progress}')\n"
                "    seq += 1\n    time.sleep(0.005)\n")
        self.proc = subprocess.Popen(["nsenter", f"--net={client.netns_path}", sys.executable, "-c", code])

    def sent(self) -> int:
        with open(self.progress) as f:
            return int(f.read() or -1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def wait_for(ok: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (v := ok()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return v


def recorded(w: World, name: str, *, on: list[int]) -> tuple[Pod, Pod, CollectorClient, str]:
    """The pod ``name`` (sandbox only) and a client pod, both in the API; a recorder on ``name``."""
    app = w.node.run_pod(name, w.namespace, containers=())
    client = w.node.run_pod(f"{name}-client", w.namespace, containers=())
    w.pods += [app, client]
    for p in (app, client):
        w.standin.add_pod(w.namespace, p.name, uid=p.uid, node=w.node.node_name, ip=p.ip, labels={"app": p.name})
    cli = CollectorClient(w.address)
    deadline = time.monotonic() + 30
    while True:  # until the agent's inventory has the pod's sandbox
        try:
            rec = cli.record(R.StartRecorderRequest(
                target=R.Target(namespace=w.namespace, pod_names=[name]),
                settings=common_pb2.CaptureSettings(filter=f"udp port {PORT}"),
                keep_seconds=120, before_ms=10_000, after_ms=1000, on=on))
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    wait_for(lambda: [p.state for p in cli.get_recorder(rec.id).pods] == ["recording"],
             what="the ring recording:\n" + w.agent.log()[-3000:])
    return app, client, cli, rec.id


def check_save(w: World, cli: CollectorClient, rid: str, app: Pod, reason: int, last_before: int,
               finished_ns: int) -> None:
    save = wait_for(lambda: [s for s in cli.get_recorder(rid).saves
                             if reason in [t.reason for t in s.info.triggers]], what="the save")[0]
    # Dated by the termination's finishedAt, not by when the (late) status report came.
    assert abs(save.info.triggers[0].unix_ns - finished_ns) < 500_000_000
    wait_for(lambda: cli.get(save.capture_id).state == R.CAPTURE_STATE_DONE, what="the save's end")
    st = cli.get(save.capture_id)
    assert st.pods[0].final and st.pods[0].unaccounted == 0, st.pods[0]
    seqs = stored_seqs(cli, save.capture_id)
    assert seqs and seqs == list(range(seqs[0], seqs[-1] + 1)), "a hole in the saved window"
    assert seqs[-1] >= last_before, (seqs[-1], last_before)  # the last packets before the kill are there
    assert last_before - seqs[0] > 500  # and seconds of them from before it
    ev = wait_for(lambda: [e for e in w.standin.objects("events", w.namespace)
                           if e.get("reason") == "PacketsSaved" and e["involvedObject"]["name"] == app.name],
                  what="the PacketsSaved Event")[0]
    assert save.capture_id in ev["message"]


def test_an_oom_killed_container_saves_the_pods_packets_from_before_the_kill(world: World) -> None:
    w = world
    app, client, cli, rid = recorded(w, "hog", on=[R.RECORDER_TRIGGER_OOMKILLED])
    go = os.path.join(w.workdir, "go")
    os.makedirs(go)
    # Waits for the word, then holds 400 MB in a shell variable under a 24 MiB limit: the kernel's OOM killer.
    hog = ["/bin/sh", "-c", "while [ ! -e /go/now ]; do sleep 0.1; done; "
           "a=$(head -c 400000000 /dev/zero | tr '\\000' x); echo survived"]
    cid = start_container(w.node, app, "hog", hog, attempt=0, memory_limit=24 << 20,
                          mounts=[{"container_path": "/go", "host_path": go}])
    sender = Sender(client, app.ip, os.path.join(w.workdir, "sent"))
    try:
        time.sleep(4)
        open(os.path.join(go, "now"), "w").close()
        reason, code = container_end(w.node, cid)
        finished, last_before = time.time_ns(), sender.sent()
        assert reason == "OOMKilled", (reason, code)
        new = start_container(w.node, app, "hog", ["/bin/sleep", "3600"], attempt=1)
        time.sleep(2)  # the kubelet's status report comes later than the kill
        report_restart(w, app, "hog", cid, new, reason, code, 1, finished)
        time.sleep(1.5)
    finally:
        sender.stop()
    check_save(w, cli, rid, app, R.RECORDER_TRIGGER_OOMKILLED, last_before, finished)
    cli.close()


def test_a_killed_and_restarted_container_saves_the_pods_packets_from_before_the_kill(world: World) -> None:
    w = world
    app, client, cli, rid = recorded(w, "crashy", on=[R.RECORDER_TRIGGER_RESTART])
    cid = start_container(w.node, app, "main", ["/bin/sleep", "3600"], attempt=0)
    sender = Sender(client, app.ip, os.path.join(w.workdir, "sent"))
    try:
        time.sleep(4)
        os.kill(container_pid(w.node, cid), signal.SIGKILL)
        reason, code = container_end(w.node, cid)
        finished, last_before = time.time_ns(), sender.sent()
        new = start_container(w.node, app, "main", ["/bin/sleep", "3600"], attempt=1)
        time.sleep(2)  # the kubelet's status report comes later than the kill
        report_restart(w, app, "main", cid, new, reason or "Error", code, 1, finished)
        time.sleep(1.5)
    finally:
        sender.stop()
    check_save(w, cli, rid, app, R.RECORDER_TRIGGER_RESTART, last_before, finished)
    cli.close()
