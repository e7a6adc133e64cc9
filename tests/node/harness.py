"""A real, single Kubernetes-like node for integration tests: containerd (CRI) + runc + the CNI bridge plugin.

``TestNode.start()`` compiles a static pause binary, builds the pause and busybox images as OCI archives, writes
a containerd config whose root, state, socket and CNI configuration all live in a private temporary directory (a
bridge and a /24 of its own, so it never touches another node on the machine), starts containerd and imports the
images. ``run_pod`` then behaves like a kubelet: sandbox with the pod's labels and the kubelet's
``io.kubernetes.pod.*`` labels, cgroup parent in the kubelet's cgroupfs or systemd naming, containers started in it.

``teardown()`` removes every trace also after failed tests: sandboxes, containerd and its shims (by pid, only those
serving our socket), mounts under the temporary directory, the CNI network namespaces and results, the bridge, the
pod cgroups (rmdir only: never a cgroup that still holds a process), and ``net.ipv4.ip_forward`` (the bridge
plugin turns it on). It collects errors and raises one ``NodeTeardownError`` at the end, after trying everything.

Requirements (Debian): ``containerd runc containernetworking-plugins busybox-static iptables gcc libc6-dev``, root.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from podcap.agent.pods import cri
from podcap.agent.pods.source import PodSourceError
from tests.node import cri_runtime, images

HERE = os.path.dirname(os.path.abspath(__file__))
CNI_BIN_DIR = "/usr/lib/cni"
PAUSE_IMAGE = "localhost/podcap-test/pause:1.0"
BUSYBOX_IMAGE = "localhost/podcap-test/busybox:1.0"
_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "gcc", "ip")
_CNI_PLUGINS = ("bridge", "host-local", "loopback")
_BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


class NodeTeardownError(RuntimeError):
    pass


def find_busybox() -> str | None:
    for path in _BUSYBOX_CANDIDATES:
        if os.path.exists(path) and images.is_static_elf(path):
            return path
    return None


def missing_requirements() -> list[str]:
    """What this machine lacks to run a test node (empty when it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    missing += [
        tool for tool in _TOOLS if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
    ]
    missing += [f"{CNI_BIN_DIR}/{p}" for p in _CNI_PLUGINS if not os.access(f"{CNI_BIN_DIR}/{p}", os.X_OK)]
    if find_busybox() is None:
        missing.append("static busybox (busybox-static)")
    if not os.path.exists("/usr/lib/x86_64-linux-gnu/libc.a") and not os.path.exists("/usr/lib/libc.a"):
        missing.append("static libc (libc6-dev)")
    return missing


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    command: Sequence[str] = ("/bin/sleep", "3600")
    run_as_user: int | None = None


@dataclass
class Pod:
    name: str
    namespace: str
    uid: str
    sandbox_id: str
    ip: str
    sandbox_pid: int
    netns_path: str
    cgroup_parent: str
    container_ids: dict[str, str] = field(default_factory=dict)
    container_pids: dict[str, int] = field(default_factory=dict)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _run(*argv: str, timeout: float = 60) -> str:
    res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def _cgroup_mounts() -> list[str]:
    out = []
    for line in _read("/proc/self/mounts").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] in ("cgroup", "cgroup2"):
            out.append(parts[1])
    return out


def _mounts_under(root: str) -> list[str]:
    out = []
    for line in _read("/proc/self/mountinfo").splitlines():
        mnt = line.split()[4].replace("\\040", " ")
        if mnt == root or mnt.startswith(root.rstrip("/") + "/"):
            out.append(mnt)
    return sorted(out, key=len, reverse=True)


def _free_subnet() -> ipaddress.IPv4Network:
    routes = _run("ip", "-4", "route", "show", "table", "all")
    used = []
    for line in routes.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("local", "broadcast", "unreachable"):
            word = line.split()[1]
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(word, strict=False))
    # From a random start: nodes of tests running in parallel on one machine pick their subnet before their CNI
    # plugin creates the bridge (and the route), so scanning in order made them pick the same one.
    thirds = list(range(77, 250))
    start = secrets.randbelow(len(thirds))
    for third in thirds[start:] + thirds[:start]:
        net = ipaddress.IPv4Network(f"10.244.{third}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError("no free 10.244.x.0/24 subnet for the test node's bridge")


class TestNode:
    """One containerd "node" under ``workdir``. Use ``start()`` / ``teardown()``, or the ``node`` fixture."""

    __test__ = False  # not a pytest test class

    def __init__(self, workdir: str | None = None, *, node_name: str = "podcap-test-node") -> None:
        self.workdir = workdir or tempfile.mkdtemp(prefix="podcap-node-")
        self.node_name = node_name
        tag = secrets.token_hex(3)
        self.network_name = f"podcap-test-{tag}"
        self.bridge = f"pcbr-{tag}"  # <= 15 characters (IFNAMSIZ)
        self.subnet: ipaddress.IPv4Network | None = None
        self.socket = os.path.join(self.workdir, "containerd", "containerd.sock")
        self.client: cri.CriClient | None = None
        self._containerd: subprocess.Popen[bytes] | None = None
        self._ip_forward: str | None = None
        self._netns_paths: set[str] = set()
        self._cgroup_parents: set[str] = set()
        self.pods: dict[str, Pod] = {}  # sandbox id -> pod

    # -- setup ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._ip_forward = _read("/proc/sys/net/ipv4/ip_forward").strip()
        self.subnet = _free_subnet()
        for d in ("containerd/root", "containerd/state", "containerd/opt", "cni/net.d", "cni/ipam", "images", "logs"):
            os.makedirs(os.path.join(self.workdir, d), exist_ok=True)
        self._build_images()
        self._write_configs()
        self._start_containerd()
        for image in ("pause", "busybox"):
            tar = os.path.join(self.workdir, "images", f"{image}.oci.tar")
            _run("ctr", "-a", self.socket, "-n", "k8s.io", "images", "import", tar, timeout=120)

    def _build_images(self) -> None:
        out = os.path.join(self.workdir, "images")
        pause = os.path.join(out, "pause")
        _run("gcc", "-static", "-Os", "-s", "-o", pause, os.path.join(HERE, "pause.c"))
        images.pause_image(os.path.join(out, "pause.oci.tar"), PAUSE_IMAGE, pause)
        busybox = find_busybox()
        assert busybox is not None
        images.busybox_image(os.path.join(out, "busybox.oci.tar"), BUSYBOX_IMAGE, busybox)

    def _write_configs(self) -> None:
        assert self.subnet is not None
        w = self.workdir
        hosts = list(self.subnet.hosts())
        cni = {
            "cniVersion": "0.4.0",
            "name": self.network_name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": f"{w}/cni/ipam",
                        "ranges": [[{"subnet": str(self.subnet), "gateway": str(hosts[0])}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                }
            ],
        }
        _write(f"{w}/cni/net.d/10-{self.network_name}.conflist", json.dumps(cni, indent=1))
        # containerd 1.6 (Debian bookworm). restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE.
        config = f"""version = 2
root = "{w}/containerd/root"
state = "{w}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.socket}"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE_IMAGE}"
    enable_selinux = false
    disable_apparmor = true
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{CNI_BIN_DIR}"
      conf_dir = "{w}/cni/net.d"
      max_conf_num = 1
  [plugins."io.containerd.internal.v1.opt"]
    path = "{w}/containerd/opt"
"""
        _write(f"{w}/containerd/config.toml", config)

    def _start_containerd(self) -> None:
        with open(os.path.join(self.workdir, "logs", "containerd.log"), "wb") as log:
            self._containerd = subprocess.Popen(
                ["containerd", "--config", os.path.join(self.workdir, "containerd", "config.toml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        client = cri_runtime.client(self.socket, timeout=5)
        deadline = time.monotonic() + 30
        while True:
            if self._containerd.poll() is not None:
                raise RuntimeError(f"containerd exited ({self._containerd.returncode}):\n{self.log_tail()}")
            try:
                client.version()
                break
            except PodSourceError:
                if time.monotonic() > deadline:
                    client.close()
                    raise RuntimeError(f"containerd did not serve CRI within 30s:\n{self.log_tail()}") from None
                time.sleep(0.1)
        self.client = client

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(_read(os.path.join(self.workdir, "logs", "containerd.log")).splitlines()[-lines:])
        except OSError:
            return "(no containerd log)"

    # -- for other kubelets (tests/node/kubelet.py) ------------------------------------------------------------

    @property
    def gateway(self) -> str:
        """The node's own address on its pod bridge (what pods reach the node by)."""
        assert self.subnet is not None
        return str(next(self.subnet.hosts()))

    def ensure_bridge(self) -> None:
        """Create the pod bridge with the gateway address now (the CNI plugin otherwise creates it with the first
        pod, and adopts an existing one), so services for pods can bind the gateway before any pod exists."""
        if os.path.exists(f"/sys/class/net/{self.bridge}"):
            return
        assert self.subnet is not None
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")

    def import_image(self, archive: str) -> None:
        """Import an oci-layout tar into the CRI's image store (the names its index annotates)."""
        _run("ctr", "-a", self.socket, "-n", "k8s.io", "images", "import", archive, timeout=300)

    def cri_client(self) -> cri.CriClient:
        return self._cri()

    def track_cgroup_parent(self, parent: str) -> None:
        """Remove this pod cgroup at teardown."""
        self._cgroup_parents.add(parent)

    def track_sandbox(self, info: Mapping[str, str]) -> None:
        """Remove this sandbox's network namespace at teardown (from its verbose status ``info``)."""
        netns = cri.sandbox_netns_path(info)
        if netns:
            self._netns_paths.add(netns)

    # -- pods -----------------------------------------------------------------------------------------------

    def _cri(self) -> cri.CriClient:
        if self.client is None:
            raise RuntimeError("the test node is not started")
        return self.client

    def run_pod(
        self,
        name: str,
        namespace: str = "default",
        uid: str | None = None,
        labels: Mapping[str, str] | None = None,
        containers: Sequence[ContainerSpec | tuple[str, Sequence[str], int | None]] = (ContainerSpec("main"),),
        *,
        qos: str = "besteffort",
        cgroup_driver: str = "cgroupfs",
        host_network: bool = False,
        attempt: int = 0,
    ) -> Pod:
        """Create a pod sandbox and start its containers, like the kubelet does; returns ids, IP and pids."""
        uid = uid or str(uuid.uuid4())
        client = self._cri()
        if cgroup_driver == "systemd":
            # The kubelet's systemd naming. For a parent ending in ".slice" containerd emits the systemd
            # "slice:cri-containerd:<id>" cgroupsPath, which runc's cgroupfs manager (no systemd here) creates
            # literally: "/kubepods-<qos>-pod<uid_>.slice:cri-containerd:<id>". The pod-slice name is what the
            # /proc source parses; runc removes that leaf with the container.
            under = uid.replace("-", "_")
            qos_part = "" if qos == "guaranteed" else f"-{qos}"
            parent = "/kubepods.slice" + (f"/kubepods{qos_part}.slice" if qos_part else "")
            parent += f"/kubepods{qos_part}-pod{under}.slice"
        else:
            parent = "/kubepods" + ("" if qos == "guaranteed" else f"/{qos}") + f"/pod{uid}"
        self._cgroup_parents.add(parent)
        logdir = os.path.join(self.workdir, "logs", "pods", f"{namespace}_{name}_{uid}")
        os.makedirs(logdir, exist_ok=True)
        ns_opts = {"network": "NODE" if host_network else "POD", "pid": "CONTAINER", "ipc": "POD"}
        config: dict[str, Any] = {
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "attempt": attempt},
            "hostname": "" if host_network else name,  # the kubelet leaves it empty for hostNetwork
            "log_directory": logdir,
            "dns_config": {"servers": ["127.0.0.1"]},
            "labels": {
                **(labels or {}),
                "io.kubernetes.pod.name": name,
                "io.kubernetes.pod.namespace": namespace,
                "io.kubernetes.pod.uid": uid,
            },
            "annotations": {"kubernetes.io/config.source": "api"},
            "linux": {"cgroup_parent": parent, "security_context": {"namespace_options": ns_opts}},
        }
        sandbox_id = client.invoke("RunPodSandbox", {"config": config}, timeout=60).pod_sandbox_id
        status = client.sandbox_status(sandbox_id, verbose=True)
        netns = cri.sandbox_netns_path(status.info)
        if netns:
            self._netns_paths.add(netns)
        pod = Pod(
            name=name,
            namespace=namespace,
            uid=uid,
            sandbox_id=sandbox_id,
            ip=status.ip,
            sandbox_pid=cri.sandbox_pid(status.info),
            netns_path=netns,
            cgroup_parent=parent,
        )
        self.pods[sandbox_id] = pod
        for spec in containers:
            if not isinstance(spec, ContainerSpec):
                spec = ContainerSpec(spec[0], tuple(spec[1]), spec[2])
            security: dict[str, Any] = {"namespace_options": ns_opts}
            if spec.run_as_user is not None:
                security["run_as_user"] = {"value": spec.run_as_user}
                security["run_as_group"] = {"value": spec.run_as_user}
            ctr_config = {
                "metadata": {"name": spec.name, "attempt": attempt},
                "image": {"image": BUSYBOX_IMAGE},
                "command": list(spec.command),
                "log_path": f"{spec.name}/0.log",
                "labels": {
                    "io.kubernetes.container.name": spec.name,
                    "io.kubernetes.pod.name": name,
                    "io.kubernetes.pod.namespace": namespace,
                    "io.kubernetes.pod.uid": uid,
                },
                "linux": {"security_context": security},
            }
            cid = client.invoke(
                "CreateContainer",
                {"pod_sandbox_id": sandbox_id, "config": ctr_config, "sandbox_config": config},
                timeout=60,
            ).container_id
            client.invoke("StartContainer", {"container_id": cid}, timeout=60)
            resp = client.invoke("ContainerStatus", {"container_id": cid, "verbose": True})
            pod.container_ids[spec.name] = cid
            pod.container_pids[spec.name] = cri.sandbox_pid(cri.decode_info(resp.info))
        return pod

    def stop_pod(self, pod: Pod) -> None:
        self._cri().invoke("StopPodSandbox", {"pod_sandbox_id": pod.sandbox_id}, timeout=60)

    def remove_pod(self, pod: Pod) -> None:
        client = self._cri()
        client.invoke("StopPodSandbox", {"pod_sandbox_id": pod.sandbox_id}, timeout=60)
        client.invoke("RemovePodSandbox", {"pod_sandbox_id": pod.sandbox_id}, timeout=60)
        self.pods.pop(pod.sandbox_id, None)

    def remove_all_pods(self) -> None:
        client = self._cri()
        for sb in client.list_sandboxes(ready_only=False):
            client.invoke("StopPodSandbox", {"pod_sandbox_id": sb.id}, timeout=60)
            client.invoke("RemovePodSandbox", {"pod_sandbox_id": sb.id}, timeout=60)
        self.pods.clear()

    # -- teardown -------------------------------------------------------------------------------------------

    def teardown(self) -> None:
        errors: list[str] = []

        def attempt(what: str, fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - teardown must try every step
                errors.append(f"{what}: {e}")

        if self.client is not None and self._containerd is not None and self._containerd.poll() is None:
            attempt("remove sandboxes", self.remove_all_pods)
        if self.client is not None:
            self.client.close()
            self.client = None
        attempt("stop containerd", self._stop_containerd)
        attempt("stop shims", self._kill_shims)
        attempt("unmount", self._unmount_workdir)
        attempt("network namespaces", self._remove_netns)
        attempt("bridge", self._remove_bridge)
        attempt("CNI results", self._remove_cni_results)
        attempt("cgroups", self._remove_cgroups)
        if self._ip_forward is not None:
            attempt("ip_forward", _write, "/proc/sys/net/ipv4/ip_forward", self._ip_forward)
        if not errors:
            attempt("workdir", shutil.rmtree, self.workdir)
        if errors:
            raise NodeTeardownError("test node teardown incomplete: " + "; ".join(errors))

    def _stop_containerd(self) -> None:
        proc = self._containerd
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def _shim_pids(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and self.socket.encode() in argv:
                pids.append(int(entry))
        return pids

    def _kill_shims(self) -> None:
        for pid in self._shim_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self._shim_pids() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _unmount_workdir(self) -> None:
        for mnt in _mounts_under(self.workdir):
            res = subprocess.run(["umount", mnt], check=False, capture_output=True, text=True)
            if res.returncode != 0:
                _run("umount", "-l", mnt)
        left = _mounts_under(self.workdir)
        if left:
            raise RuntimeError(f"still mounted: {left}")

    def _remove_netns(self) -> None:
        for path in sorted(self._netns_paths):
            if not os.path.exists(path):
                continue
            subprocess.run(["umount", path], check=False, capture_output=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _remove_bridge(self) -> None:
        if os.path.exists(f"/sys/class/net/{self.bridge}"):
            _run("ip", "link", "del", self.bridge)

    def _remove_cni_results(self) -> None:
        results = "/var/lib/cni/results"
        if os.path.isdir(results):
            for entry in os.listdir(results):
                if entry.startswith(self.network_name + "-"):
                    os.unlink(os.path.join(results, entry))

    def _remove_cgroups(self) -> None:
        for mount in _cgroup_mounts():
            for parent in sorted(self._cgroup_parents):
                top = os.path.join(mount, parent.lstrip("/"))
                if os.path.isdir(top):
                    # Container cgroups below the pod, deepest first (runc normally removed them already).
                    for root, _dirs, _files in sorted(os.walk(top, topdown=False), key=lambda w: -len(w[0])):
                        os.rmdir(root)
                # Then the shared QoS levels, only while they are empty (another node may use them).
                up = os.path.dirname(parent)
                while up not in ("/", ""):
                    try:
                        os.rmdir(os.path.join(mount, up.lstrip("/")))
                    except OSError as e:
                        if e.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EBUSY):
                            raise
                        break
                    up = os.path.dirname(up)
