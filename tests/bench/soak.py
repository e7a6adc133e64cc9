"""Soak: many pods captured for a long time with rotation and retention, to find what grows.

``python -m tests.bench.run --soak MINUTES`` (``make soak``: 20 minutes). N pods (50) on one agent, each sent
``pps`` (5000) frames of 128 bytes per second by ``lightgen.py`` (pods split over two generator processes), one
capture of all of them with small segments and a per-pod byte cap (``--segment-size``/``--keep-bytes``: hundreds
of rotations and deletions per pod). Every minute it prints the RSS, CPU and open descriptors of the agent and the
collector; at the end:

- ``soak_rss_drift_agent`` / ``soak_rss_drift_collector``: RSS at the end ÷ RSS at minute 5 − 1 (target ≤ 5%);
- ``soak_fds_*``: descriptors at minute 5 and at the end;
- ``soak_unaccounted``: per pod, kernel received − stored (parsed from the files left) − deleted by retention −
  kernel drops − every podcap drop, summed (must be 0).
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

import psutil

from podcap.drops import total_of
from podcap.v1 import control_pb2
from tests.bench.lab import (
    CAP_CPU,
    GEN_CPU,
    HERE,
    BenchError,
    Lab,
    Podcap,
    checkpoint,
    cpu_seconds,
    log,
    wait_for_log,
)

WARM_MINUTE = 5  # RSS drift is measured from here (rings, pools and caches have filled by then)
SEGMENT_BYTES = 4 << 20
KEEP_BYTES = 16 << 20


def sample(p: psutil.Process) -> dict[str, float]:
    return {"rss_mib": p.memory_info().rss / (1 << 20), "cpu_s": cpu_seconds(p), "fds": p.num_fds()}


def phase_soak(lab: Lab, *, minutes: float, n_pods: int, pps: float, segment_seconds: int = 0
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``segment_seconds`` (``--soak-segment-time``) rotates by time as well, for many small segments: a long
    capture's cost must not grow with how many it has made."""
    namespace = f"pcb-{lab.tag}-s"
    pods = lab.add_pods(namespace, [f"s{i}" for i in range(n_pods)], first_index=500)
    pc = Podcap(lab, f"pcb-{lab.tag}-s", collector_cpu=GEN_CPU, agent_cpu=CAP_CPU)
    seconds = minutes * 60
    minutes_log: list[dict[str, Any]] = []
    try:
        req = control_pb2.StartCaptureRequest(
            target=control_pb2.Target(namespace=namespace), note="podcap soak",
            rotation=control_pb2.Rotation(segment_bytes=SEGMENT_BYTES, segment_seconds=segment_seconds),
            retention=control_pb2.Retention(keep_bytes=KEEP_BYTES))
        deadline = time.monotonic() + 30
        while True:
            checkpoint()
            try:
                cid = str(pc.client.start(req).id)
                break
            except Exception as e:  # the agent's inventory may not have reached the collector yet
                if time.monotonic() > deadline:
                    raise BenchError(f"cannot start the soak capture: {e}") from e
                time.sleep(0.2)
        pc.wait_capturing(cid, n_pods, 60)
        half = (len(pods) + 1) // 2
        gens = []
        for part in (pods[:half], pods[half:]):
            if part:
                gen, path = lab.spawn("lightgen", ["taskset", "-c", GEN_CPU, sys.executable,
                                                   os.path.join(HERE, "lightgen.py"), "--pps", str(pps), "--duration",
                                                   str(seconds), *[p.netns_path for p in part]])
                wait_for_log(path, "READY", gen, 60)
                gens.append((gen, path))
        log(f"soak: {n_pods} pods x {pps:.0f} pps for {minutes:g} min, capture {cid} (segments of "
            f"{SEGMENT_BYTES >> 20} MiB, {KEEP_BYTES >> 20} MiB kept per pod)")
        t0 = time.monotonic()
        prev = {"agent": sample(pc.p_agent), "collector": sample(pc.p_collector)}
        prev_t = t0
        prev_gb = 0.0
        minute = 0
        step = min(60.0, seconds / 4)
        while any(g.poll() is None for g, _ in gens):
            checkpoint()
            time.sleep(1.0)
            now = time.monotonic()
            if now - prev_t < step and any(g.poll() is None for g, _ in gens):
                continue
            minute += 1
            row: dict[str, Any] = {"minute": round((now - t0) / 60, 2)}
            for who, proc in (("agent", pc.p_agent), ("collector", pc.p_collector)):
                s = sample(proc)
                row[who] = {"rss_mib": round(s["rss_mib"], 1), "fds": s["fds"],
                            "cpu_pct": round(100 * (s["cpu_s"] - prev[who]["cpu_s"]) / (now - prev_t), 1)}
                prev[who] = s
            st = pc.client.get(cid)
            stored_gb = sum(p.bytes + p.retired_bytes for p in st.pods) / 1e9
            row["stored_gb"] = round(stored_gb, 3)
            # The collector's CPU per GB stored in this interval: what a long capture costs now (issue 22).
            cpu_s = (row["collector"]["cpu_pct"] / 100) * (now - prev_t)
            row["collector_cpu_s_per_gb"] = round(cpu_s / max(1e-9, stored_gb - prev_gb), 2)
            row["segments"] = sum(p.segments for p in st.pods)
            prev_gb = stored_gb
            row["drops"] = sum(p.kernel.dropped + total_of(p.drops) for p in st.pods)
            prev_t = now
            minutes_log.append(row)
            log(f"soak minute {row['minute']}: {row}")
        sent = 0
        for gen, path in gens:
            lab.stop(gen)
            lab.procs.remove(gen)
            with open(path) as f:
                m = re.search(r"SENT (\d+)", f.read())
            sent += int(m.group(1)) if m else 0
        time.sleep(2.0)
        st = pc.stop_capture(cid, timeout=120)
        stored = pc.stored_per_pod(st)
        unaccounted = 0
        for p in st.pods:
            unaccounted += (p.kernel.received - stored[p.pod.name] - p.retired_packets - p.kernel.dropped
                            - total_of(p.drops))
        received = sum(p.kernel.received for p in st.pods)
        detail = {"capture": cid, "sent": sent, "received": received, "stored_on_disk": sum(stored.values()),
                  "retired": sum(p.retired_packets for p in st.pods),
                  "kernel_dropped": sum(p.kernel.dropped for p in st.pods),
                  "podcap_dropped": sum(total_of(p.drops) for p in st.pods),
                  "segments_left": sum(p.segments for p in st.pods)}
        log(f"soak end: {detail}")
    finally:
        pc.close()
        lab.remove_pods(pods)
    warm = [r for r in minutes_log if r["minute"] >= min(WARM_MINUTE, minutes / 2)]
    first, last = (warm[0], warm[-1]) if warm else (minutes_log[0], minutes_log[-1])
    out: dict[str, Any] = {
        "soak_minutes": minutes, "soak_pods": n_pods, "soak_pps_per_pod": pps,
        "soak_offered_pps": sent / seconds if seconds else 0.0,
        "soak_unaccounted": unaccounted,
        "soak_rss_drift_agent": last["agent"]["rss_mib"] / first["agent"]["rss_mib"] - 1,
        "soak_rss_drift_collector": last["collector"]["rss_mib"] / first["collector"]["rss_mib"] - 1,
        "soak_rss_agent_mib": last["agent"]["rss_mib"], "soak_rss_collector_mib": last["collector"]["rss_mib"],
        "soak_fds_agent": f"{first['agent']['fds']}->{last['agent']['fds']}",
        "soak_fds_collector": f"{first['collector']['fds']}->{last['collector']['fds']}",
        "soak_cpu_pct_agent": sum(r["agent"]["cpu_pct"] for r in warm) / max(1, len(warm)),
        "soak_cpu_pct_collector": sum(r["collector"]["cpu_pct"] for r in warm) / max(1, len(warm)),
        # Collector CPU per GB stored at minute 2 (or the second interval) and in the last interval.
        "soak_cpu_s_per_gb_minute2": minutes_log[min(1, len(minutes_log) - 1)]["collector_cpu_s_per_gb"],
        "soak_cpu_s_per_gb_last": minutes_log[-1]["collector_cpu_s_per_gb"],
        "soak_detail": detail,
    }
    return out, minutes_log
