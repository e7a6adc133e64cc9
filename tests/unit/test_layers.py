"""The package's layers hold: the import-linter contracts in ``.importlinter`` (agent and collector independent,
the CLI without server internals, ``kubernetes`` only in the Kubernetes client, the storage layout only in the
storage implementations, libpcap bindings in one place per side, no cycles), and what imports cannot show: only
the agent's libpcap binding loads libpcap with ctypes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_import_contracts_are_kept() -> None:
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_only_the_agents_binding_loads_libpcap() -> None:
    loads = []
    for top in ("agent", "collector", "proto"):
        for base, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py") and not name.endswith("_pb2.py"):
                    path = os.path.join(base, name)
                    with open(path) as f:
                        if re.search(r"libpcap\.so|find_library\(\s*[\"']pcap[\"']", f.read()):
                            loads.append(os.path.relpath(path, ROOT))
    assert loads == [os.path.join("agent", "capture", "libpcap.py")]
