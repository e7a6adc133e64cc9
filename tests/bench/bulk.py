"""Benchmark phase p10: bulk TCP between two pods (issue 21's traffic), podcap against ``tcpdump -w`` on the same
veths in the same run.

Two pods on a bridge; ``python3 -m http.server`` in one, ``curl`` in the other downloading a file of random bytes
``downloads`` times, unthrottled, GSO/GRO on (the veth default: libpcap sees frames of up to 64 KiB). podcap
captures both pods, as ``podcap start -n NS`` did in the issue (collector and agent as separate processes; the
agent as deploy/base runs it, with a 1 GiB spool behind its 64 MiB memory buffer), while one ``tcpdump -w`` per
pod with the same ring (``-B`` 32 MiB, what the agent gives each of two pods) captures the same host veth: both
see the same packets, so the figures compare capturers. Every frame crosses both veths, so the agent's one capture
thread moves twice the download, as the two tcpdumps together do. Rounds run at MTU 1500, then again with MTU 9000
on both veth ends and the bridge.

Figures, from parsing the stored files (podcap's segments, tcpdump's files) and the daemons' own status:
- ``p10_payload_ratio``: TCP + UDP payload bytes podcap stored ÷ the tcpdumps', MTU 1500 (target >= 0.99);
  ``p10_payload_ratio_mtu9000`` the same at MTU 9000;
- ``p10_unaccounted``: the sum over pods and rounds of status ``unaccounted`` once the capture is stopped
  (target 0: every packet the kernel delivered is stored or counted by cause);
- ``p10_cpu_ratio``: the agent's CPU seconds ÷ the tcpdumps' over the same traffic (psutil; the agent's until its
  capture is stored, MTU 1500 rounds); the collector's CPU is in the detail lines.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import psutil

from podcap.agent.capture.settings import EngineSettings, auto_ring_bytes
from podcap.collector.demo.node import DemoPod as Pod
from podcap.v1 import control_pb2
from tests.bench.lab import BenchError, Lab, Podcap, _run, cpu_seconds, log
from tests.traffic import (
    PayloadStats,
    Tcpdump,
    curl_argv,
    http_server_argv,
    payload_stats,
    set_mtu,
    url,
    write_random_file,
)

# What the agent gives each of two pods of a capture (its auto ring): each tcpdump's -B too.
RING = auto_ring_bytes(EngineSettings().ring_budget_bytes, 2)
SUBNET = "10.99.10."


def _stored_payload(pc: Podcap, st: control_pb2.CaptureStatus) -> dict[str, PayloadStats]:
    """Payload of every pod's stored segments (parsed, then deleted)."""
    out: dict[str, PayloadStats] = {}
    for p in st.pods:
        total = PayloadStats()
        d = os.path.join(pc.data_dir, p.path)
        for name in sorted(os.listdir(d)) if p.path and os.path.isdir(d) else []:
            if name.endswith(".pcap"):
                seg = payload_stats(os.path.join(d, name))
                total.frames += seg.frames
                total.tcp_payload += seg.tcp_payload
                total.udp_payload += seg.udp_payload
                total.max_frame = max(total.max_frame, seg.max_frame)
                total.over_9000 += seg.over_9000
                os.unlink(os.path.join(d, name))
        out[p.pod.name] = total
    return out


def _download(lab: Lab, client: Pod, target: str, size: int, downloads: int) -> float:
    t0 = time.monotonic()
    for _ in range(downloads):
        r = _run(["ip", "netns", "exec", client.netns, *curl_argv(target)])
        if r.stdout.split() != [str(size)]:
            raise BenchError(f"p10: curl fetched {r.stdout.strip()!r} of {size} bytes: {r.stderr.strip()}")
    return time.monotonic() - t0


def run_round(lab: Lab, pc: Podcap, pods: list[Pod], client: Pod, target: str, size: int, downloads: int,
              mtu: int) -> dict[str, Any]:
    """One capture of ``pods`` by podcap and, at the same time, one ``tcpdump -w`` per pod on the same veths."""
    dumps = [Tcpdump(p.host_veth, os.path.join(lab.workdir, f"p10-{p.name}.pcap"),
                     os.path.join(lab.workdir, f"p10-{p.name}-{mtu}.log"), buffer_bytes=RING) for p in pods]
    lab.procs.extend(d.proc for d in dumps)  # cleanup stops them if anything below fails
    try:
        for d in dumps:
            d.wait_listening()
        cid = pc.start(pods[0].namespace, [p.name for p in pods])
        pc.wait_capturing(cid, len(pods), 30)
        time.sleep(0.5)
        p_dumps = [psutil.Process(d.proc.pid) for d in dumps]
        a0, k0 = cpu_seconds(pc.p_agent), cpu_seconds(pc.p_collector)
        d0 = sum(cpu_seconds(p) for p in p_dumps)
        wall = _download(lab, client, target, size, downloads)
        time.sleep(1.0)  # both drain their rings
        d1 = sum(cpu_seconds(p) for p in p_dumps)
        st = pc.stop_capture(cid, timeout=120)
        a1, k1 = cpu_seconds(pc.p_agent), cpu_seconds(pc.p_collector)
    finally:
        for d in dumps:
            d.stop()
            lab.procs.remove(d.proc)
    ours = _stored_payload(pc, st)
    theirs = {}
    for p, d in zip(pods, dumps, strict=True):
        theirs[p.name] = payload_stats(d.path)
        os.unlink(d.path)
        if theirs[p.name].over_9000 == 0:
            raise BenchError(f"p10: no frame past 9000 bytes on {p.host_veth} (max {theirs[p.name].max_frame}): "
                             "GSO/GRO off?")
    return {"mtu": mtu, "capture": cid, "downloads": downloads, "bytes": downloads * size, "wall_s": round(wall, 2),
            "podcap_payload": sum(x.payload for x in ours.values()),
            "tcpdump_payload": sum(x.payload for x in theirs.values()),
            "agent_cpu_s": round(a1 - a0, 3), "collector_cpu_s": round(k1 - k0, 3), "tcpdump_cpu_s": round(d1 - d0, 3),
            "unaccounted": sum(ps.unaccounted for ps in st.pods),
            "pods": {ps.pod.name: {
                "podcap_payload": ours[ps.pod.name].payload, "tcpdump_payload": theirs[ps.pod.name].payload,
                "podcap_frames": ours[ps.pod.name].frames, "tcpdump_frames": theirs[ps.pod.name].frames,
                "frames_over_9000": ours[ps.pod.name].over_9000, "max_frame": theirs[ps.pod.name].max_frame,
                "tcpdump_dropped": d.dropped, "received": ps.kernel.received, "kernel_dropped": ps.kernel.dropped,
                "status_packets": ps.packets, "drops": {k: v for k, v in _drops(ps).items() if v},
                "unaccounted": ps.unaccounted, "final": ps.final}
                for ps, d in ((ps, dumps[[p.name for p in pods].index(ps.pod.name)]) for ps in st.pods)}}


def _drops(ps: control_pb2.PodStatus) -> dict[str, int]:
    return {f.name: int(v) for f, v in ps.drops.ListFields()}


def phase_p10(lab: Lab, *, file_mib: int, downloads: int, rounds: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    namespace = f"pcb-{lab.tag}-t"
    bridge = lab.add_bridge()
    web, client = lab.add_pods(namespace, ["web", "client"], first_index=600, bridge=bridge)
    for i, pod in enumerate((web, client)):
        pod.ip = f"{SUBNET}{i + 1}"
        _run(["ip", "-n", pod.netns, "addr", "add", f"{pod.ip}/24", "dev", "eth0"])
        _run(["ip", "-n", pod.netns, "link", "set", "lo", "up"])
    www = os.path.join(lab.workdir, "www")
    os.mkdir(www)
    size = file_mib << 20
    write_random_file(os.path.join(www, "big.bin"), size)
    server, _ = lab.spawn("http-server", ["ip", "netns", "exec", web.netns,
                                          *http_server_argv(sys.executable, www, web.ip)])
    target = url(web.ip, "big.bin")
    deadline = time.monotonic() + 15
    while _run(["ip", "netns", "exec", client.netns, "curl", "-sS", "-o", "/dev/null", "--max-time", "2",
                url(web.ip, "")], check=False).returncode:
        if time.monotonic() > deadline or server.poll() is not None:
            raise BenchError("p10: the HTTP server never answered")
        time.sleep(0.1)
    _download(lab, client, target, size, 1)  # untimed: the file in the page cache, neighbours and bridge learned
    log(f"p10: {downloads} downloads of {file_mib} MiB from {web.name} to {client.name} per round, {rounds} "
        "round(s) at MTU 1500 and at MTU 9000; podcap and a tcpdump per pod on the same veths at once")
    spool = os.path.join(lab.workdir, "p10-spool")
    pc = Podcap(lab, f"pcb-{lab.tag}-t", collector_cpu=None, agent_cpu=None,
                agent_args=("--spool-dir", spool, "--spool-bytes", str(1 << 30)))
    runs: list[dict[str, Any]] = []
    try:
        for mtu in (1500, 9000):
            if mtu != 1500:
                set_mtu(bridge, [web, client], mtu)
            for r in range(rounds):
                res = run_round(lab, pc, [web, client], client, target, size, downloads, mtu)
                res["round"] = r + 1
                runs.append(res)
                log(f"p10 MTU {mtu} round {r + 1}: {res}")
    finally:
        pc.close()
        lab.stop(server, signal.SIGTERM)
        lab.procs.remove(server)
        lab.remove_pods([web, client])

    def ratio(mtu: int) -> float:
        ours = sum(x["podcap_payload"] for x in runs if x["mtu"] == mtu)
        theirs = sum(x["tcpdump_payload"] for x in runs if x["mtu"] == mtu)
        if not theirs:
            raise BenchError(f"p10: tcpdump stored no payload at MTU {mtu}")
        return float(ours / theirs)

    std = [x for x in runs if x["mtu"] == 1500]
    td_cpu = sum(x["tcpdump_cpu_s"] for x in std)
    out = {
        "p10_payload_ratio": ratio(1500),
        "p10_payload_ratio_mtu9000": ratio(9000),
        "p10_unaccounted": sum(x["unaccounted"] for x in runs),
        "p10_cpu_ratio": sum(x["agent_cpu_s"] for x in std) / td_cpu if td_cpu else float("inf"),
    }
    return out, runs
