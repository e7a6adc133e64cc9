"""A throwaway node for the demo and the tests: a bridge and pods made of named network namespaces.

Each pod is ``/run/netns/<namespace>.<pod>`` (what ``--pod-source netns`` reads) with an ``eth0`` whose veth peer
sits on a private bridge in the host namespace. The bridge has no address: pods talk only to each other, never to
the host or beyond. Everything is named with a random suffix so parallel runs do not collide, and ``destroy``
removes all of it (processes first, then namespaces, veths, bridge), also after partial creation.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field

from podcap.errors import ResourceError

NETNS_DIR = "/run/netns"


class NodeSetupError(ResourceError):
    pass


def _publish(staging: str, name: str) -> None:
    """Give the network namespace ``staging`` its final name ``name`` under /run/netns (a second bind mount of the
    same namespace, then the staging name removed)."""
    final = os.path.join(NETNS_DIR, name)
    try:
        with open(final, "x"):
            pass
    except OSError as e:
        raise NodeSetupError(f"cannot create {final}: {e.strerror}") from e
    r = subprocess.run(["mount", "--bind", os.path.join(NETNS_DIR, staging), final], capture_output=True, text=True)
    if r.returncode != 0:
        os.unlink(final)
        raise NodeSetupError(f"mount --bind {staging} {final}: {r.stderr.strip()}")
    _ip("netns", "del", staging)


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise NodeSetupError(f"ip {' '.join(args)}: {r.stderr.strip()}")


@dataclass
class DemoPod:
    namespace: str
    name: str
    ip: str
    host_veth: str

    @property
    def netns(self) -> str:
        return f"{self.namespace}.{self.name}"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"


@dataclass
class DemoNode:
    namespace: str = field(default_factory=lambda: "demo-" + secrets.token_hex(3))
    subnet_octet: int = field(default_factory=lambda: 64 + secrets.randbelow(128))
    pods: list[DemoPod] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.bridge = f"pcbr{self.tag}"
        self._created = 0
        self._staging: list[str] = []  # namespaces being wired (removed by destroy if creation failed half-way)

    def create(self, names: list[str]) -> DemoNode:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("link", "set", self.bridge, "up")
            for name in names:
                self.add_pod(name)
        except BaseException:
            self.destroy()
            raise
        return self

    def add_pod(self, name: str) -> DemoPod:
        i = self._created
        self._created += 1
        pod = DemoPod(self.namespace, name, f"10.213.{self.subnet_octet}.{10 + i}", f"pc{self.tag}h{i}")
        pod_side = f"pc{self.tag}p{i}"
        # Wired under a staging name (no dot: no pod source reads it) and published under the pod's name only when
        # its network is up, as a runtime reports a sandbox ready only after its network is set up: an agent that
        # lists pods meanwhile never sees a pod without its eth0.
        staging = f"pc{self.tag}s{i}"
        _ip("netns", "add", staging)
        self._staging.append(staging)
        self.pods.append(pod)
        _ip("link", "add", pod.host_veth, "type", "veth", "peer", "name", pod_side)
        _ip("link", "set", pod_side, "netns", staging)
        _ip("-n", staging, "link", "set", pod_side, "name", "eth0")
        _ip("-n", staging, "addr", "add", f"{pod.ip}/24", "dev", "eth0")
        _ip("-n", staging, "link", "set", "lo", "up")
        _ip("-n", staging, "link", "set", "eth0", "up")
        _ip("link", "set", pod.host_veth, "master", self.bridge)
        _ip("link", "set", pod.host_veth, "up")
        _publish(staging, pod.netns)
        self._staging.remove(staging)
        return pod

    def remove_pod(self, pod: DemoPod) -> None:
        subprocess.run(["ip", "link", "del", pod.host_veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", pod.netns], capture_output=True)
        self.pods = [p for p in self.pods if p is not pod]

    def pod(self, name: str) -> DemoPod:
        for p in self.pods:
            if p.name == name:
                return p
        raise KeyError(name)

    def spawn(self, pod: DemoPod, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        """Start a process inside the pod's network namespace; it is killed by ``destroy``."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", pod.netns, *argv], start_new_session=True, **kw
        )
        self.processes.append(proc)
        return proc

    def exec(self, pod: DemoPod, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["ip", "netns", "exec", pod.netns, *argv], capture_output=True, timeout=timeout)

    def stop_processes(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 3
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self.processes.clear()

    def destroy(self) -> None:
        """Remove everything this node created. Safe to call more than once."""
        self.stop_processes()
        for pod in list(self.pods):
            self.remove_pod(pod)
        for staging in self._staging:
            subprocess.run(["ip", "netns", "del", staging], capture_output=True)
        self._staging.clear()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
