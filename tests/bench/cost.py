"""Benchmark phase p8: a capture's age must not make the collector slower (issue 22).

Two parts, in the same run:

- **growth** (``p8_cost_growth``): one pod sent ~40 MB/s (``trafgen``, 1000-byte UDP frames at ``P8_PPS``), one
  capture with 1 MiB segments and no retention, for ``minutes`` (≥ 4: ≥ 15,000 segments). Every ``INTERVAL_S``
  the collector's CPU seconds, the bytes the capture stored (``status``), its segments, the collector's RSS and its
  commit-latency histogram (its own ``/metrics``) are sampled. ``p8_cost_growth`` is the collector's CPU per GB
  stored in the last interval ÷ the first; ``p8_commit_p99_first_s``/``p8_commit_p99_last_s`` the commit p99 of
  those intervals (upper bound of the histogram bucket); ``p8_rss_growth_mib`` the collector's RSS at the end
  minus at the end of the first interval.
- **scale** (``p8_status_s``, ``p8_window_s``): a data dir bulk-loaded through the catalog's own writer
  (``CaptureStore.commit``, the committer's path) with two ended captures of ``SCALE_PODS`` pods each: a big one
  of ``SCALE_PER_POD`` segments per pod (≥ 1,000,000 in all) and a small one of one segment per pod (100 in all).
  Each segment of the target pod is a real file (``SCALE_RECORDS`` records over one second of packet time in the
  big capture, the same records in one file in the small one); the other pods' segments exist only as rows, which
  neither command reads. A collector is started on it (its start-up time is reported too), then ``podcap status
  ID`` and ``podcap get ID -o DIR POD --since --until`` (a 60 s window, verified record by record) run as the
  user runs them, the median of ``SCALE_RUNS`` alternating runs each; the figures are big ÷ small.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil

from podcap.collector.storage.catalog import CaptureRow, CaptureStore, PodCommit, PodRow, SegmentRow
from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat
from podcap.names import new_capture_id
from podcap.v1 import common_pb2, control_pb2
from tests.bench.busy import scrape
from tests.bench.lab import (
    CAP_CPU,
    GEN_CPU,
    BenchError,
    Lab,
    Podcap,
    checkpoint,
    console_script,
    cpu_seconds,
    log,
    start_trafgen,
    wait_for_log,
    wait_trafgen,
)

INTERVAL_S = 30.0
P8_PPS = 40000
SEGMENT_BYTES = 1 << 20
FRAME_CONF = """/* 1000-byte UDP to a MAC nobody owns (the host veth discards it after the taps). */
{ eth(da=02:99:00:00:00:02, type=0x0800), ipv4(saddr=10.99.8.1, daddr=10.99.8.2, ttl=64), udp(sp=4000, dp=9),
  fill(0x42, 958) }
"""

SCALE_PODS = 100
SCALE_PER_POD = 10_000
SCALE_RECORDS = 10  # per second of packet time
SCALE_WINDOW_S = 60
SCALE_RUNS = 5
RECORD = struct.Struct("<IIII")
FRAME = b"\x02\x99\x00\x00\x00\x02\x02\x99\x00\x00\x00\x01\x08\x00" + b"C" * 86  # 100 bytes


def commit_p99(before: dict[str, float], after: dict[str, float]) -> float:
    """Upper bound of the commit latency's 99th percentile between two scrapes of the collector's histogram."""
    buckets = sorted((float(k.split('le="')[1].split('"')[0]), after[k] - before.get(k, 0.0)) for k in after
                     if k.startswith("podcap_commit_seconds_bucket") and "+Inf" not in k)
    total = after.get("podcap_commit_seconds_count", 0.0) - before.get("podcap_commit_seconds_count", 0.0)
    if not total or not buckets:
        return 0.0
    return next((le for le, n in buckets if n >= 0.99 * total), buckets[-1][0])


def phase_p8_growth(lab: Lab, *, minutes: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    namespace = f"pcb-{lab.tag}-g"
    (pod,) = lab.add_pods(namespace, ["grow"], first_index=800)
    conf = os.path.join(lab.workdir, "p8.trafgen")
    with open(conf, "w") as f:
        f.write(FRAME_CONF)
    pc = Podcap(lab, f"pcb-{lab.tag}-g", collector_cpu=GEN_CPU, agent_cpu=CAP_CPU, metrics=True)
    seconds = minutes * 60
    samples: list[dict[str, Any]] = []
    try:
        req = control_pb2.StartCaptureRequest(
            target=control_pb2.Target(namespace=namespace, pod_names=[pod.name]), note="podcap benchmark p8",
            rotation=control_pb2.Rotation(segment_bytes=SEGMENT_BYTES))
        cid = str(pc.client.start(req).id)
        pc.wait_capturing(cid, 1, 30)
        tg = start_trafgen(lab, pod, conf, seconds=seconds + 60, rate_pps=P8_PPS)
        time.sleep(5.0)  # the generator and the capture settle

        def sample() -> dict[str, Any]:
            st = pc.client.get(cid)
            return {"t": time.monotonic(), "cpu_s": cpu_seconds(pc.p_collector), "bytes": st.bytes,
                    "segments": sum(p.segments for p in st.pods),
                    "rss_mib": pc.p_collector.memory_info().rss / (1 << 20), "metrics": scrape(pc.collector_metrics)}

        samples.append(sample())
        t0 = samples[0]["t"]
        while samples[-1]["t"] - t0 < seconds - 1:
            checkpoint()
            time.sleep(max(0.0, t0 + len(samples) * INTERVAL_S - time.monotonic()))
            samples.append(sample())
            a, b = samples[-2], samples[-1]
            gb = (b["bytes"] - a["bytes"]) / 1e9
            log(f"p8: {b['t'] - t0:5.0f} s: {b['segments']:,} segments, {gb * 1e3 / (b['t'] - a['t']):.1f} MB/s, "
                f"collector {(b['cpu_s'] - a['cpu_s']) / gb if gb else 0:.2f} CPU-s/GB, RSS {b['rss_mib']:.0f} MiB, "
                f"commit p99 {commit_p99(a['metrics'], b['metrics']) * 1e3:.0f} ms")
        lab.stop(tg.proc)
        wait_trafgen(lab, tg)
        final = pc.stop_capture(cid, timeout=60)
        if final.state != control_pb2.CAPTURE_STATE_DONE:
            raise BenchError(f"p8 capture ended {final.state}: {final.end_reason}")
    finally:
        pc.close()
        shutil.rmtree(pc.data_dir, ignore_errors=True)
        lab.remove_pods([pod])
    intervals = []
    for a, b in zip(samples, samples[1:], strict=False):
        gb = (b["bytes"] - a["bytes"]) / 1e9
        intervals.append({"end_s": round(b["t"] - t0), "segments": b["segments"], "gb": round(gb, 3),
                          "cpu_s_per_gb": (b["cpu_s"] - a["cpu_s"]) / gb if gb else float("inf"),
                          "commit_p99_s": commit_p99(a["metrics"], b["metrics"]), "rss_mib": round(b["rss_mib"], 1)})
    first, last = intervals[0], intervals[-1]
    out = {"p8_cost_growth": last["cpu_s_per_gb"] / first["cpu_s_per_gb"], "p8_segments": last["segments"],
           "p8_cpu_s_per_gb_first": first["cpu_s_per_gb"], "p8_cpu_s_per_gb_last": last["cpu_s_per_gb"],
           "p8_commit_p99_first_s": first["commit_p99_s"], "p8_commit_p99_last_s": last["commit_p99_s"],
           "p8_rss_growth_mib": last["rss_mib"] - first["rss_mib"]}
    return out, intervals


# ---------------------------------------------------------------------------------------------------------------
# scale


def _segment_file(path: str, first_s: int, seconds: int) -> tuple[int, int, int]:
    """A pcap file of ``SCALE_RECORDS`` 100-byte records per second from ``first_s``; (bytes, packets, last ns)."""
    fmt = FileFormat(1, 262144, True)
    step = 1_000_000_000 // SCALE_RECORDS
    parts = [fmt.header()]
    for i in range(seconds * SCALE_RECORDS):
        parts.append(RECORD.pack(first_s + i // SCALE_RECORDS, (i % SCALE_RECORDS) * step, len(FRAME), len(FRAME)))
        parts.append(FRAME)
    body = b"".join(parts)
    with open(path, "wb") as f:
        f.write(body)
    last = (seconds * SCALE_RECORDS - 1)
    return len(body), seconds * SCALE_RECORDS, (first_s + last // SCALE_RECORDS) * 1_000_000_000 + \
        (last % SCALE_RECORDS) * step


def bulk_load(data_dir: str, namespace: str, *, per_pod: int, base_s: int, target: int) -> str:
    """An ended capture of ``SCALE_PODS`` pods × ``per_pod`` segments written through the catalog's commit; the
    target pod's segments as files covering ``SCALE_PER_POD`` seconds in all (one per second, or one file)."""
    store = CaptureStore(os.path.join(data_dir, "podcap.db"))
    cid = new_capture_id()
    req = control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace=namespace),
                                          rotation=control_pb2.Rotation(segment_bytes=SEGMENT_BYTES))
    now = time.time_ns()
    store.add_capture(CaptureRow(cid, req, control_pb2.CAPTURE_STATE_RUNNING, now, 0, ""))
    fmt = common_pb2.PcapFormat(linktype=1, snaplen=262144, nanosecond=True)
    seconds_per_segment = SCALE_PER_POD // per_pod
    pods: dict[str, PodCommit] = {}
    for p in range(SCALE_PODS):
        name, uid = f"s{p}", f"{cid}-uid-{p}"
        rel = os.path.join("captures", cid, namespace, name)
        rows = []
        for k in range(per_pod):
            first_s = base_s + k * seconds_per_segment
            if p == target:
                os.makedirs(os.path.join(data_dir, rel), exist_ok=True)
                nbytes, packets, last_ns = _segment_file(os.path.join(data_dir, rel, f"{k + 1:06d}.pcap"), first_s,
                                                         seconds_per_segment)
            else:
                packets = seconds_per_segment * SCALE_RECORDS
                nbytes = FILE_HEADER_LEN + packets * (RECORD.size + len(FRAME))
                last_ns = (first_s + seconds_per_segment) * 1_000_000_000 - 1
            rows.append(SegmentRow(k + 1, nbytes, packets, first_s * 1_000_000_000, last_ns))
        packets, nbytes = sum(r.packets for r in rows), sum(r.bytes for r in rows)
        status = control_pb2.PodStatus(
            pod=common_pb2.Pod(namespace=namespace, name=name, uid=uid, node="bench"),
            state=common_pb2.POD_CAPTURE_STATE_DONE, packets=packets, bytes=nbytes, segments=per_pod, path=rel)
        row = PodRow(status, fmt, "s-1", 1, packets, nbytes, segments=per_pod,
                     max_span_ns=max(r.last_ts_ns - r.first_ts_ns for r in rows))
        pods[uid] = PodCommit(row, segments=rows)
    store.commit(cid, state=(control_pb2.CAPTURE_STATE_DONE, now, "benchmark data"), pods=pods)
    store.close()
    return cid


def phase_p8_scale(lab: Lab) -> tuple[dict[str, Any], dict[str, Any]]:
    namespace = f"pcb-{lab.tag}-k"
    data_dir = os.path.join(lab.workdir, "data-p8")
    os.makedirs(data_dir)
    base_s = time.time_ns() // 1_000_000_000 - SCALE_PER_POD - 3600
    target = SCALE_PODS // 2
    t = time.monotonic()
    big = bulk_load(data_dir, namespace, per_pod=SCALE_PER_POD, base_s=base_s, target=target)
    small = bulk_load(data_dir, namespace, per_pod=1, base_s=base_s, target=target)
    detail: dict[str, Any] = {"load_s": round(time.monotonic() - t, 1), "segments_big": SCALE_PODS * SCALE_PER_POD,
                              "segments_small": SCALE_PODS}
    log(f"p8: {SCALE_PODS * SCALE_PER_POD:,} + {SCALE_PODS} segments loaded in {detail['load_s']} s")
    t = time.monotonic()
    collector, clog = lab.spawn("collector-p8", [console_script("podcap-collector"), "--insecure", "--listen",
                                                 "127.0.0.1:0", "--data-dir", data_dir], cpu=GEN_CPU)
    try:
        port = int(wait_for_log(clog, r"\(port (\d+)\)", collector, 300).group(1))
        detail["startup_s"] = round(time.monotonic() - t, 2)
        detail["rss_mib"] = round(psutil.Process(collector.pid).memory_info().rss / (1 << 20), 1)
        podcap = [console_script("podcap"), "--collector", f"127.0.0.1:{port}"]
        pod = f"s{target}"
        since_s = base_s + SCALE_PER_POD // 2 - SCALE_WINDOW_S // 2
        want = SCALE_WINDOW_S * SCALE_RECORDS + 1  # both ends included: until is the first record of a second

        def timed(argv: list[str]) -> float:
            t0 = time.monotonic()
            r = subprocess.run(argv, capture_output=True, text=True)
            if r.returncode != 0:
                raise BenchError(f"{' '.join(argv[3:5])}: exit {r.returncode}: {r.stderr.strip()[-800:]}")
            return time.monotonic() - t0

        def window(cid: str) -> float:
            out = tempfile.mkdtemp(prefix="p8-", dir=lab.workdir)
            try:
                dt = timed([*podcap, "get", cid, "-o", out, pod, "--since", _rfc3339(since_s), "--until",
                            _rfc3339(since_s + SCALE_WINDOW_S)])
                size = os.path.getsize(os.path.join(out, namespace, f"{pod}.pcap"))
                got = (size - FILE_HEADER_LEN) // (RECORD.size + len(FRAME))
                if got != want:
                    raise BenchError(f"window of {cid}: {got} records, expected {want}")
            finally:
                shutil.rmtree(out, ignore_errors=True)
            return dt

        runs: dict[str, list[float]] = {"status_big": [], "status_small": [], "window_big": [], "window_small": []}
        for _ in range(SCALE_RUNS):
            checkpoint()
            for which, cid in (("big", big), ("small", small)):
                runs[f"status_{which}"].append(timed([*podcap, "status", cid]))
                runs[f"window_{which}"].append(window(cid))
    finally:
        lab.stop(collector)
        lab.procs.remove(collector)
        shutil.rmtree(data_dir, ignore_errors=True)
    med = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
    detail.update({k: [round(x, 3) for x in v] for k, v in runs.items()})
    log(f"p8: status {med['status_big']:.3f} s against {med['status_small']:.3f} s, window {med['window_big']:.3f} s "
        f"against {med['window_small']:.3f} s; collector start-up {detail['startup_s']} s, RSS {detail['rss_mib']} MiB")
    out = {"p8_status_s": med["status_big"] / med["status_small"],
           "p8_window_s": med["window_big"] / med["window_small"],
           "p8_status_big_s": med["status_big"], "p8_window_big_s": med["window_big"],
           "p8_startup_s": detail["startup_s"]}
    return out, detail


def _rfc3339(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def phase_p8(lab: Lab, *, minutes: float, parts: str = "all") -> tuple[dict[str, Any], dict[str, Any]]:
    result: dict[str, Any] = {}
    detail: dict[str, Any] = {}
    if parts in ("all", "growth"):
        out, intervals = phase_p8_growth(lab, minutes=minutes)
        result.update(out)
        detail["intervals"] = intervals
        log("p8 intervals: " + json.dumps(intervals))
    if parts in ("all", "scale"):
        out, scale = phase_p8_scale(lab)
        result.update(out)
        detail["scale"] = scale
        log("p8 scale: " + json.dumps(scale))
    return result, detail


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run through python -m tests.bench.run --only p8")
