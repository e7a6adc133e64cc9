"""Benchmark phase p6: ``podcap get --merge`` against Wireshark's ``mergecap`` on the same per-pod files.

A real capture first: 4 pods on a bridge flooding 456-byte frames to each other (``tests/bench/busy.py``'s
traffic), captured by a real collector and agent, >= 1 GB stored (a few MB with ``--smoke``). Then, in rounds on the
same capture, timed wall-clock as a user sees it (each command a process of its own, page cache warm for all):

- ``podcap get ID -o DIR``                      the download alone (one pcap file per pod)
- ``podcap get ID --merge FILE``                download + merge into one pcapng
- ``mergecap -F pcapng -w OUT DIR/<ns>/*.pcap``  Wireshark merging the files of ``get -o``

``p6_merge_ratio`` = (median get --merge − median get -o) ÷ median mergecap: what merging adds to a download,
against what merging the same files costs with mergecap [≤ 1.0]. ``p6_merge_step_ratio`` times the merge step
alone (``podcap.collector.cli.get.merge.merge_pcaps`` on the files of ``get -o``, in this process) against mergecap,
without the noise of two downloads. The merged file must hold exactly mergecap's packets in mergecap's order:
both files are parsed block by block (streaming; they are GBs) and compared packet by packet — interface, time,
lengths and bytes (mergecap run with ``-I none`` for that, so that each file keeps its interface).
"""

from __future__ import annotations

import os
import shutil
import statistics
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from podcap.collector.cli.get.merge import MergeInput, merge_pcaps
from podcap.formats.pcapng import BLOCK_EPB, BLOCK_IDB, IF_NAME, IF_TSRESOL, InterfaceInfo
from podcap.formats.pcapng import PcapngError as _PcapngError
from tests.bench.busy import Traffic
from tests.bench.lab import BenchError, Lab, Podcap, checkpoint, console_script, log
from tests.pcapng_reader import iter_blocks, parse_options

P6_PODS = 4


def _timed(argv: list[str]) -> float:
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise BenchError(f"{os.path.basename(argv[0])}: exit {r.returncode}: {r.stderr.strip()[-1000:]}")
    return dt


def iter_packets(path: str) -> Iterator[tuple[int, int, int, int, bytes]]:
    """(interface, time ns, caplen, wire length, bytes) of every EPB, read block by block."""
    scales: list[int] = []
    with open(path, "rb", buffering=1 << 20) as f:
        for block_type, body in iter_blocks(f):
            if block_type == BLOCK_IDB:
                res = parse_options(body, 8).get(IF_TSRESOL, [b"\x06"])[0][0]
                if res & 0x80:
                    raise _PcapngError("binary timestamp resolutions are not supported")
                scales.append(10 ** (9 - res))
            elif block_type == BLOCK_EPB:
                iface, high, low, caplen, wirelen = struct.unpack_from("<IIIII", body, 0)
                yield iface, ((high << 32) | low) * scales[iface], caplen, wirelen, body[20:20 + caplen]


def interface_names(path: str) -> list[str]:
    names = []
    with open(path, "rb") as f:
        for block_type, body in iter_blocks(f):
            if block_type == BLOCK_IDB:
                names.append(parse_options(body, 8)[IF_NAME][0].decode())
            elif block_type == BLOCK_EPB:
                break
    return names


def compare_with_mergecap(ours: str, theirs: str) -> int:
    """Packets compared; raises BenchError at the first packet where the files differ."""
    n = 0
    a, b = iter_packets(ours), iter_packets(theirs)
    while True:
        x, y = next(a, None), next(b, None)
        if x is None and y is None:
            return n
        if x != y:
            raise BenchError(f"p6: packet {n} differs from mergecap's: ours {x and x[:4]}, mergecap {y and y[:4]}")
        n += 1


def phase_p6(lab: Lab, *, frames: int, rate: int, rounds: int, min_bytes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    mergecap = shutil.which("mergecap")
    if mergecap is None:
        raise BenchError("p6 needs mergecap (apt-get install tshark, which brings wireshark-common)")
    namespace = f"pcb-{lab.tag}-g"
    bridge = lab.add_bridge()
    pods = lab.add_pods(namespace, [f"m{i + 1}" for i in range(P6_PODS)], first_index=400, bridge=bridge)
    traffic = Traffic(lab, pods, frames, rate)
    traffic.run()  # the bridge learns every pod's MAC first
    pc = Podcap(lab, f"pcb-{lab.tag}-g", collector_cpu=None, agent_cpu=None)
    podcap = console_script("podcap")
    work = os.path.join(lab.workdir, "p6")
    os.makedirs(work)
    detail: dict[str, Any] = {}
    try:
        cid = pc.start(namespace, [p.name for p in pods])
        pc.wait_capturing(cid, len(pods), 30)
        time.sleep(0.5)
        traffic.run()
        time.sleep(1.0)
        st = pc.stop_capture(cid, timeout=300)
        detail.update(capture=cid, stored_bytes=st.bytes, stored_packets=st.packets)
        log(f"p6: capture {cid}: {st.packets:,} packets, {st.bytes / 1e9:.2f} GB in {len(st.pods)} pods")
        if st.bytes < min_bytes:
            raise BenchError(f"p6: stored {st.bytes} bytes, fewer than {min_bytes}: raise --p6-frames")
        get_o, get_merge, mc, step = [], [], [], []
        per_pod = os.path.join(work, "per-pod")
        merged = os.path.join(work, "merged.pcapng")
        theirs = os.path.join(work, "mergecap.pcapng")
        base = [podcap, "--collector", pc.address, "get", cid]
        _timed([*base, "-o", per_pod])  # a warm-up: the collector's segments into the page cache
        for r in range(rounds):
            checkpoint()
            shutil.rmtree(per_pod, ignore_errors=True)
            get_o.append(_timed([*base, "-o", per_pod]))
            if os.path.exists(merged):
                os.unlink(merged)
            # Every copy, as mergecap keeps them (one copy per packet is the default: issue 26).
            get_merge.append(_timed([*base, "--merge", merged, "--all-copies"]))
            # mergecap gets the files in the merged file's interface order (the collector's pod order), so that
            # both merges see the same inputs in the same order.
            names = interface_names(merged)
            files = [os.path.join(per_pod, f"{n}.pcap") for n in names]
            if os.path.exists(theirs):
                os.unlink(theirs)
            mc.append(_timed([mergecap, "-F", "pcapng", "-w", theirs, *files]))
            os.unlink(theirs)
            inputs = [MergeInput(p, InterfaceInfo(n)) for p, n in zip(files, names, strict=True)]
            t0 = time.monotonic()
            with open(theirs, "wb") as out:
                merge_pcaps(inputs, out)
            step.append(time.monotonic() - t0)
            os.unlink(theirs)
            log(f"p6 round {r + 1}: get -o {get_o[-1]:.3f} s, get --merge {get_merge[-1]:.3f} s, mergecap "
                f"{mc[-1]:.3f} s, merge step {step[-1]:.3f} s")
        # Content: exactly mergecap's packets in mergecap's order (each file its own interface there too).
        subprocess.run([mergecap, "-F", "pcapng", "-I", "none", "-w", theirs, *files], check=True,
                       capture_output=True)
        compared = compare_with_mergecap(merged, theirs)
        if compared != st.packets:
            raise BenchError(f"p6: the merged file has {compared} packets, the capture {st.packets}")
        log(f"p6: merged file equals mergecap's: {compared:,} packets, same order")
        merged_bytes = os.path.getsize(merged)
        pc.stored_packets(st)  # deletes the capture's files
    finally:
        pc.close()
        shutil.rmtree(work, ignore_errors=True)
    lab.remove_pods(pods)
    med = statistics.median
    ratio = (med(get_merge) - med(get_o)) / med(mc)
    detail.update(get_o_s=[round(x, 3) for x in get_o], get_merge_s=[round(x, 3) for x in get_merge],
                  mergecap_s=[round(x, 3) for x in mc], merge_step_s=[round(x, 3) for x in step],
                  merged_bytes=merged_bytes, packets_compared=compared,
                  round_ratios=[round((m - o) / c, 3) for m, o, c in zip(get_merge, get_o, mc, strict=True)])
    out = {"p6_stored_gb": st.bytes / 1e9, "p6_merge_ratio": ratio, "p6_merge_step_ratio": med(step) / med(mc),
           "p6_mergecap_s": med(mc), "p6_identical": 1.0}
    return out, detail
