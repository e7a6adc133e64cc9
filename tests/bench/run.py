"""podcap capture benchmark (issues 3 and 12). Run as root from the repository root:

    python -m tests.bench.run            # full run (a few minutes), thresholds reported
    python -m tests.bench.run --smoke    # ~2 s per phase, 10 pods, no thresholds (CI)
    python -m tests.bench.run --soak 20  # only the soak (tests/bench/soak.py), 20 minutes

It builds its own pods (named network namespaces ``/run/netns/pcb-<tag>.<pod>`` with a veth each, the host side
named ``pcb<tag>h<i>``), runs the real ``podcap-collector`` and ``podcap-agent`` console scripts as separate
processes, generates traffic only between the pods' ``eth0`` and their host veths (trafgen / ``lightgen.py``,
bounded in time), measures the capturers' CPU from /proc (psutil) and removes everything it created — also on
failure, SIGTERM or Ctrl+C.

Phases
  p1/p2  one pod, 128-byte UDP at the max rate trafgen reaches with tcpdump attached (calibrated first, then a
         fixed packet count per run so every run offers the same traffic). Runs alternate on the same host veth:
         ``tcpdump -w FILE``, podcap, tcpdump, podcap, ... Generator pinned to CPU 0, capturer (tcpdump / agent)
         to CPU 1; the collector is pinned to CPU 0 (it never shares the capturer's CPU). Packets are counted by
         parsing the stored pcap files. ``p1_drop_ratio`` compares the agent's kernel-drop fraction with
         tcpdump's in the same run (one packet added to each side's drops, so nothing dropped on both sides is 1.0);
         ``--p1-hostile`` runs the generator on every CPU (faster, and competing with the capturer). p2_cpu_ratio
         is podcap's mean round (agent + collector) against tcpdump's cheapest (warm) round; all rounds are in
         p2_cpu_ratio_all_rounds.
  p3     N pods (200; 10 with --smoke) on one agent, 100 pps per pod: start latency, RSS, CPU%, drops.
  p4     time to retrieve a 60 s window of ONE pod from a capture holding >= 5 GB (~200 MB with --smoke). The data
         goes in through the real path: a collector process and a synthetic agent (``windowgen.py``, a gRPC client
         of podcap.v1.Ingest) that streams 1500-byte records of 4 pods over 2 hours of packet time (timestamps
         advancing chunk after chunk, so the size-rotated segments cover distinct time ranges). Then
         ``podcap get ID -o DIR POD --since T1 --until T2`` (the CLI, end to end including process start:
         p4_window_s) and the Download RPC through CollectorClient (p4_window_api_s), each the median of 3 runs
         with the capture's segments evicted from the page cache first; every result is parsed and must be exactly
         the records generated for that pod in that window. The stored data is deleted afterwards.
  p5     several busy pods at once on a bridge, flooded traffic: tcpdump x4 against one podcap capture, stored
         ratio, worst pod, per-pod accounting, CPU, the agent's peak backlog and the collector's commit latency
         (tests/bench/busy.py; ``--p5-stall S`` freezes the collector mid-burst to overflow the agent).
  p6     ``podcap get --merge`` against ``mergecap`` on the same per-pod files of a real capture of 4 busy pods
         (>= 1 GB): what merging adds to a download, over mergecap's time; the merged file must equal mergecap's
         packet for packet (tests/bench/merge_export.py).
  p7     podcap's segment upload to a real S3 gateway against boto3's plain multipart PUT of the same file, a
         60 s window of one pod out of >= 2 GB in the bucket by ``podcap get --from``, and what compression keeps
         of UDP and HTTP (tests/bench/objects.py).
  p8     a capture's age must not make it slower (tests/bench/cost.py): collector CPU per GB in the last 30 s
         of 7 minutes at ~40 MB/s with 1 MiB segments ÷ the first 30 s, commit p99 and RSS growth; ``podcap
         status`` and a 60 s window ``get`` of a capture of 1,000,000 segments ÷ the same on one of 100 segments.
  p9     a flight recorder on 200 pods at ~100 kB/s each (tests/bench/recorder.py): the agent's CPU ÷ a
         ``tcpdump -w`` per pod, bytes sent to the collector while idle ÷ the traffic, ``podcap trigger`` until the
         save is stored minus ``--after``, and the saved window's packets ÷ tcpdump's in that window.
  p10    bulk TCP between two pods (HTTP downloads with curl, GSO/GRO frames up to 64 KiB; issue 21's traffic):
         payload bytes podcap stored ÷ tcpdump's on the same veth in the same run, at MTU 1500 and 9000, the
         pods' ``unaccounted`` after the stop, agent CPU ÷ tcpdump's (tests/bench/bulk.py).
  soak   (``--soak MINUTES``; a 0.4-minute one in --smoke) many pods for a long time with rotation and retention:
         RSS, CPU and fds every minute, RSS drift, accounting (tests/bench/soak.py).

The last stdout line is one JSON object with the figures (keys in ``KEYS``). Each p1/p2 run's JSON line also has
the user/kernel split (``sys_s``, ``collector_sys_s``), to see where time goes.

Figures of past runs, and what we learned measuring on these machines: ``tests/bench/NOTES.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil

from podcap.collector.cli.client import CollectorClient, CollectorError
from podcap.collector.cli.get.download import download_files, per_pod_paths
from podcap.formats.pcap import FILE_HEADER_LEN
from podcap.v1 import control_pb2
from tests.bench.bulk import phase_p10
from tests.bench.busy import phase_p5
from tests.bench.cost import phase_p8
from tests.bench.lab import (
    CAP_CPU,
    GEN_CPU,
    HERE,
    P1_GENERATOR,
    PROFILE,
    BenchError,
    Lab,
    Pod,
    Podcap,
    _run,
    checkpoint,
    console_script,
    count_pcap_packets,
    cpu_seconds,
    log,
    rx_packets,
    sigterm_as_interrupt,
    sys_seconds,
    trafgen,
    wait_for_log,
)
from tests.bench.merge_export import phase_p6
from tests.bench.objects import phase_p7
from tests.bench.recorder import phase_p9
from tests.bench.soak import phase_soak
from tests.bench.windowgen import CHUNK_BYTES, RECORDS_PER_CHUNK, Schedule, pod_name, verify_pcap

KEYS = (
    "p1_offered_pps", "p1_cpu_ratio", "p1_drop_fraction", "p1_tcpdump_drop_fraction", "p1_drop_ratio",
    "p2_cpu_ratio", "p2_cpu_ratio_all_rounds", "p2_stored_fraction",
    "p3_pods", "p3_rss_mib", "p3_start_s", "p3_idle_cpu_pct", "p3_drop_fraction",
    "p4_stored_gb", "p4_window_s", "p4_window_api_s",
    "p5_stored_ratio", "p5_min_pod_ratio", "p5_unaccounted", "p5_cpu_ratio", "p5_tcpdump_cpu_s", "p5_agent_cpu_s",
    "p5_collector_cpu_s", "p5_peak_backlog_mib", "p5_commit_p99_s", "p6_stored_gb", "p6_merge_ratio",
    "p6_merge_step_ratio", "p6_mergecap_s", "p6_identical", "p7_upload_ratio", "p7_upload_mb_s",
    "p7_compression_udp", "p7_compression_http", "p7_compress_mb_s_udp", "p7_compress_mb_s_http",
    "p7_window_s", "p7_window_read_s", "p7_window_gb", "p7_window_fetched_mb", "p7_window_raw_mb", "p7_archive_mb_s",
    "p8_cost_growth", "p8_segments", "p8_cpu_s_per_gb_first", "p8_cpu_s_per_gb_last", "p8_commit_p99_first_s",
    "p8_commit_p99_last_s", "p8_rss_growth_mib", "p8_status_s", "p8_window_s", "p8_status_big_s", "p8_window_big_s",
    "p8_startup_s",
    "p9_pods", "p9_cpu_ratio", "p9_idle_fraction", "p9_trigger_margin_s", "p9_window_ratio", "p9_unaccounted",
    "p10_payload_ratio", "p10_payload_ratio_mtu9000", "p10_unaccounted", "p10_cpu_ratio",
)
SOAK_KEYS = (
    "soak_minutes", "soak_pods", "soak_offered_pps", "soak_unaccounted", "soak_rss_drift_agent",
    "soak_rss_drift_collector", "soak_rss_agent_mib", "soak_rss_collector_mib", "soak_fds_agent",
    "soak_fds_collector", "soak_cpu_pct_agent", "soak_cpu_pct_collector", "soak_cpu_s_per_gb_minute2",
    "soak_cpu_s_per_gb_last",
)
TARGETS = {  # key: (comparison, bound)
    "p1_cpu_ratio": ("<=", 1.1), "p1_drop_ratio": ("<=", 1.0), "p2_cpu_ratio": ("<=", 2.0),
    "p2_stored_fraction": ("==", 1.0), "p3_rss_mib": ("<=", 200.0), "p3_start_s": ("<=", 3.0),
    "p3_idle_cpu_pct": ("<=", 3.0), "p3_drop_fraction": ("==", 0.0), "p4_window_s": ("<=", 1.0),
    "p5_stored_ratio": (">=", 0.99), "p5_min_pod_ratio": (">=", 0.95), "p5_unaccounted": ("==", 0.0),
    "p6_merge_ratio": ("<=", 1.0), "p6_identical": ("==", 1.0),
    "p7_upload_ratio": (">=", 0.8), "p7_window_s": ("<=", 1.0),
    "p8_cost_growth": ("<=", 1.15), "p8_status_s": ("<=", 1.5), "p8_window_s": ("<=", 1.5),
    "p9_idle_fraction": ("<", 0.001), "p9_trigger_margin_s": ("<=", 3.0), "p9_window_ratio": (">=", 0.99),
    "p9_unaccounted": ("==", 0.0),
    "p10_payload_ratio": (">=", 0.99), "p10_payload_ratio_mtu9000": (">=", 0.99), "p10_unaccounted": ("==", 0.0),
    "soak_unaccounted": ("==", 0.0), "soak_rss_drift_agent": ("<=", 0.05), "soak_rss_drift_collector": ("<=", 0.05),
}
TRAFGEN_CONF = """/* 128-byte UDP 10.99.0.1:4000 -> 10.99.0.2:9; the destination MAC is nobody's, so the host veth
   discards every frame right after the packet taps (capture still sees all of them). */
{
  eth(da=02:99:00:00:00:02, type=0x0800),
  ipv4(saddr=10.99.0.1, daddr=10.99.0.2, ttl=64),
  udp(sp=4000, dp=9),
  fill(0x41, 86)
}
"""



# ---------------------------------------------------------------------------------------------------------------
# p1 / p2




def run_tcpdump(lab: Lab, pod: Pod, conf: str, seconds: float, count: int) -> dict[str, Any]:
    out = os.path.join(lab.workdir, "tcpdump.pcap")
    proc, path = lab.spawn("tcpdump", ["tcpdump", "-i", pod.host_veth, "-p", "-n", "-w", out], cpu=CAP_CPU)
    try:
        wait_for_log(path, r"listening on", proc, 15)
        time.sleep(0.5)
        pp = psutil.Process(proc.pid)
        rx0, c0, s0 = rx_packets(pod.host_veth), cpu_seconds(pp), sys_seconds(pp)
        wall, sent = trafgen(lab, pod, conf, seconds=seconds, count=count)
        time.sleep(1.0)  # let it drain its ring
        c1, s1, rx1 = cpu_seconds(pp), sys_seconds(pp), rx_packets(pod.host_veth)
    finally:
        lab.stop(proc, signal.SIGINT)
        lab.procs.remove(proc)
    with open(path, errors="replace") as f:
        txt = f.read()

    def grab(what: str) -> int:
        m = re.search(r"(\d+) packets? " + what, txt)
        return int(m.group(1)) if m else -1

    res = {"who": "tcpdump", "offered": rx1 - rx0, "sent": sent, "gen_wall": round(wall, 2),
           "cpu_s": c1 - c0, "sys_s": round(s1 - s0, 2), "received": grab("received by filter"),
           "dropped": grab("dropped by kernel"),
           "stored": count_pcap_packets(out)}
    os.unlink(out)
    return res


def run_podcap(pc: Podcap, pod: Pod, conf: str, seconds: float, count: int) -> dict[str, Any]:
    cid = pc.start(pod.namespace, [pod.name])
    pc.wait_capturing(cid, 1, 20)
    time.sleep(0.5)
    profilers = pc.profile_start()
    rx0, a0, k0 = rx_packets(pod.host_veth), cpu_seconds(pc.p_agent), cpu_seconds(pc.p_collector)
    as0, ks0 = sys_seconds(pc.p_agent), sys_seconds(pc.p_collector)
    wall, sent = trafgen(pc.lab, pod, conf, seconds=seconds, count=count)
    pc.profile_stop(profilers)
    time.sleep(1.0)  # same drain allowance as tcpdump
    st = pc.stop_capture(cid)  # returns once the final chunks are stored
    a1, k1, rx1 = cpu_seconds(pc.p_agent), cpu_seconds(pc.p_collector), rx_packets(pod.host_veth)
    as1, ks1 = sys_seconds(pc.p_agent), sys_seconds(pc.p_collector)
    ps = st.pods[0]
    return {"who": "podcap", "offered": rx1 - rx0, "sent": sent, "gen_wall": round(wall, 2),
            "cpu_s": a1 - a0, "sys_s": round(as1 - as0, 2), "collector_cpu_s": k1 - k0,
            "collector_sys_s": round(ks1 - ks0, 2), "received": ps.kernel.received,
            "dropped": ps.kernel.dropped, "agent_dropped": ps.agent_dropped_packets, "status_packets": ps.packets,
            "stored": pc.stored_packets(st)}


def phase_p1p2(lab: Lab, seconds: float, rounds: int, ring_budget: int | None) -> tuple[dict[str, Any], list[Any]]:
    conf = os.path.join(lab.workdir, "pkt128.trafgen")
    with open(conf, "w") as f:
        f.write(TRAFGEN_CONF)
    namespace = f"pcb-{lab.tag}"
    (pod,) = lab.add_pods(namespace, ["load"])
    pc = Podcap(lab, f"pcb-{lab.tag}-a", collector_cpu=GEN_CPU, agent_cpu=CAP_CPU, ring_budget=ring_budget)
    try:
        # Calibrate: the max rate trafgen reaches with a capture (tcpdump) attached; then every run offers
        # exactly that many packets (count-bounded and time-bounded).
        cal = run_tcpdump(lab, pod, conf, seconds, 0)
        rate = cal["offered"] / max(cal["gen_wall"], 0.1)
        count = max(1000, int(rate * seconds))
        log(f"calibration: {cal['offered']} packets in {cal['gen_wall']} s = {rate:,.0f} pps; "
            f"each run offers {count:,} packets")
        runs: list[dict[str, Any]] = []
        bound = seconds * 3  # time bound of a count-bounded run (it normally ends after ~seconds)
        for r in range(rounds):
            for res in (run_tcpdump(lab, pod, conf, bound, count), run_podcap(pc, pod, conf, bound, count)):
                checkpoint()
                res["round"] = r + 1
                runs.append(res)
                log(json.dumps(res))
    finally:
        pc.close()
    td = [x for x in runs if x["who"] == "tcpdump"]
    ag = [x for x in runs if x["who"] == "podcap"]
    td_cpu = sum(x["cpu_s"] for x in td)
    ag_cpu = sum(x["cpu_s"] for x in ag)
    co_cpu = sum(x["collector_cpu_s"] for x in ag)
    offered = sum(x["offered"] for x in ag)
    td_offered = sum(x["offered"] for x in td)
    received = sum(x["received"] for x in ag)
    ag_drops = sum(x["dropped"] for x in ag)
    td_drops = sum(max(0, x["dropped"]) for x in td)
    # tcpdump's cheapest round is the one that ran on warm page-cache memory (see the notes above): the fair
    # baseline for podcap's mean round.
    td_warm = min(x["cpu_s"] for x in td)
    out = {
        "p1_cpu_ratio": ag_cpu / td_cpu if td_cpu else float("inf"),
        "p1_drop_fraction": ag_drops / offered if offered else 1.0,
        "p1_tcpdump_drop_fraction": td_drops / td_offered if td_offered else 1.0,
        # Drop fractions compared with one packet added to each side's drops, so that "both dropped nothing" is
        # 1.0 (as good as tcpdump) and "tcpdump dropped nothing, podcap a few" is above 1.0.
        "p1_drop_ratio": ((ag_drops + 1) / max(1, offered)) / ((td_drops + 1) / max(1, td_offered)),
        "p2_cpu_ratio": (ag_cpu + co_cpu) / len(ag) / td_warm if td_warm else float("inf"),
        "p2_cpu_ratio_all_rounds": (ag_cpu + co_cpu) / td_cpu if td_cpu else float("inf"),
        # Of what the kernel delivered to the agent (received - kernel drops), the part stored: 1.0 = podcap lost
        # nothing between the ring and the disk.
        "p2_stored_fraction": sum(x["stored"] for x in ag) / (received - ag_drops) if received > ag_drops else 0.0,
        "p1_offered_pps": rate,
    }
    return out, runs


# ---------------------------------------------------------------------------------------------------------------
# p3


def phase_p3(lab: Lab, n_pods: int, pps: float, seconds: float, ring_budget: int | None) -> tuple[dict[str, Any],
                                                                                                   dict[str, Any]]:
    namespace = f"pcb-{lab.tag}-m"
    t = time.monotonic()
    pods = lab.add_pods(namespace, [f"p{i}" for i in range(n_pods)], first_index=100)
    log(f"p3: {n_pods} pods created in {time.monotonic() - t:.1f} s")
    pc = Podcap(lab, f"pcb-{lab.tag}-b", collector_cpu=GEN_CPU, agent_cpu=CAP_CPU, ring_budget=ring_budget)
    try:
        time.sleep(1.0)
        rss_before = pc.p_agent.memory_info().rss
        t0 = time.monotonic()
        cid = pc.start(namespace)
        t1 = pc.wait_capturing(cid, n_pods, 60)
        start_s = t1 - t0
        log(f"p3: {n_pods} pods capturing {start_s:.2f} s after the start request")
        time.sleep(2.5)  # > the agent's stats interval: the counters below are fresh

        def kernel_drops() -> int:
            return sum(p.kernel.dropped for p in pc.client.get(cid).pods)

        drops_before_traffic = kernel_drops()
        rx0 = {p.host_veth: rx_packets(p.host_veth) for p in pods}
        gen, gpath = lab.spawn("lightgen", ["taskset", "-c", GEN_CPU, sys.executable, os.path.join(HERE, "lightgen.py"),
                                            "--pps", str(pps), "--duration", str(seconds),
                                            *[p.netns_path for p in pods]])
        wait_for_log(gpath, "READY", gen, 30)
        profilers = pc.profile_start()
        a0, w0 = cpu_seconds(pc.p_agent), time.monotonic()
        rss_max = pc.p_agent.memory_info().rss
        while gen.poll() is None and time.monotonic() - w0 < seconds + 30:
            rss_max = max(rss_max, pc.p_agent.memory_info().rss)
            checkpoint()
            time.sleep(0.25)
        a1, w1 = cpu_seconds(pc.p_agent), time.monotonic()
        pc.profile_stop(profilers)
        lab.stop(gen)
        lab.procs.remove(gen)
        with open(gpath) as f:
            m = re.search(r"SENT (\d+)", f.read())
        sent = int(m.group(1)) if m else -1
        time.sleep(2.5)
        drops_after_traffic = kernel_drops()
        st = pc.stop_capture(cid)
        offered = sum(rx_packets(p.host_veth) - rx0[p.host_veth] for p in pods)
        dropped = sum(p.kernel.dropped for p in st.pods)
        received = sum(p.kernel.received for p in st.pods)
        stored = pc.stored_packets(st)
        dropping = {p.pod.name: (p.kernel.dropped, p.kernel.received) for p in st.pods if p.kernel.dropped}
    finally:
        pc.close()
    lab.remove_pods(pods)
    out = {
        "p3_pods": n_pods, "p3_rss_mib": rss_max / (1 << 20), "p3_start_s": start_s,
        "p3_idle_cpu_pct": 100.0 * (a1 - a0) / (w1 - w0), "p3_drop_fraction": dropped / offered if offered else 1.0,
    }
    detail = {"sent": sent, "offered": offered, "received": received, "dropped": dropped, "stored": stored,
              "rss_before_start_mib": round(rss_before / (1 << 20), 1), "cpu_window_s": round(w1 - w0, 2),
              "pps_per_pod": pps, "pods_with_drops": dropping, "drops_before_traffic": drops_before_traffic,
              "drops_after_traffic_before_stop": drops_after_traffic}
    return out, detail


# ---------------------------------------------------------------------------------------------------------------
# p4


P4_PODS = 4
P4_TARGET_POD = 1
P4_SPAN_S = 7200.0
P4_WINDOW_S = 60
P4_RUNS = 3


def evict(paths: list[str]) -> None:
    """Drop these (clean, fsynced) files from the page cache, so the next read comes from the disk."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def rfc3339(ns: int) -> str:
    """A whole-second time as RFC 3339 UTC (what a user types)."""
    assert ns % 1_000_000_000 == 0
    return datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def segment_first_ts(path: str) -> int:
    with open(path, "rb") as f:
        head = f.read(FILE_HEADER_LEN + 8)
    sec, frac = int.from_bytes(head[24:28], "little"), int.from_bytes(head[28:32], "little")
    return sec * 1_000_000_000 + frac


def phase_p4(lab: Lab, total_bytes: int, segment_bytes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    node = namespace = f"pcb-{lab.tag}-w"
    data_dir = os.path.join(lab.workdir, "data-p4")
    chunks_per_pod = max(1, math.ceil(total_bytes / (CHUNK_BYTES * P4_PODS)))
    now_s = time.time_ns() // 1_000_000_000
    sched = Schedule(base_ns=(now_s - int(P4_SPAN_S) - 600) * 1_000_000_000, span_s=P4_SPAN_S, pods=P4_PODS,
                     per_pod=chunks_per_pod * RECORDS_PER_CHUNK)
    pod = pod_name(P4_TARGET_POD)
    detail: dict[str, Any] = {}
    procs: list[subprocess.Popen[bytes]] = []
    client: CollectorClient | None = None
    try:
        collector, clog = lab.spawn("collector-p4", [console_script("podcap-collector"), "--insecure", "--listen",
                                                     "127.0.0.1:0", "--data-dir", data_dir])
        procs.append(collector)
        port = int(wait_for_log(clog, r"\(port (\d+)\)", collector, 20).group(1))
        address = f"127.0.0.1:{port}"
        gen, glog = lab.spawn("windowgen", [sys.executable, os.path.join(HERE, "windowgen.py"), "--collector",
                                            address, "--node", node, "--namespace", namespace, *sched.args()])
        procs.append(gen)
        wait_for_log(glog, "REGISTERED", gen, 30)
        client = CollectorClient(address, timeout=60)
        req = control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace=namespace),
                                              note="podcap benchmark p4 (time window)")
        if segment_bytes:
            req.rotation.segment_bytes = segment_bytes
        deadline = time.monotonic() + 30
        while True:  # the agent's inventory may not have reached the collector yet
            checkpoint()
            try:
                cid = str(client.start(req).id)
                break
            except CollectorError as e:
                if time.monotonic() > deadline:
                    raise BenchError(f"cannot start capture: {e}") from e
                time.sleep(0.2)
        log(f"p4: capture {cid}: {P4_PODS} pods x {sched.per_pod:,} records of 1516 bytes "
            f"({sched.per_pod * P4_PODS * 1516 / 1e9:.2f} GB) over {P4_SPAN_S:.0f} s of packet time")
        t = time.monotonic()
        m = wait_for_log(glog, r"INGESTED (\{.*\})", gen, 60 + total_bytes / 10e6)
        detail["ingest"] = json.loads(m.group(1))
        log(f"p4: ingested in {time.monotonic() - t:.1f} s: {detail['ingest']}")
        client.stop(cid)
        wait_for_log(glog, "STOPPED", gen, 60)
        gen.wait(timeout=30)
        st = client.get(cid)
        if st.state != control_pb2.CAPTURE_STATE_DONE:
            raise BenchError(f"capture {cid} in state {st.state} after the stop ({st.end_reason})")
        want_packets = sched.per_pod * P4_PODS
        if st.packets != want_packets or st.bytes < total_bytes:
            raise BenchError(f"capture {cid} stored {st.packets} packets / {st.bytes} bytes, expected "
                             f"{want_packets} packets / >= {total_bytes} bytes")
        (ps,) = [p for p in st.pods if p.pod.name == pod]
        seg_dir = os.path.join(data_dir, ps.path)
        segs = sorted(os.path.join(seg_dir, n) for n in os.listdir(seg_dir) if n.endswith(".pcap"))
        every_segment = [os.path.join(d, n) for d, _, names in os.walk(os.path.join(data_dir, "captures", cid))
                         for n in names if n.endswith(".pcap")]
        # The window straddles the start of the pod's middle segment (two segments to read, the usual case).
        mid = segment_first_ts(segs[len(segs) // 2]) if len(segs) > 1 else sched.ts(P4_TARGET_POD,
                                                                                  sched.per_pod // 2)
        since = (mid // 1_000_000_000 - P4_WINDOW_S // 2) * 1_000_000_000
        until = since + P4_WINDOW_S * 1_000_000_000
        first, count = sched.expected(P4_TARGET_POD, since, until)
        overlapping = sum(1 for i, p in enumerate(segs) if segment_first_ts(p) <= until and
                          (i + 1 == len(segs) or segment_first_ts(segs[i + 1]) >= since))
        detail.update(capture=cid, stored_bytes=st.bytes, stored_packets=st.packets, segments=len(every_segment),
                      pod_segments=len(segs), window_segments=overlapping, pod=f"{namespace}/{pod}",
                      since=rfc3339(since), until=rfc3339(until), window_records=count, window_first=first)
        log(f"p4: {st.bytes / 1e9:.2f} GB in {len(every_segment)} segments; window {rfc3339(since)} .. "
            f"{rfc3339(until)} of {pod}: {count} records expected (#{first}..), {overlapping} of its {len(segs)} "
            "segments overlap it")
        podcap = console_script("podcap")

        def cli_get(cold: bool) -> tuple[float, int]:
            out = tempfile.mkdtemp(prefix="get-", dir=lab.workdir)
            try:
                if cold:
                    evict(every_segment)
                t0 = time.monotonic()
                r = subprocess.run([podcap, "--collector", address, "get", cid, "-o", out, pod, "--since",
                                    rfc3339(since), "--until", rfc3339(until)], capture_output=True, text=True)
                dt = time.monotonic() - t0
                if r.returncode != 0:
                    raise BenchError(f"podcap get: exit {r.returncode}: {r.stderr.strip()[-1000:]}")
                v = verify_pcap(os.path.join(out, namespace, f"{pod}.pcap"), sched, P4_TARGET_POD, since, until)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            return dt, v.bytes

        def api_get() -> float:
            assert client is not None
            out = tempfile.mkdtemp(prefix="api-", dir=lab.workdir)
            try:
                evict(every_segment)
                t0 = time.monotonic()
                files = download_files(client, cid, [pod], per_pod_paths(out, ".pcap"), since_ns=since,
                                       until_ns=until)
                dt = time.monotonic() - t0
                if len(files) != 1:
                    raise BenchError(f"download returned {len(files)} files")
                verify_pcap(files[0].path, sched, P4_TARGET_POD, since, until)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            return dt

        cli_runs, api_runs = [], []
        for _ in range(P4_RUNS):
            checkpoint()
            dt, size = cli_get(cold=True)
            cli_runs.append(dt)
            api_runs.append(api_get())
        warm, _ = cli_get(cold=False)
        t0 = time.monotonic()
        _run([podcap, "--version"])
        detail.update(window_file_bytes=size, cli_runs_s=[round(x, 3) for x in cli_runs],
                      api_runs_s=[round(x, 3) for x in api_runs], cli_warm_s=round(warm, 3),
                      cli_version_s=round(time.monotonic() - t0, 3))
        log(f"p4: podcap get {cli_runs} s, Download RPC {api_runs} s (cold), warm CLI {warm:.3f} s")
    finally:
        if client is not None:
            client.close()
        for proc in procs:
            lab.stop(proc)
            lab.procs.remove(proc)
        shutil.rmtree(data_dir, ignore_errors=True)
    out = {"p4_stored_gb": st.bytes / 1e9, "p4_window_s": sorted(cli_runs)[len(cli_runs) // 2],
           "p4_window_api_s": sorted(api_runs)[len(api_runs) // 2]}
    return out, detail


# ---------------------------------------------------------------------------------------------------------------


def check_environment() -> None:
    if os.geteuid() != 0:
        raise SystemExit("tests.bench.run: needs root (network namespaces, veths, packet capture)")
    missing = [t for t in ("ip", "taskset", "tcpdump", "trafgen", "timeout") if not shutil.which(t)]
    if missing:
        raise SystemExit(f"tests.bench.run: missing {', '.join(missing)} (apt-get install tcpdump netsniff-ng "
                         "iproute2 util-linux)")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("tests.bench.run: needs 2 CPUs (generator and capturer are pinned apart)")


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def verdict(key: str, v: Any) -> str:
    if key not in TARGETS or not isinstance(v, (int, float)):
        return ""
    op, bound = TARGETS[key]
    ok = (v <= bound if op == "<=" else v >= bound if op == ">=" else v < bound if op == "<"
          else abs(v - bound) < 1e-12)
    return f"{op} {bound:g}  {'ok' if ok else 'MISS'}"


def print_table(result: dict[str, Any], runs: list[dict[str, Any]], p3: dict[str, Any], smoke: bool,
                p4: dict[str, Any] | None = None) -> None:
    if runs:
        print("p1/p2 runs (same host veth, same offered packets, alternating):")
        hdr = f"{'#':>2} {'capturer':8} {'offered':>10} {'gen s':>6} {'pps':>9} {'cpu s':>6} {'coll s':>6} " \
              f"{'recv':>10} {'drop':>7} {'stored':>10}"
        print(hdr)
        for r in runs:
            print(f"{r['round']:>2} {r['who']:8} {r['offered']:>10,} {r['gen_wall']:>6} "
                  f"{r['offered'] / max(r['gen_wall'], 0.01):>9,.0f} {r['cpu_s']:>6.2f} "
                  f"{r.get('collector_cpu_s', 0):>6.2f} {r['received']:>10,} {r['dropped']:>7,} {r['stored']:>10,}")
    if p3:
        print("p3 detail: " + ", ".join(f"{k}={v}" for k, v in p3.items()))
    if p4:
        print("p4 detail: " + ", ".join(f"{k}={v}" for k, v in p4.items()))
    print(f"summary{' (smoke: no thresholds)' if smoke else ''}:")
    for k in (*KEYS, *[k for k in SOAK_KEYS if k in result]):
        print(f"  {k:24} {fmt(result.get(k)):>10}  {'' if smoke else verdict(k, result.get(k))}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="~2 s per phase, 10 pods, no thresholds")
    ap.add_argument("--seconds", type=float, help="traffic seconds per p1/p2 run (default 10; smoke 2)")
    ap.add_argument("--rounds", type=int, help="tcpdump/podcap alternations (default 2; smoke 1)")
    ap.add_argument("--pods", type=int, help="pods in p3 (default 200; smoke 10)")
    ap.add_argument("--pps", type=float, default=100.0, help="p3 packets per second per pod")
    ap.add_argument("--p3-seconds", type=float, help="p3 traffic seconds (default 10; smoke 2)")
    ap.add_argument("--ring-budget", type=int, help="passed to podcap-agent --ring-budget")
    ap.add_argument("--p4-gib", type=float, help="p4: GiB of records to store (default 5; smoke 0.2)")
    ap.add_argument("--p4-segment-mib", type=int, help="p4: segment size (default: the collector's, 64 MiB; "
                    "smoke 8)")
    ap.add_argument("--p1-hostile", action="store_true", help="p1/p2: the generator runs on every CPU (one "
                    "sender each), competing with the capturer, for higher and harsher rates")
    ap.add_argument("--p5-frames", type=int, help="p5: frames each pod sends (default 150000; smoke 20000)")
    ap.add_argument("--p5-rate", type=int, default=25000, help="p5: frames per second each pod sends")
    ap.add_argument("--p5-pods", type=int, default=4, help="p5: busy pods on the bridge")
    ap.add_argument("--p5-stall", type=float, default=0.0, help="p5: freeze the collector this many seconds "
                    "during the traffic (SIGSTOP), to overflow the agent's buffers")
    ap.add_argument("--p5-agent-args", default="", help="p5: extra podcap-agent arguments (space separated)")
    ap.add_argument("--p6-frames", type=int, help="p6: frames each of the 4 pods sends, each seen on 4 veths "
                    "(default 150000: 1.1 GB stored; smoke 5000)")
    ap.add_argument("--p6-rounds", type=int, help="p6: timed rounds (default 5; smoke 1)")
    ap.add_argument("--only", choices=["p1", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10"],
                    help="run one phase only")
    ap.add_argument("--p7-mib", type=int, help="p7: MiB of the uploaded segment (default 256; smoke 24)")
    ap.add_argument("--p7-window-gb", type=float, help="p7: GB in the bucket for the window read "
                    "(default 2; smoke 0.2)")
    ap.add_argument("--p8-minutes", type=float, help="p8: minutes of traffic for the cost growth (default 7: ≥ 15,000 "
                    "segments at 40 MB/s; p8 is not part of --smoke)")
    ap.add_argument("--p8-parts", choices=["all", "growth", "scale"], default="all",
                    help="p8: the cost growth under traffic, the 1M-segment reads, or both")
    ap.add_argument("--p9-pods", type=int, help="p9: pods of the recorder (default 200; smoke 10)")
    ap.add_argument("--p9-triggers", type=int, help="p9: manual saves (default 3; smoke 1)")
    ap.add_argument("--p10-mib", type=int, help="p10: MiB of the downloaded file (default 64; smoke 30)")
    ap.add_argument("--p10-downloads", type=int, help="p10: downloads per round (default 8; smoke 1)")
    ap.add_argument("--soak", type=float, metavar="MINUTES", help="run only the soak (see tests/bench/soak.py): "
                    "many pods for MINUTES with rotation and retention; RSS, CPU and fds every minute")
    ap.add_argument("--soak-pods", type=int, default=50, help="soak: pods")
    ap.add_argument("--soak-pps", type=float, default=5000.0, help="soak: frames per second per pod")
    ap.add_argument("--soak-segment-time", type=int, default=0, metavar="SECONDS",
                    help="soak: also rotate segments every SECONDS (many small segments)")
    ap.add_argument("--py-spy", metavar="PATH", help="profile agent and collector with this py-spy binary during "
                    "the p1/p2 podcap runs and during p3 traffic (perturbs the figures)")
    ap.add_argument("--profile-dir", default="/tmp", help="where --py-spy writes collapsed stacks")
    ap.add_argument("--py-spy-args", default="--nonblocking", help="extra py-spy record arguments (e.g. --native)")
    ap.add_argument("--keep-workdir", action="store_true", help="keep logs (path printed) after the run")
    a = ap.parse_args(argv)
    check_environment()
    PROFILE.update(py_spy=a.py_spy or "", dir=a.profile_dir, args=a.py_spy_args)
    if a.p1_hostile:
        P1_GENERATOR.update(cpu=None, procs=os.cpu_count() or 2)
    seconds = a.seconds or (2.0 if a.smoke else 10.0)
    rounds = a.rounds or (1 if a.smoke else 2)
    n_pods = a.pods or (10 if a.smoke else 200)
    p3_seconds = a.p3_seconds or (2.0 if a.smoke else 10.0)
    p4_bytes = int((a.p4_gib or (0.2 if a.smoke else 5.0)) * (1 << 30))
    p4_segment = (a.p4_segment_mib if a.p4_segment_mib is not None else (8 if a.smoke else 0)) << 20

    lab = Lab()
    load0 = os.getloadavg()[0]
    log(f"tag {lab.tag}, workdir {lab.workdir}, load average {load0:.2f}")
    if load0 > 1.0 and not a.smoke:
        log("WARNING: the machine is busy (1-min load average > 1): CPU figures will be noisy")
    result: dict[str, Any] = dict.fromkeys(KEYS)
    runs: list[dict[str, Any]] = []
    p3: dict[str, Any] = {}
    p4: dict[str, Any] = {}
    p5: list[dict[str, Any]] = []
    soak: list[dict[str, Any]] = []
    rc = 0
    try:
        with sigterm_as_interrupt():
            if a.soak:
                out, soak = phase_soak(lab, minutes=a.soak, n_pods=a.soak_pods, pps=a.soak_pps,
                                       segment_seconds=a.soak_segment_time)
                result = {k: v for k, v in result.items() if v is not None}
                result.update(out)
            if a.only in (None, "p1") and not a.soak:
                out, runs = phase_p1p2(lab, seconds, rounds, a.ring_budget)
                result.update(out)
            if a.only in (None, "p3") and not a.soak:
                out, p3 = phase_p3(lab, n_pods, a.pps, p3_seconds, a.ring_budget)
                result.update(out)
            if a.only in (None, "p4") and not a.soak:
                out, p4 = phase_p4(lab, p4_bytes, p4_segment)
                result.update(out)
            if a.only in (None, "p5") and not a.soak:
                out, p5 = phase_p5(lab, rounds=rounds, frames=a.p5_frames or (20000 if a.smoke else 150000),
                                   rate=a.p5_rate, n_pods=a.p5_pods, agent_args=tuple(a.p5_agent_args.split()),
                                   stall_s=a.p5_stall)
                result.update(out)
            if a.only in (None, "p6") and not a.soak:
                out, p6 = phase_p6(lab, frames=a.p6_frames or (5000 if a.smoke else 150000), rate=a.p5_rate,
                                   rounds=a.p6_rounds or (1 if a.smoke else 5), min_bytes=0 if a.smoke else 10**9)
                log(f"p6 detail: {p6}")
                result.update(out)
            if a.only in (None, "p7") and not a.soak:
                out, _p7 = phase_p7(megabytes=a.p7_mib or (24 if a.smoke else 256), rounds=rounds + 1,
                                    window_gb=a.p7_window_gb or (0.2 if a.smoke else 2.0))
                result.update(out)
            if a.only in (None, "p8") and not a.soak and not a.smoke:
                out, _p8 = phase_p8(lab, minutes=a.p8_minutes or 7.0, parts=a.p8_parts)
                result.update(out)
            if a.only in (None, "p9") and not a.soak:
                out, p9 = phase_p9(lab, n_pods=a.p9_pods or (10 if a.smoke else 200), pps=100.0, size=1000,
                                   idle_s=3.0 if a.smoke else 20.0, before_s=5 if a.smoke else 20,
                                   after_s=2 if a.smoke else 5, triggers=a.p9_triggers or (1 if a.smoke else 3))
                log(f"p9 detail: {p9}")
                result.update(out)
            if a.only in (None, "p10") and not a.soak:
                out, _p10 = phase_p10(lab, file_mib=a.p10_mib or (30 if a.smoke else 64),
                                      downloads=a.p10_downloads or (1 if a.smoke else 8),
                                      rounds=rounds)
                result.update(out)
            if a.smoke and not a.only and not a.soak:  # the soak's code path, briefly
                out, soak = phase_soak(lab, minutes=0.4, n_pods=10, pps=1000.0)
                result.update(out)
    except (Exception, KeyboardInterrupt) as e:
        log(f"FAILED: {type(e).__name__}: {e}")
        result["error"] = f"{type(e).__name__}: {e}"
        rc = 130 if isinstance(e, KeyboardInterrupt) else 1
    finally:
        # A second Ctrl+C must not cut the cleanup short.
        old_handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            left = lab.cleanup(keep_workdir=a.keep_workdir or rc != 0)
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
        if left["netns"] or left["links"]:
            log(f"cleanup left {left}")
            rc = rc or 1
        if a.keep_workdir or rc:
            log(f"logs kept in {lab.workdir}")
    print_table(result, runs, p3, a.smoke, p4)
    result["smoke"] = a.smoke
    result["loadavg_start"], result["loadavg_end"] = round(load0, 2), round(os.getloadavg()[0], 2)
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()}), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
