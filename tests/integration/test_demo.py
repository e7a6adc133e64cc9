"""`podcap demo` runs end to end and removes everything it created."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from podcap.formats.pcap import read_file
from tests.conftest import tool

pytestmark = pytest.mark.root


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _netns() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def test_demo_writes_per_pod_files_and_cleans_up(tmp_path: str) -> None:
    links_before = _links()
    out = os.path.join(tmp_path, "out")
    r = subprocess.run([tool("podcap"), "demo", "--pods", "4", "--seconds", "3", "--out", out],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    # <out>/<pod>.pcap: the same place every run (issue 26: a new directory per run, named after the run's
    # made-up namespace), the run's files listed for the next run to replace.
    files = sorted(os.listdir(out))
    assert files == [".podcap-demo", "client-0.pcap", "client-1.pcap", "web-0.pcap", "web-1.pcap"], files
    for name in files[1:]:
        _, recs = read_file(os.path.join(out, name))
        assert recs, f"{name} holds no packets"
        assert name[:-5] in r.stdout
    # It ends with what to do next: open a file, run the collector and the agent yourself.
    assert f"tshark -r {os.path.join(out, 'web-0.pcap')}" in r.stdout or "tshark -r " in r.stdout
    assert "podcap-collector --insecure --listen" in r.stdout and "podcap-agent --insecure --collector" in r.stdout
    assert r.stdout.rstrip().splitlines()[-1].startswith("  then: podcap start")
    # Only what this demo made (other tests may run alongside): its namespace and bridge are named in its log.
    m = re.search(r"bridge (pcbr[0-9a-f]+), \d+ pods in namespace (demo-[0-9a-f]+)", r.stderr)
    assert m, r.stderr
    bridge, namespace = m.groups()
    assert not [n for n in _netns() if n.startswith(namespace + ".")]
    assert bridge not in _links()
    assert not [n for n in _links() - links_before if n.startswith("pc" + bridge[4:])]
