"""The benchmark's smoke mode must keep working: it runs end to end and reports every figure (no thresholds —
timings belong to the benchmark, never to a test)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from tests.bench.run import KEYS
from tests.s3.testbed import missing_packages

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (creates network namespaces and veths, captures packets)"
    tools = [t for t in ("trafgen", "tcpdump", "ip", "taskset") if not shutil.which(t)]
    if tools:
        return f"needs {', '.join(tools)} (apt-get install netsniff-ng tcpdump iproute2 util-linux)"
    if ceph := missing_packages():
        return f"needs {', '.join(ceph)} for p7 (make deps installs them)"
    if (os.cpu_count() or 1) < 2:
        return "needs 2 CPUs (generator and capturer are pinned apart)"
    return None


@pytest.mark.root
@pytest.mark.timeout(360)
def test_bench_smoke() -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run([sys.executable, "-m", "tests.bench.run", "--smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=340)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    assert lines, f"no output; stderr:\n{proc.stderr[-3000:]}"
    result = json.loads(lines[-1])
    for key in KEYS:
        assert key in result, f"{key} missing from {result}"
        if key.startswith("p8_"):
            continue  # p8 (a capture's age) needs minutes of traffic and a million segments: not part of --smoke
        v = result[key]
        assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), f"{key}={v!r}"
    assert result["smoke"] is True
    # Not timings but invariants: every packet of the busy pods (p5), of the bulk downloads (p10) and of the short
    # soak is stored or counted.
    assert result["p5_unaccounted"] == 0 and result["p10_unaccounted"] == 0 and result["soak_unaccounted"] == 0, result
