"""Where ``podcap demo`` leaves its files and what it says last (issue 26, item 13): ``<out>/<pod>.pcap`` in one
fixed, git-ignored place, each run replacing the last run's files and nothing else, and an ending that says what
to do next. (The demo itself runs in tests/integration/test_demo.py, as root.)"""

from __future__ import annotations

import os
import subprocess

from podcap.collector.cli.demo import DEFAULT_OUT, next_steps
from podcap.collector.demo.run import RUN_LIST, _forget_last_run, _remember_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


def test_a_run_replaces_the_last_runs_files_and_nothing_else(tmp_path: str) -> None:
    out = os.path.join(tmp_path, "out")
    os.makedirs(out)
    for name in ("web-0.pcap", "client-0.pcap", "mine.pcap"):
        open(os.path.join(out, name), "w").close()
    _remember_run(out, [os.path.join(out, "web-0.pcap"), os.path.join(out, "client-0.pcap")])
    _forget_last_run(out)
    assert sorted(os.listdir(out)) == [RUN_LIST, "mine.pcap"]


def test_the_default_output_is_ignored_by_git() -> None:
    r = subprocess.run(["git", "check-ignore", "-q", f"{DEFAULT_OUT}/web-0.pcap"], cwd=ROOT)
    assert r.returncode == 0, f"{DEFAULT_OUT}/ is not in .gitignore"


def test_the_demo_ends_with_what_to_do_next() -> None:
    text = next_steps(["podcap-demo-out/web-0.pcap"])
    assert "tshark -r podcap-demo-out/web-0.pcap" in text and "wireshark podcap-demo-out/web-0.pcap" in text
    assert "podcap-collector --insecure --listen 127.0.0.1:7420" in text
    assert "podcap-agent --insecure --collector 127.0.0.1:7420" in text
