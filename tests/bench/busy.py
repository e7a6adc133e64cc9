"""Benchmark phase p5: several busy pods at once, ``tcpdump -w`` ×N against one podcap capture of all of them.

N pods (4) on one bridge. In each pod ``trafgen`` sends ``frames`` UDP frames of 456 bytes at ``rate`` frames/s to a
MAC address nobody owns, so the bridge floods every frame to every other port: each pod's host veth sees its own
pod's frames plus everyone else's, N × ``frames`` in all (~100k frames/s, ~45 MB/s per veth with the defaults).
Rounds alternate on the same pods and the same traffic: one ``tcpdump -w`` per host veth, then one podcap capture
of every pod (collector and agent as separate processes with default flags, nothing pinned).

Every figure comes from parsing the stored files and from the capturers' own counters:
- stored per pod (parsed), and for podcap the accounting of every pod: kernel ``received`` = stored + kernel
  drops + every kind of podcap drop; ``p5_unaccounted`` sums what that leaves unexplained (must be 0);
- ``p5_stored_ratio`` = podcap stored ÷ tcpdump stored, all pods and rounds; ``p5_min_pod_ratio`` the worst pod;
- CPU seconds of the N tcpdumps, of the agent and of the collector over the same traffic (podcap's until the
  capture is stored: a backlog drained after the traffic counts);
- from the daemons' own metrics: the agent's peak of unacknowledged bytes while the traffic ran
  (``p5_peak_backlog_mib``, against its 64 MiB buffer: how close the path came to losing data) and the
  collector's commit latency (``p5_commit_p99_s``, written → durable → acknowledged).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.request
from typing import Any

import psutil

from podcap.drops import Drops
from podcap.v1 import control_pb2
from tests.bench.lab import (
    BenchError,
    Lab,
    Pod,
    Podcap,
    count_pcap_packets,
    cpu_seconds,
    log,
    start_trafgen,
    wait_for_log,
    wait_trafgen,
)

FRAME_FILL = 414  # 14 Ethernet + 20 IPv4 + 8 UDP + 414 = 456 bytes


def frame_conf(index: int) -> str:
    """trafgen packet config of pod ``index``: 456-byte UDP from its own MAC and IP to a MAC nobody owns."""
    return (f"{{ eth(da=02:99:00:00:00:ff, sa=02:99:00:00:01:{index + 1:02x}, type=0x0800), "
            f"ipv4(saddr=10.99.1.{index + 1}, daddr=10.99.1.250, ttl=64), udp(sp=4000, dp=9), "
            f"fill(0x41, {FRAME_FILL}) }}\n")


def veth_packets(dev: str) -> int:
    """Frames through a host veth both ways: its pod's own (rx) and those the bridge floods to it (tx)."""
    total = 0
    for direction in ("rx", "tx"):
        with open(f"/sys/class/net/{dev}/statistics/{direction}_packets") as f:
            total += int(f.read())
    return total


def pod_drops(p: control_pb2.PodStatus) -> dict[str, int]:
    """Every kind of drop that ``status`` names for a pod (the kernel's ring included, not its interface), and
    what retention deleted."""
    return {"kernel": p.kernel.dropped, "retired": p.retired_packets, **Drops.from_proto(p.drops).nonzero()}


def scrape(port: int) -> dict[str, float]:
    """Prometheus text of a daemon's /metrics, as {"name{labels}": value} (samples only)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


class Backlog:
    """Samples the agent's unacknowledged bytes (its own metric) every 50 ms while traffic runs: how close the
    path came to overflowing the upload buffer."""

    def __init__(self, port: int) -> None:
        self.port, self.peak, self._stop = port, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, scrape(self.port).get("podcap_agent_spool_bytes", 0.0))
            except OSError:
                pass

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def commit_quantile(metrics: dict[str, float], q: float) -> float:
    """Upper bound of the q-quantile of the collector's commit latency histogram in seconds (the largest bucket,
    5 s, when it lies beyond; 0 when nothing was committed)."""
    buckets = sorted((float(k.split('le="')[1].split('"')[0]), v) for k, v in metrics.items()
                     if k.startswith("podcap_commit_seconds_bucket") and "+Inf" not in k)
    total = metrics.get("podcap_commit_seconds_count", 0.0)
    if not total or not buckets:
        return 0.0
    for le, count in buckets:
        if count >= q * total:
            return le
    return buckets[-1][0]


class Traffic:
    """The same flood in every round: one trafgen per pod, started together."""

    def __init__(self, lab: Lab, pods: list[Pod], frames: int, rate: int) -> None:
        self.lab, self.pods, self.frames, self.rate = lab, pods, frames, rate
        self.confs = []
        for i, _ in enumerate(pods):
            path = os.path.join(lab.workdir, f"flood{i}.trafgen")
            with open(path, "w") as f:
                f.write(frame_conf(i))
            self.confs.append(path)

    def run(self) -> tuple[float, int]:
        """Send; returns (wall seconds, frames sent by all)."""
        seconds = self.frames / self.rate * 3 + 5
        gens = [start_trafgen(self.lab, pod, conf, seconds=seconds, count=self.frames, cpu=None,
                              rate_pps=self.rate) for pod, conf in zip(self.pods, self.confs, strict=True)]
        t0 = time.monotonic()
        sent = sum(wait_trafgen(self.lab, g)[1] for g in gens)
        return time.monotonic() - t0, sent


def run_tcpdumps(lab: Lab, pods: list[Pod], traffic: Traffic) -> dict[str, Any]:
    procs = []
    for pod in pods:
        out = os.path.join(lab.workdir, f"{pod.name}.pcap")
        proc, path = lab.spawn("tcpdump", ["tcpdump", "-i", pod.host_veth, "-p", "-n", "-w", out])
        procs.append((pod, proc, path, out))
    stats: dict[str, Any] = {"who": "tcpdump", "pods": {}}
    try:
        for _, proc, path, _ in procs:
            wait_for_log(path, r"listening on", proc, 15)
        time.sleep(0.5)
        ps = [psutil.Process(p.pid) for _, p, _, _ in procs]
        base = {pod.name: veth_packets(pod.host_veth) for pod in pods}
        c0 = sum(cpu_seconds(p) for p in ps)
        wall, sent = traffic.run()
        time.sleep(1.0)  # let them drain their rings
        cpu = sum(cpu_seconds(p) for p in ps) - c0
    finally:
        for _, proc, _, _ in procs:
            lab.stop(proc, signal.SIGINT)
            lab.procs.remove(proc)
    for pod, _, path, out in procs:
        with open(path, errors="replace") as f:
            txt = f.read()
        m_recv = re.search(r"(\d+) packets? received by filter", txt)
        m_drop = re.search(r"(\d+) packets? dropped by kernel", txt)
        stats["pods"][pod.name] = {
            "offered": veth_packets(pod.host_veth) - base[pod.name],
            "received": int(m_recv.group(1)) if m_recv else -1, "dropped": int(m_drop.group(1)) if m_drop else -1,
            "stored": count_pcap_packets(out)}
        os.unlink(out)
    stats.update(cpu_s=round(cpu, 2), gen_wall=round(wall, 2), sent=sent)
    return stats


def stall(pc: Podcap, after: float, seconds: float) -> threading.Thread:
    """Freeze the collector (SIGSTOP) ``after`` seconds from now for ``seconds``: a collector that stops reading,
    as one whose disk hangs does. The agent's buffers fill meanwhile."""

    def run() -> None:
        time.sleep(after)
        os.kill(pc.collector.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pc.collector.pid, signal.SIGCONT)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def run_podcap(pc: Podcap, pods: list[Pod], traffic: Traffic, settle: float, stall_s: float = 0.0) -> dict[str, Any]:
    cid = pc.start(pods[0].namespace, [p.name for p in pods])
    pc.wait_capturing(cid, len(pods), 30)
    time.sleep(0.5)
    base = {pod.name: veth_packets(pod.host_veth) for pod in pods}
    a0, k0 = cpu_seconds(pc.p_agent), cpu_seconds(pc.p_collector)
    backlog = Backlog(pc.agent_metrics) if pc.agent_metrics else None
    staller = stall(pc, traffic.frames / traffic.rate / 4, stall_s) if stall_s else None
    wall, sent = traffic.run()
    if staller is not None:
        staller.join()
    peak = backlog.stop() if backlog is not None else 0.0
    time.sleep(settle)
    t_stop = time.monotonic()
    st = pc.stop_capture(cid, timeout=300)
    stop_s = time.monotonic() - t_stop
    a1, k1 = cpu_seconds(pc.p_agent), cpu_seconds(pc.p_collector)
    stored = pc.stored_per_pod(st)
    stats: dict[str, Any] = {"who": "podcap", "pods": {}, "capture": cid, "end_reason": st.end_reason}
    for p in st.pods:
        drops = pod_drops(p)
        stats["pods"][p.pod.name] = {
            "offered": veth_packets(next(x.host_veth for x in pods if x.name == p.pod.name)) - base[p.pod.name],
            "received": p.kernel.received, "drops": drops, "stored": stored[p.pod.name],
            "status_packets": p.packets + p.retired_packets, "status_unaccounted": p.unaccounted,
            "unaccounted": p.kernel.received - stored[p.pod.name] - sum(drops.values())}
    stats.update(cpu_s=round(a1 - a0, 2), collector_cpu_s=round(k1 - k0, 2), gen_wall=round(wall, 2), sent=sent,
                 stop_s=round(stop_s, 2), peak_backlog_mib=round(peak / (1 << 20), 1))
    if pc.collector_metrics:
        m = scrape(pc.collector_metrics)
        stats.update(commit_p50_s=commit_quantile(m, 0.5), commit_p99_s=commit_quantile(m, 0.99))
    return stats


def phase_p5(lab: Lab, *, rounds: int, frames: int, rate: int, n_pods: int = 4, settle: float = 1.0,
             agent_args: tuple[str, ...] = (), stall_s: float = 0.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    namespace = f"pcb-{lab.tag}-f"
    bridge = lab.add_bridge()
    pods = lab.add_pods(namespace, [f"p{i + 1}" for i in range(n_pods)], first_index=300, bridge=bridge)
    traffic = Traffic(lab, pods, frames, rate)
    log(f"p5: {n_pods} pods on {bridge}; each sends {frames:,} frames of 456 bytes at {rate:,}/s, flooded to all")
    traffic.run()  # the bridge learns every pod's MAC before anything is measured
    pc = Podcap(lab, f"pcb-{lab.tag}-f", collector_cpu=None, agent_cpu=None, agent_args=agent_args, metrics=True)
    runs: list[dict[str, Any]] = []
    try:
        for r in range(rounds):
            for res in (run_tcpdumps(lab, pods, traffic), run_podcap(pc, pods, traffic, settle, stall_s)):
                res["round"] = r + 1
                runs.append(res)
                log(f"p5 round {r + 1} {res['who']}: {res}")
    finally:
        pc.close()
    lab.remove_pods(pods)
    td = [x for x in runs if x["who"] == "tcpdump"]
    pcs = [x for x in runs if x["who"] == "podcap"]
    names = [p.name for p in pods]
    td_pod = {n: sum(x["pods"][n]["stored"] for x in td) for n in names}
    pc_pod = {n: sum(x["pods"][n]["stored"] for x in pcs) for n in names}
    if not sum(td_pod.values()):
        raise BenchError("p5: tcpdump stored nothing")
    td_cpu = sum(x["cpu_s"] for x in td)
    out = {
        "p5_stored_ratio": sum(pc_pod.values()) / sum(td_pod.values()),
        "p5_min_pod_ratio": min(pc_pod[n] / td_pod[n] if td_pod[n] else 0.0 for n in names),
        "p5_unaccounted": sum(v["unaccounted"] for x in pcs for v in x["pods"].values()),
        "p5_tcpdump_cpu_s": td_cpu,
        "p5_agent_cpu_s": sum(x["cpu_s"] for x in pcs),
        "p5_collector_cpu_s": sum(x["collector_cpu_s"] for x in pcs),
    }
    out["p5_peak_backlog_mib"] = max(x["peak_backlog_mib"] for x in pcs)
    out["p5_commit_p99_s"] = max(x.get("commit_p99_s", 0.0) for x in pcs)
    out["p5_cpu_ratio"] = (out["p5_agent_cpu_s"] + out["p5_collector_cpu_s"]) / td_cpu if td_cpu else float("inf")
    return out, runs
