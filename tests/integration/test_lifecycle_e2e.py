"""A capture's life cycle and resumed downloads against real processes: podcap-collector (static tokens, metrics)
and podcap-agent over gRPC on loopback, network-namespace pods, the podcap CLI.

- ``podcap get -o DIR`` interrupted mid-file by SIGINT and by SIGKILL, run again: each pod file equals an
  uninterrupted download byte for byte, and the collector served exactly the bytes that were missing (its
  ``podcap_download_bytes_total`` metric);
- a download in progress of a capture that gets deleted ends with one clear line, not a crash;
- ``podcap delete``: files and catalog rows gone, audited, ``status`` says what became of the capture, ``list``
  shows it as deleted; bad input is one line and a non-zero exit (an unknown id, another namespace's capture
  without the right, a running capture without --force), an offset past the end of a pod's file is OUT_OF_RANGE;
- ``--keep-ended`` wired end to end: an ended capture goes by itself, counted in the metrics.
"""

from __future__ import annotations

import glob
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from podcap.collector.cli.client import CollectorClient, CollectorError
from podcap.collector.cli.get.download import expected_size
from podcap.collector.cli.get.resume import JOURNAL
from podcap.collector.demo.node import DemoNode
from podcap.v1 import control_pb2
from tests.conftest import Proc, collector_process, free_port, podcap, tool
from tests.integration.cluster import Cluster, all_capturing, check_exactly_once, send
from tests.integration.helpers import PORT, capture_id, interrupted, small_tmpfs, wait_capturing, warm_up

pytestmark = pytest.mark.root

ADMIN, BOB = "t-admin", "t-bob"
# Big datagrams, so that a pod's file takes long enough to download that it can be interrupted half way.
BIG_SENDER = """
import socket, sys, time
port, count, ips = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for seq in range(count):
    for ip in ips:
        s.sendto(seq.to_bytes(4, "big") * 350, (ip, port))
    if seq % 100 == 99:
        time.sleep(0.002)
"""


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every podcap run of these tests (the fixtures' too) is the admin's unless it says otherwise."""
    monkeypatch.setenv("PODCAP_TOKEN", ADMIN)


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def collector(tmp_path: str, metrics_port: int, request: pytest.FixtureRequest) -> Iterator[tuple[str, str, Proc]]:
    """A collector with static tokens (the admin may do anything, bob only in namespace "elsewhere") and metrics;
    indirect parametrization adds arguments."""
    tokens = os.path.join(tmp_path, "tokens.csv")
    with open(tokens, "w") as f:
        f.write(f"{ADMIN},admin,*,*\n{BOB},bob,*,elsewhere\n")
    yield from collector_process(str(tmp_path), "--token-file", tokens, "--metrics-listen",
                                 f"127.0.0.1:{metrics_port}", *getattr(request, "param", ()))


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def settled(port: int, name: str) -> float:
    """The metric once it stopped moving (a download cut short may still have a message or two in flight)."""
    last = metric(port, name)
    while True:
        time.sleep(0.5)
        now = metric(port, name)
        if now == last:
            return now
        last = now


def big_capture(address: str, demo: DemoNode, count: int = 14000) -> control_pb2.CaptureStatus:
    """An ended capture of rx-0 and rx-1 with ~20 MB per pod in several segments."""
    warm_up(demo)
    cid = capture_id(podcap(address, "start", "-n", demo.namespace, "rx-0", "rx-1", "--filter", f"udp port {PORT}",
                            "--segment-size", "4MiB"))
    wait_capturing(address, cid, 2)
    sent = demo.exec(demo.pod("sender"), [sys.executable, "-c", BIG_SENDER, str(PORT), str(count),
                                          demo.pod("rx-0").ip, demo.pod("rx-1").ip], timeout=120)
    assert sent.returncode == 0, sent.stderr
    time.sleep(1.0)
    podcap(address, "stop", cid)
    with CollectorClient(address) as c:
        st = c.get(cid)
    assert st.state == control_pb2.CAPTURE_STATE_DONE
    assert all(expected_size(p) > 8 << 20 and p.segments > 1 for p in st.pods), st.pods
    return st


def interrupt_mid_file(address: str, cid: str, out: str, sig: int) -> subprocess.CompletedProcess[str]:
    """Run ``podcap get CID -o OUT`` and deliver ``sig`` once a pod file is part-way (the process is frozen
    first, so that it is still part-way when the signal lands)."""
    return interrupted([tool("podcap"), "--collector", address, "get", cid, "-o", out], lambda: part_way(out),
                       lambda proc: proc.send_signal(sig))


def part_way(out: str) -> bool:
    """A pod file of the download into OUT is more than 1 MiB along."""
    return any(os.path.getsize(p) > (1 << 20) for p in glob.glob(os.path.join(out, "*", "*.part")))


def held(out: str) -> dict[str, int]:
    """Each pod file kept in OUT (complete, or its part) and its size."""
    return {os.path.basename(p).removesuffix(".part"): os.path.getsize(p)
            for p in glob.glob(os.path.join(out, "*", "*.pcap*"))}


def same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def test_get_resumes_inside_a_pod_after_sigint_and_sigkill_and_a_deleted_capture_ends_a_download(
        collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, tmp_path: str,
        metrics_port: int) -> None:
    address, data, _ = collector
    st = big_capture(address, node)
    cid = st.id
    size = {f"{p.pod.name}.pcap": expected_size(p) for p in st.pods}
    whole = os.path.join(tmp_path, "whole")
    podcap(address, "get", cid, "-o", whole)
    ns = node.namespace
    counter = "podcap_download_bytes_total"

    for sig in (signal.SIGINT, signal.SIGKILL):
        out = os.path.join(tmp_path, f"out-{sig.name}")
        cut = interrupt_mid_file(address, cid, out, sig)
        if sig == signal.SIGINT:
            assert cut.returncode == 130 and cut.stderr.strip().splitlines()[-1] == "podcap: aborted", cut.stderr
        else:
            assert cut.returncode == -signal.SIGKILL
        kept = held(out)
        assert any(0 < n < size[name] for name, n in kept.items()), (kept, size)  # cut part-way through a file
        assert os.path.exists(os.path.join(out, JOURNAL))

        before = settled(metrics_port, counter)
        r = podcap(address, "get", cid, "-o", out)
        served = metric(metrics_port, counter) - before
        assert "pod file(s) part-way" in r.stderr, r.stderr
        # Only what was missing travelled: not a byte of what the interrupted run had written.
        assert served == sum(size.values()) - sum(kept.values()), (served, size, kept)
        for name in size:
            assert same_bytes(os.path.join(out, ns, name), os.path.join(whole, ns, name)), name
        assert not glob.glob(os.path.join(out, "*", "*.part")) and not os.path.exists(os.path.join(out, JOURNAL))

    # A download in progress when its capture is deleted ends with one clear line.
    out = os.path.join(tmp_path, "deleted-meanwhile")

    def delete(_proc: object) -> None:  # while the download holds its stream open, half read
        deleted = podcap(address, "delete", cid)
        assert deleted.stdout.startswith(f"deleted {cid}\t"), deleted.stdout

    r = interrupted([tool("podcap"), "--collector", address, "get", cid, "-o", out], lambda: part_way(out), delete,
                    timeout=60)
    stderr = r.stderr
    lines = stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, stderr
    assert lines[0].startswith(f"podcap: capture {cid} was deleted ") and \
        "by admin: podcap delete, while it was being downloaded" in lines[0], lines[0]
    assert not os.path.exists(os.path.join(data, "captures", cid))


def catalog_rows(data: str, cid: str) -> dict[str, int]:
    db = sqlite3.connect(os.path.join(data, "podcap.db"))
    try:
        return {t: db.execute(f"SELECT COUNT(*) FROM {t} WHERE {'id' if t == 'captures' else 'capture_id'}=?",
                              (cid,)).fetchone()[0]
                for t in ("captures", "pods", "streams", "segments", "deletions", "audit")}
    finally:
        db.close()


def small_capture(address: str, demo: DemoNode, *, stop: bool = True) -> str:
    cid = capture_id(podcap(address, "start", "-n", demo.namespace, "rx-0", "--filter", "icmp"))
    wait_capturing(address, cid, 1)
    demo.exec(demo.pod("sender"), ["ping", "-c", "3", "-i", "0.2", demo.pod("rx-0").ip])
    if stop:
        podcap(address, "stop", cid)
    return cid


def test_delete_takes_files_and_rows_and_refuses_bad_input_in_one_line(
        collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, tmp_path: str) -> None:
    address, data, _ = collector
    ended = small_capture(address, node)
    assert os.path.isdir(os.path.join(data, "captures", ended))
    assert catalog_rows(data, ended)["segments"] >= 1

    # An unknown id: one line, non-zero.
    r = podcap(address, "delete", "nope12345678", check=False)
    assert r.returncode == 1 and r.stderr.strip() == \
        "podcap: no capture 'nope12345678' (see `podcap list`)", r.stderr
    # Another namespace's capture, without the right there: refused, one line, audited, nothing deleted.
    r = subprocess.run([tool("podcap"), "--collector", address, "--token", BOB, "delete", ended],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("podcap: permission denied: user 'bob' may not delete pods/capture in namespace "
                               f"'{node.namespace}'"), r.stderr
    assert os.path.isdir(os.path.join(data, "captures", ended))
    # A running capture: only with --force, which stops it first.
    running = small_capture(address, node, stop=False)
    r = podcap(address, "delete", running, check=False)
    assert r.returncode == 1 and r.stderr.strip() == f"podcap: capture {running} is running: stop it first " \
        f"(podcap stop {running}), or delete it with --force", r.stderr
    # Several at once: each deleted, the bad one a line of its own, and a non-zero exit.
    r = podcap(address, "delete", "--force", ended, "nope12345678", running, check=False)
    assert r.returncode == 1
    assert [line.split("\t")[0] for line in r.stdout.splitlines()] == [f"deleted {ended}", f"deleted {running}"]
    assert r.stderr.strip().splitlines() == ["podcap: no capture 'nope12345678' (see `podcap list`)"]
    for cid in (ended, running):
        assert not os.path.exists(os.path.join(data, "captures", cid))
        rows = catalog_rows(data, cid)
        assert (rows["captures"], rows["pods"], rows["streams"], rows["segments"], rows["deletions"]) == \
            (0, 0, 0, 0, 1), rows
        assert rows["audit"] >= 2  # its history stays
    # What became of them: status says so in one line; list shows them; the audit trail has who and why.
    r = podcap(address, "status", running, check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert f"capture {running} was deleted " in r.stderr and \
        "by admin: podcap delete --force (stopped it first)" in r.stderr, r.stderr
    listed = podcap(address, "list").stdout
    assert "recently deleted" in listed and ended in listed and running in listed
    # ... to whoever may read the capture: to bob it is just not there.
    as_bob = [tool("podcap"), "--collector", address, "--token", BOB]
    r = subprocess.run([*as_bob, "status", running], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.strip() == f"podcap: no capture '{running}' (see `podcap list`)", r.stderr
    r = subprocess.run([*as_bob, "list"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and running not in r.stdout and "recently deleted" not in r.stdout
    audit = podcap(address, "audit", "--capture", ended, "-o", "json").stdout
    assert '"action": "delete"' in audit and '"result": "denied"' in audit and '"user": "bob"' in audit

    # An offset past the end of a pod's file: OUT_OF_RANGE, with a message.
    kept = small_capture(address, node)
    with CollectorClient(address) as c:
        (pod,) = c.get(kept).pods
        past = control_pb2.ResumePoint(pod_uid=pod.pod.uid, offset=expected_size(pod) + 1)
        with pytest.raises(CollectorError) as err:
            list(c.download(kept, resume=[past]))
    assert err.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert f"resume offset {expected_size(pod) + 1} is past the end of" in str(err.value)


@pytest.mark.parametrize("collector", [("--keep-ended", "2s")], indirect=True)
def test_keep_ended_deletes_an_ended_capture_by_itself_and_never_a_running_one(
        collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, metrics_port: int) -> None:
    address, data, proc = collector
    ended = small_capture(address, node)
    running = small_capture(address, node, stop=False)
    deadline = time.monotonic() + 20
    while os.path.exists(os.path.join(data, "captures", ended)):
        assert time.monotonic() < deadline, "the ended capture was kept"
        time.sleep(0.2)
    time.sleep(3)  # the running one is older than 2 s, and stays
    r = podcap(address, "status", ended, check=False)
    assert r.returncode == 1 and "by podcap-collector: ended " in r.stderr and "(--keep-ended 2s)" in r.stderr
    assert os.path.isdir(os.path.join(data, "captures", running))
    with CollectorClient(address) as c:
        deleted = c.list_all().deleted
    assert ended in {d.capture_id for d in deleted} and running not in {d.capture_id for d in deleted}
    assert metric(metrics_port, 'podcap_captures_deleted_total{cause="keep_ended"}') == len(deleted)
    assert f"capture {ended} deleted by podcap-collector: ended" in proc.log()
    podcap(address, "stop", running)


@pytest.fixture
def small_disk(tmp_path: str) -> Iterator[str]:
    with small_tmpfs(tmp_path, "8m") as mnt:
        yield mnt


def test_a_full_data_dir_deletes_ended_captures_to_make_room_then_says_nothing_is_left(
        tmp_path: str, small_disk: str) -> None:
    """A data dir on an 8 MiB filesystem with a budget set: when it fills, the ended capture goes (the one that
    ended first first) and storing resumes; when it fills again with only the running capture's data, storing
    pauses and says nothing is left to delete; once space returns everything sent is stored, exactly once."""
    demo = DemoNode()
    demo.create(["sender", "rx-0"])
    c = Cluster(str(tmp_path), demo, data_dir=os.path.join(small_disk, "data"))
    filler = os.path.join(small_disk, "filler")
    try:
        c.start_collector("--max-data-bytes", "1TiB")  # a budget the full disk is over long before
        c.start_agent()
        c.wait_pods()
        warm_up(demo)
        ended = capture_id(podcap(c.address, "start", "-n", demo.namespace, "rx-0", "--filter", f"udp port {PORT}"))
        c.wait(ended, all_capturing(1))
        assert send(c, 6000, 2.0, ["rx-0"]).wait(timeout=30) == 0
        time.sleep(0.5)
        podcap(c.address, "stop", ended)
        held = int(c.status(ended)["bytes"])
        assert held > 500_000
        st = os.statvfs(small_disk)
        with open(filler, "wb") as f:  # leave room for half of what the ended capture holds
            f.write(b"\0" * (st.f_bavail * st.f_frsize - held // 2))

        running = capture_id(podcap(c.address, "start", "-n", demo.namespace, "rx-0", "--filter",
                                    f"udp port {PORT}"))
        c.wait(running, all_capturing(1))
        count = 12000  # about twice what the ended capture holds: the disk fills, room is made, it fills again
        sender = send(c, count, 4.0, ["rx-0"])
        st_run = c.wait(running, lambda s: "nothing left to delete" in str(s.get("paused")), timeout=60)
        assert str(st_run["paused"]).startswith("data dir full: ")
        assert str(st_run["paused"]).endswith("; nothing left to delete: every capture with data in the data dir "
                                              "is running")
        r = podcap(c.address, "status", ended, check=False)
        assert r.returncode == 1 and "by podcap-collector: the data dir is full" in r.stderr, r.stderr
        with CollectorClient(c.address) as client:
            answer = client.list_all()
        assert [x.id for x in answer.captures] == [running]  # never the running one
        gone = sorted(answer.deleted, key=lambda d: d.deleted_unix_ns)
        assert ended in [d.capture_id for d in gone]
        assert [d.ended_unix_ns for d in gone] == sorted(d.ended_unix_ns for d in gone)  # ended first, first
        assert sender.wait(timeout=30) == 0
        os.unlink(filler)  # space returns: storing resumes by itself, and nothing was lost
        c.wait(running, lambda s: not s.get("paused") and int(s["packets"]) >= count, timeout=60)
        podcap(c.address, "stop", running)
        check_exactly_once(c, running, ["rx-0"], count)
    finally:
        c.close()
        demo.destroy()
