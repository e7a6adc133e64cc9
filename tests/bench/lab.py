"""What every benchmark phase builds on: pods made of network namespaces, processes, a podcap collector + agent,
packet counting by parsing files, and cleanup of all of it (also on failure, SIGTERM or Ctrl+C).

Everything a phase creates is registered with a ``Lab`` and removed by ``Lab.cleanup`` (idempotent, best effort):
network namespaces ``/run/netns/pcb-<tag>...``, links ``pcb<tag>...`` (veths, bridges), processes and their logs.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import psutil

from podcap.collector.cli.client import CollectorClient, CollectorError
from podcap.collector.demo.node import DemoPod as Pod  # a pod of network namespaces: the demo's
from podcap.formats.pcap import PcapFormatError, count_file_records
from podcap.v1 import common_pb2, control_pb2

GEN_CPU, CAP_CPU = "0", "1"
HERE = os.path.dirname(os.path.abspath(__file__))


PROFILE: dict[str, str] = {"py_spy": "", "dir": "", "args": ""}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


_INTERRUPTED: list[int] = []


def checkpoint() -> None:
    """Re-raise a Ctrl+C / SIGTERM that a library swallowed (a gRPC call interrupted by SIGINT ends as a
    cancelled RPC, not as KeyboardInterrupt)."""
    if _INTERRUPTED:
        raise KeyboardInterrupt(f"signal {_INTERRUPTED[0]}")


def _run(argv: list[str], *, check: bool = True, inp: str | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, input=inp)
    if check and r.returncode != 0:
        raise BenchError(f"{' '.join(argv[:6])}...: {r.stderr.strip()}")
    return r


def console_script(name: str) -> str:
    cand = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(cand, os.X_OK):
        return cand
    found = shutil.which(name)
    if not found:
        raise BenchError(f"{name} not found next to {sys.executable} or on PATH (run `make dev`)")
    return found


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def sys_seconds(proc: psutil.Process) -> float:
    """Kernel-mode CPU seconds (the user/system split goes into each run's JSON line, to see where time goes)."""
    return float(proc.cpu_times().system)


# ---------------------------------------------------------------------------------------------------------------
# Everything the benchmark creates is registered here and removed by cleanup() (idempotent, best effort).


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    pods: list[Pod] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    workdir: str = ""
    _n: int = 0

    def __post_init__(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix=f"pcb-{self.tag}-")

    # -- network --

    def add_bridge(self) -> str:
        """A bridge with no address (its ports reach only each other), no IPv6, up."""
        name = f"pcb{self.tag}br{len(self.bridges)}"
        self.bridges.append(name)
        _run(["ip", "link", "add", name, "type", "bridge"])
        with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
            f.write("1")
        _run(["ip", "link", "set", name, "up"])
        return name

    def add_pods(self, namespace: str, names: list[str], first_index: int = 0, *, bridge: str = "") -> list[Pod]:
        """Create pods in one `ip -batch` (namespace, veth with the pod side named eth0 inside it, host side up,
        on ``bridge`` if given), then bring each pod's eth0 up."""
        new = [Pod(namespace, n, "", f"pcb{self.tag}h{first_index + i}") for i, n in enumerate(names)]
        lines = []
        for p in new:
            lines += [f"netns add {p.netns}", f"link add {p.host_veth} type veth peer name eth0 netns {p.netns}"]
            if bridge:
                lines.append(f"link set {p.host_veth} master {bridge}")
        self.pods.extend(new)  # registered first: cleanup removes whatever part was created
        _run(["ip", "-batch", "-"], inp="\n".join(lines) + "\n")
        for p in new:  # no IPv6 on our host veths either (no RS/MLD frames in the captures)
            try:
                with open(f"/proc/sys/net/ipv6/conf/{p.host_veth}/disable_ipv6", "w") as f:
                    f.write("1")
            except OSError:
                pass
        _run(["ip", "-batch", "-"], inp="".join(f"link set {p.host_veth} up\n" for p in new))
        for p in new:
            # No IPv6 in the pods (before the link comes up): no router solicitations or MLD reports, so the only
            # frames on a veth are the ones the benchmark generates.
            _run(["ip", "netns", "exec", p.netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                  "net.ipv6.conf.default.disable_ipv6=1"], check=False)
            _run(["ip", "-n", p.netns, "link", "set", "eth0", "up"])
        return new

    def remove_pods(self, pods: list[Pod]) -> None:
        if not pods:
            return
        lines = [f"netns del {p.netns}" for p in pods]
        subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n", capture_output=True,
                       text=True)
        for p in pods:  # normally gone with their namespace
            if os.path.exists(f"/sys/class/net/{p.host_veth}"):
                subprocess.run(["ip", "link", "del", p.host_veth], capture_output=True)
            if os.path.exists(p.netns_path):
                subprocess.run(["ip", "netns", "del", p.netns], capture_output=True)
        gone = {id(p) for p in pods}
        self.pods = [p for p in self.pods if id(p) not in gone]

    # -- processes --

    def spawn(self, name: str, argv: list[str], cpu: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
        self._n += 1
        path = os.path.join(self.workdir, f"{self._n:03d}-{name}.log")
        f = open(path, "ab")  # noqa: SIM115 (closed in cleanup)
        self.logs.append(f)
        full = (["taskset", "-c", cpu] if cpu is not None else []) + argv
        proc = subprocess.Popen(full, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.procs.append(proc)
        return proc, path

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._killpg(proc)
        self._killpg(proc)  # helpers it may have left behind in its session
        return proc.returncode if proc.returncode is not None else -9

    @staticmethod
    def _killpg(proc: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def cleanup(self, keep_workdir: bool = False) -> dict[str, Any]:
        for proc in reversed(self.procs):
            self.stop(proc, timeout=10)
        self.procs.clear()
        for f in self.logs:
            f.close()
        self.logs.clear()
        self.remove_pods(list(self.pods))
        for br in self.bridges:
            subprocess.run(["ip", "link", "del", br], capture_output=True)
        self.bridges.clear()
        if not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.leftovers()

    def leftovers(self) -> dict[str, Any]:
        netns = [n for n in _run(["ip", "netns", "list"], check=False).stdout.split() if n.startswith("pcb-")
                 and self.tag in n]
        links = [n for n in os.listdir("/sys/class/net") if n.startswith(f"pcb{self.tag}")]
        return {"netns": netns, "links": links}


# ---------------------------------------------------------------------------------------------------------------
# Measurement helpers


def rx_packets(dev: str) -> int:
    with open(f"/sys/class/net/{dev}/statistics/rx_packets") as f:
        return int(f.read())


def count_pcap_packets(path: str) -> int:
    """Packets in a pcap file, found by walking (and validating) every record."""
    try:
        return count_file_records(path)
    except PcapFormatError as e:
        raise BenchError(f"{path}: {e}") from e


def wait_for_log(path: str, pattern: str, proc: subprocess.Popen[bytes], timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        with open(path, errors="replace") as f:
            m = rx.search(f.read())
        if m:
            return m
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    with open(path, errors="replace") as f:
        tail = f.read()[-2000:]
    raise BenchError(f"{os.path.basename(path)}: no {pattern!r} within {timeout}s (exit {proc.poll()}):\n{tail}")


class Podcap:
    """A collector and an agent (separate processes, the real console scripts) for one phase."""

    def __init__(self, lab: Lab, node: str, *, collector_cpu: str | None, agent_cpu: str | None,
                 ring_budget: int | None = None, agent_args: tuple[str, ...] = (),
                 collector_args: tuple[str, ...] = (), metrics: bool = False) -> None:
        self.lab = lab
        self.node = node
        self.data_dir = os.path.join(lab.workdir, f"data-{node}")
        self.collector, clog = lab.spawn(f"collector-{node}", [
            console_script("podcap-collector"), "--insecure", "--listen", "127.0.0.1:0", "--data-dir", self.data_dir,
            *collector_args, *(["--metrics-listen", "127.0.0.1:0"] if metrics else [])], cpu=collector_cpu)
        port = int(wait_for_log(clog, r"\(port (\d+)\)", self.collector, 20).group(1))
        self.address = f"127.0.0.1:{port}"
        argv = [console_script("podcap-agent"), "--insecure", "--collector", self.address, "--node", node,
                "--pod-source", "netns"]
        if ring_budget:
            argv += ["--ring-budget", str(ring_budget)]
        argv += agent_args
        if metrics:
            argv += ["--metrics-listen", "127.0.0.1:0"]
        self.agent, self.agent_log = lab.spawn(f"agent-{node}", argv, cpu=agent_cpu)
        wait_for_log(self.agent_log, r"registered with collector", self.agent, 20)
        # Ports of the daemons' /metrics (0 = not served).
        self.agent_metrics = int(wait_for_log(self.agent_log, r"metrics on port (\d+)", self.agent, 20).group(1)) \
            if metrics else 0
        self.collector_metrics = int(wait_for_log(clog, r"metrics on port (\d+)", self.collector, 20).group(1)) \
            if metrics else 0
        self.client = CollectorClient(self.address, timeout=60)
        self.p_agent = psutil.Process(self.agent.pid)
        self.p_collector = psutil.Process(self.collector.pid)

    def profile_start(self) -> list[subprocess.Popen[bytes]]:
        """With --py-spy: sample agent and collector (py-spy record, raw collapsed stacks) while traffic runs.
        The figures of a profiled run are perturbed; use it to find where the time goes, not to measure."""
        if not PROFILE["py_spy"]:
            return []
        procs = []
        for who, p in (("agent", self.agent), ("collector", self.collector)):
            out = os.path.join(PROFILE["dir"], f"{who}-{secrets.token_hex(2)}.txt")
            proc, _ = self.lab.spawn(f"py-spy-{who}", [PROFILE["py_spy"], "record", "-p", str(p.pid), "-r", "200",
                                                       "-f", "raw", "-o", out, "--threads",
                                                       *PROFILE["args"].split()])
            procs.append(proc)
        time.sleep(1.0)
        return procs

    def profile_stop(self, procs: list[subprocess.Popen[bytes]]) -> None:
        for proc in procs:
            self.lab.stop(proc, signal.SIGINT, timeout=30)
            self.lab.procs.remove(proc)

    def start(self, namespace: str, pods: list[str] | None = None, timeout: float = 30) -> str:
        req = control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace=namespace, pod_names=pods or []))
        deadline = time.monotonic() + timeout
        while True:  # the agent's inventory may not have reached the collector yet
            checkpoint()
            try:
                return str(self.client.start(req).id)
            except CollectorError as e:
                checkpoint()
                if time.monotonic() > deadline:
                    raise BenchError(f"cannot start capture: {e}") from e
                time.sleep(0.2)

    def wait_capturing(self, capture_id: str, n: int, timeout: float) -> float:
        """Poll until ``n`` pods are capturing; returns monotonic time when seen."""
        deadline = time.monotonic() + timeout
        while True:
            checkpoint()
            st = self.client.get(capture_id)
            states = [p.state for p in st.pods]
            cap = sum(1 for s in states if s == common_pb2.POD_CAPTURE_STATE_CAPTURING)
            if cap >= n:
                return time.monotonic()
            failed = [p for p in st.pods if p.state == common_pb2.POD_CAPTURE_STATE_FAILED]
            if failed:
                raise BenchError(f"pod {failed[0].pod.name} failed: {failed[0].message}")
            if time.monotonic() > deadline:
                raise BenchError(f"only {cap}/{n} pods capturing after {timeout}s")
            time.sleep(0.02)

    def stop_capture(self, capture_id: str, timeout: float = 20) -> control_pb2.CaptureStatus:
        self.client.stop(capture_id)
        deadline = time.monotonic() + timeout
        st = self.client.get(capture_id)
        while st.state not in (control_pb2.CAPTURE_STATE_DONE, control_pb2.CAPTURE_STATE_FAILED):
            checkpoint()
            if time.monotonic() > deadline:
                raise BenchError(f"capture {capture_id} did not end: state {st.state}")
            time.sleep(0.1)
            st = self.client.get(capture_id)
        return st

    def stored_packets(self, st: control_pb2.CaptureStatus, delete: bool = True) -> int:
        return sum(self.stored_per_pod(st, delete=delete).values())

    def stored_per_pod(self, st: control_pb2.CaptureStatus, delete: bool = True) -> dict[str, int]:
        """Packets stored per pod name, found by parsing every segment file of the pod."""
        out: dict[str, int] = {}
        for p in st.pods:
            out[p.pod.name] = 0
            d = os.path.join(self.data_dir, p.path)
            if not p.path or not os.path.isdir(d):
                continue
            for name in sorted(os.listdir(d)):
                if name.endswith(".pcap"):
                    fp = os.path.join(d, name)
                    out[p.pod.name] += count_pcap_packets(fp)
                    if delete:
                        os.unlink(fp)
        return out

    def close(self) -> None:
        self.client.close()
        self.lab.stop(self.agent)
        self.lab.stop(self.collector)


@dataclass
class Trafgen:
    """A running trafgen (see ``start_trafgen``)."""

    proc: subprocess.Popen[bytes]
    log_path: str
    started: float
    seconds: float


def start_trafgen(lab: Lab, pod: Pod, conf: str, *, seconds: float, count: int = 0, cpu: str | None = GEN_CPU,
                  rate_pps: int = 0, procs: int = 1) -> Trafgen:
    """Blast from the pod's eth0 (pinned to ``cpu``), bounded by ``seconds`` (and ``count`` packets if set, and
    paced at ``rate_pps`` if set), with ``procs`` sender processes."""
    argv = ["ip", "netns", "exec", pod.netns, "timeout", "-s", "INT", str(int(seconds + 0.999))]
    if cpu is not None:
        argv += ["taskset", "-c", cpu]
    argv += ["trafgen", "-o", "eth0", "-c", conf, "-P", str(procs), "--no-sock-mem", "--notouch-irq", "-q"]
    if count:
        argv += ["-n", str(count)]
    if rate_pps:
        argv += ["-b", f"{rate_pps}pps"]
    proc, path = lab.spawn("trafgen", argv)
    return Trafgen(proc, path, time.monotonic(), seconds)


def wait_trafgen(lab: Lab, tg: Trafgen) -> tuple[float, int]:
    """Wait for a trafgen to end; returns (wall seconds, packets trafgen reports)."""
    try:
        tg.proc.wait(timeout=max(1.0, tg.started + tg.seconds + 30 - time.monotonic()))
    finally:
        lab.stop(tg.proc, signal.SIGINT)
        lab.procs.remove(tg.proc)
    wall = time.monotonic() - tg.started
    checkpoint()
    with open(tg.log_path, errors="replace") as f:
        m = re.search(r"(\d+) packets outgoing", f.read())
    return wall, int(m.group(1)) if m else 0


# Where p1's generator runs: GEN_CPU alone (the default), or everywhere with one sender per CPU (``--p1-hostile``:
# generator and capturer compete for the CPU, the way a busy node makes them).
P1_GENERATOR = {"cpu": GEN_CPU, "procs": 1}


def trafgen(lab: Lab, pod: Pod, conf: str, *, seconds: float, count: int = 0) -> tuple[float, int]:
    """Blast from the pod's eth0 (see ``P1_GENERATOR``) and wait; returns (wall seconds, packets sent)."""
    cpu, procs = P1_GENERATOR["cpu"], P1_GENERATOR["procs"]
    assert cpu is None or isinstance(cpu, str)
    assert isinstance(procs, int)
    return wait_trafgen(lab, start_trafgen(lab, pod, conf, seconds=seconds, count=count, cpu=cpu, procs=procs))


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt and are remembered (see ``checkpoint``)."""

    def handler(signum: int, _frame: object) -> None:
        _INTERRUPTED.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
