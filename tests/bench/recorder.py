"""Benchmark phase p9: a flight recorder on many pods (issue 24), against ``tcpdump -w`` in the same run.

``n_pods`` pods (200) on one bridge, each sending ``pps`` UDP frames of ``size`` bytes per second (100 x 1000:
~100 kB/s) with a per-pod sequence number (``lightgen.py --seq``). One ``podcap record`` covers every pod (the rings
on the agent's disk, under the lab's workdir), while one ``tcpdump -w`` per pod captures the same host veth into a
file, with the ring the agent gives each pod (``-B``): the baseline of "keeping every pod's packets on the node".

Figures (ratios measured in the same run):
- ``p9_cpu_ratio``: the agent's CPU time ÷ the tcpdumps' over the same idle interval (no trigger), from
  ``/proc/PID/task/*/schedstat`` (exact; clock-tick accounting misses processes that run microseconds at a time);
- ``p9_idle_fraction``: bytes the agent sent to the collector over that interval (its TCP connections'
  ``bytes_sent``, from ``ss``) ÷ the bytes of traffic the pods sent then (the host veths' ``rx_bytes``).
  Target < 0.001: while nothing triggers, only counters travel;
- ``p9_trigger_margin_s``: from starting ``podcap trigger ID POD`` (the CLI, process start included) to its return
  with the save stored, minus ``--after`` (the save cannot end before its window has passed). Target <= 3,
  the worst of ``triggers`` saves;
- ``p9_window_ratio``: sequence numbers in the saved pod file that tcpdump also saw in the save's window ÷ the
  sequence numbers tcpdump saw in that window (from <= timestamp < to), worst of the saves. Target >= 0.99.
  ``p9_unaccounted``: the saves' pods' ``unaccounted`` (stored + drops == what the kernel delivered in the window).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import psutil

from podcap.agent.capture.settings import EngineSettings, auto_ring_bytes
from podcap.collector.demo.node import DemoPod as Pod
from podcap.formats.pcap import read_file
from podcap.v1 import control_pb2
from tests.bench.lab import BenchError, Lab, Podcap, checkpoint, console_script, log
from tests.bench.lightgen import seq_of
from tests.traffic import Tcpdump

HERE = os.path.dirname(os.path.abspath(__file__))


def _rx_bytes(pods: list[Pod]) -> int:
    total = 0
    for p in pods:
        with open(f"/sys/class/net/{p.host_veth}/statistics/rx_bytes") as f:
            total += int(f.read())
    return total


def _bytes_sent(proc: psutil.Process, port: int) -> int:
    """Bytes the process's TCP connections to ``port`` on loopback have sent (the kernel's ``bytes_sent``)."""
    local = {c.laddr.port for c in proc.net_connections(kind="tcp") if c.raddr and c.raddr.port == port}
    if not local:
        raise BenchError(f"p9: the agent has no connection to the collector's port {port}")
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( dport = :{port} )"], capture_output=True,
                         text=True, check=True).stdout
    total = 0
    # ss prints each connection on one line with -H, then its TCP info on the next (indented).
    lines = out.splitlines()
    for i, line in enumerate(lines):
        # Addresses print as 127.0.0.1:P or [::ffff:127.0.0.1]:P (gRPC dials on a dual-stack socket).
        m = re.search(r"\S+:(\d+)\s+\S+:" + str(port) + r"\b", line)
        if m and int(m.group(1)) in local and i + 1 < len(lines):
            sent = re.search(r"bytes_sent:(\d+)", lines[i + 1])
            if sent:
                total += int(sent.group(1))
    return total


def _cpu_ns(proc: psutil.Process) -> int:
    """Nanoseconds on a CPU, all threads (``/proc/PID/schedstat``): exact, where ``cpu_times`` counts clock ticks
    and misses processes that run for microseconds at a time (200 tcpdumps each waking for one block a second)."""
    total = 0
    for tid in os.listdir(f"/proc/{proc.pid}/task"):
        try:
            with open(f"/proc/{proc.pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended: its time is lost to both sides alike (tcpdump has one thread)
    return total


def _seqs(path: str, lo_ns: int = 0, hi_ns: int = 1 << 63) -> set[int]:
    _fmt, records = read_file(path)
    return {seq_of(r.data) for r in records if lo_ns <= r.ts_ns < hi_ns and len(r.data) >= 50}


def _wait_recording(pc: Podcap, rid: str, n: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        checkpoint()
        st = pc.client.get_recorder(rid)
        recording = sum(1 for p in st.pods if p.state == "recording")
        if recording >= n:
            return time.monotonic()
        failed = [p for p in st.pods if p.state == "failed"]
        if failed:
            raise BenchError(f"p9: ring of {failed[0].pod.name} failed: {failed[0].message}")
        if time.monotonic() > deadline:
            raise BenchError(f"p9: only {recording}/{n} rings recording after {timeout}s")
        time.sleep(0.2)


def _trigger(pc: Podcap, rid: str, pod: Pod) -> tuple[str, float]:
    """``podcap trigger`` through the CLI; returns (save capture id, seconds until it returned)."""
    t0 = time.monotonic()
    r = subprocess.run([console_script("podcap"), "--collector", pc.address, "trigger", rid,
                        f"{pod.namespace}/{pod.name}", "--reason", "p9 benchmark"], capture_output=True, text=True,
                       timeout=300)
    took = time.monotonic() - t0
    if r.returncode:
        raise BenchError(f"p9: podcap trigger: exit {r.returncode}: {r.stderr.strip()[-1000:]}")
    lines = r.stdout.strip().splitlines()
    if not lines:
        raise BenchError("p9: podcap trigger printed no capture id")
    return lines[-1].strip(), took


def _saved_file(pc: Podcap, st: control_pb2.CaptureStatus, pod: Pod) -> list[str]:
    for p in st.pods:
        if p.pod.name == pod.name and p.path:
            d = os.path.join(pc.data_dir, p.path)
            return [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".pcap")]
    raise BenchError(f"p9: save {st.id} has no file of {pod.name}")


def phase_p9(lab: Lab, *, n_pods: int, pps: float, size: int, idle_s: float, before_s: int, after_s: int,
             triggers: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    namespace = f"pcb-{lab.tag}-r"
    bridge = lab.add_bridge()
    pods = lab.add_pods(namespace, [f"rec{i}" for i in range(n_pods)], first_index=1000, bridge=bridge)
    rings = os.path.join(lab.workdir, "rings")
    ring_mem = auto_ring_bytes(EngineSettings().ring_budget_bytes, n_pods)
    pc = Podcap(lab, f"pcb-{lab.tag}-r", collector_cpu=None, agent_cpu=None,
                agent_args=("--ring-dir", rings, "--ring-disk-bytes", str(8 << 30)))
    dumps: list[Tcpdump] = []
    gen: subprocess.Popen[bytes] | None = None
    saves: list[dict[str, Any]] = []
    try:
        keep_s = before_s + after_s + 60
        req = control_pb2.StartRecorderRequest(
            target=control_pb2.Target(namespace=namespace), keep_seconds=keep_s, before_ms=before_s * 1000,
            after_ms=after_s * 1000, cooldown_seconds=1)
        rid = pc.client.record(req).id
        t_rec = time.monotonic()
        _wait_recording(pc, rid, n_pods, 120)
        log(f"p9: recorder {rid}: {n_pods} rings recording after {time.monotonic() - t_rec:.1f}s")
        for p in pods:
            dumps.append(Tcpdump(p.host_veth, os.path.join(lab.workdir, f"p9-{p.name}.pcap"),
                                 os.path.join(lab.workdir, f"p9-{p.name}.log"), buffer_bytes=ring_mem))
            lab.procs.append(dumps[-1].proc)
        for d in dumps:
            d.wait_listening()
        duration = before_s + idle_s + triggers * (after_s + 30) + 60
        gen, _ = lab.spawn("lightgen", [sys.executable, os.path.join(HERE, "lightgen.py"), "--pps", str(pps),
                                        "--size", str(size), "--seq", "--duration", str(duration),
                                        *[p.netns_path for p in pods]])
        time.sleep(2.0)
        port = int(pc.address.rsplit(":", 1)[1])
        p_dumps = [psutil.Process(d.proc.pid) for d in dumps]
        a0, d0 = _cpu_ns(pc.p_agent), sum(_cpu_ns(p) for p in p_dumps)
        s0, r0 = _bytes_sent(pc.p_agent, port), _rx_bytes(pods)
        time.sleep(idle_s)
        a1, d1 = _cpu_ns(pc.p_agent), sum(_cpu_ns(p) for p in p_dumps)
        s1, r1 = _bytes_sent(pc.p_agent, port), _rx_bytes(pods)
        idle = {"agent_cpu_s": round((a1 - a0) / 1e9, 4), "tcpdump_cpu_s": round((d1 - d0) / 1e9, 4),
                "sent_bytes": s1 - s0, "traffic_bytes": r1 - r0, "seconds": idle_s}
        log(f"p9 idle: {idle}")
        time.sleep(max(0.0, before_s - idle_s - 2.0))  # the rings hold --before of traffic
        for k in range(triggers):
            pod = pods[(k * 37) % n_pods]
            cid, took = _trigger(pc, rid, pod)
            saves.append({"pod": pod.name, "capture": cid, "took_s": round(took, 3),
                          "margin_s": round(took - after_s, 3)})
            log(f"p9 save {k + 1}: {saves[-1]}")
        time.sleep(1.0)
    finally:
        if gen is not None:
            lab.stop(gen, signal.SIGINT)
            lab.procs.remove(gen)
        for d in dumps:
            d.stop()
            lab.procs.remove(d.proc)
    try:
        for s in saves:
            st = pc.client.get(s["capture"])
            pod = next(p for p in pods if p.name == s["pod"])
            lo, hi = st.save.from_unix_ns, st.save.to_unix_ns
            ours: set[int] = set()
            for path in _saved_file(pc, st, pod):
                ours |= _seqs(path)
            theirs = _seqs(os.path.join(lab.workdir, f"p9-{pod.name}.pcap"), lo, hi)
            if not theirs:
                raise BenchError(f"p9: tcpdump saw nothing of {pod.name} in the save's window")
            s.update({"window_s": round((hi - lo) / 1e9, 3), "tcpdump_packets": len(theirs),
                      "saved_packets": len(ours), "saved_of_tcpdump": len(ours & theirs),
                      "window_ratio": len(ours & theirs) / len(theirs),
                      "unaccounted": sum(p.unaccounted for p in st.pods)})
            log(f"p9 window {s['capture']}: {s}")
        pc.client.stop_recorder(rid)
    finally:
        pc.close()
        for p in pods:
            for path in (os.path.join(lab.workdir, f"p9-{p.name}.pcap"),):
                if os.path.exists(path):
                    os.unlink(path)
        lab.remove_pods(pods)
    out = {
        "p9_pods": n_pods,
        "p9_cpu_ratio": idle["agent_cpu_s"] / max(idle["tcpdump_cpu_s"], 1e-6),
        "p9_idle_fraction": idle["sent_bytes"] / idle["traffic_bytes"] if idle["traffic_bytes"] else float("inf"),
        "p9_trigger_margin_s": max(s["margin_s"] for s in saves),
        "p9_window_ratio": min(s["window_ratio"] for s in saves),
        "p9_unaccounted": sum(s["unaccounted"] for s in saves),
    }
    return out, [{"idle": idle}, *saves]
