"""The Wireshark extcap against real tshark (Debian's), a real collector and agent, and pods in network namespaces.

``podcap extcap install`` puts the interface into a temporary personal extcap folder (``XDG_CONFIG_HOME`` and
``HOME`` point into the test's directory), ``tshark -D`` lists it, and ``tshark -i podcap -o extcap.podcap.X:V``
captures sequence-numbered UDP of exactly the chosen pods, each on its own interface ``<namespace>/<pod>``
(``frame.interface_name``, read back by tshark from the file it stored). The podcap capture is stopped afterwards,
or keeps running when asked to. A denied user, a bad filter, an unknown pod and an unreachable collector end
tshark with an extcap error carrying the CLI's own line, within a bounded time. A capture that ends by itself
ends tshark's, with each pod's final counters in the saved file; a dead reader of the fifo stops the capture; and
dumpcap keeps a pod announced after other pods' packets on its own interface. The tests with pods need root
(network namespaces); all need tshark.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from podcap.collector.cli.client import CollectorClient
from podcap.collector.cli.live.stream import PcapngStream
from podcap.collector.demo.node import DemoNode
from podcap.formats.pcapng import ISB_IFRECV, ISB_USRDELIV
from podcap.v1 import common_pb2, control_pb2
from tests.conftest import Proc, collector_process, start_proc, tool
from tests.pcapng_reader import read_pcapng

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark (apt install tshark)")

SENDER = os.path.join(os.path.dirname(__file__), "udp_send.py")
PORT = 9999
ADMIN = "t-admin"
ALICE = "t-alice"  # may capture only in namespace "elsewhere"
TSHARK_TIMEOUT = 90


@pytest.fixture
def collector(tmp_path: str) -> Iterator[tuple[str, str, Proc]]:
    tokens = os.path.join(tmp_path, "tokens.csv")
    with open(tokens, "w") as f:
        f.write(f"{ADMIN},admin,*,*\n{ALICE},alice,create;get;delete,elsewhere\n")
    yield from collector_process(str(tmp_path), "--token-file", tokens)


@pytest.fixture
def agent(collector: tuple[str, str, Proc], node: DemoNode, tmp_path: str) -> Iterator[Proc]:
    address = collector[0]
    p = start_proc([tool("podcap-agent"), "--insecure", "--collector", address, "--node", "node-" + node.tag,
                    "--pod-source", "netns"], os.path.join(tmp_path, "agent.log"))
    try:
        with CollectorClient(address, token=ADMIN, timeout=5) as c:
            deadline = time.monotonic() + 20
            while len([p for p in c.capturable_pods(node.namespace).pods]) < 4:
                if time.monotonic() > deadline:
                    raise AssertionError("agent never registered its pods:\n" + p.log())
                time.sleep(0.2)
        yield p
    finally:
        assert p.stop() == 0, "agent did not stop cleanly on SIGTERM:\n" + p.log()


@pytest.fixture
def wireshark_env(tmp_path: str, collector: tuple[str, str, Proc]) -> Iterator[dict[str, str]]:
    """An environment whose personal Wireshark folders are in the test's directory, with podcap's extcap installed
    there by ``podcap extcap install`` (uninstalled at the end)."""
    home = os.path.join(tmp_path, "home")
    os.makedirs(home)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PODCAP_")}, "HOME": home,
           "XDG_CONFIG_HOME": os.path.join(home, "xdg")}
    r = subprocess.run([tool("podcap"), "--collector", collector[0], "extcap", "install"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    installed = os.path.join(home, "xdg", "wireshark", "extcap", "podcap-extcap")  # tshark 4.0's personal folder
    assert f"installed {installed}" in r.stdout, r.stdout
    yield env
    r = subprocess.run([tool("podcap"), "extcap", "uninstall"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"removed {installed}" in r.stdout, (r.stdout, r.stderr)
    assert not os.path.exists(installed)


def tshark(env: dict[str, str], *args: str, timeout: float = TSHARK_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tshark", *args], env=env, capture_output=True, text=True, timeout=timeout)


def token_file(tmp_path: str, token: str) -> str:
    """tshark passes no password option (``-o extcap.podcap.token`` is dropped): the token goes in a file."""
    path = os.path.join(tmp_path, f"{token}.token")
    with open(path, "w") as f:
        f.write(token + "\n")
    return path


def options(**values: str) -> list[str]:
    out = []
    for name, value in values.items():
        out += ["-o", f"extcap.podcap.{name}:{value}"]
    return out


def warm_up(node: DemoNode) -> None:
    sender = node.pod("sender")
    for rx in node.pods[1:]:
        node.exec(sender, ["ping", "-c", "1", "-W", "2", rx.ip])


def wireshark_capture(client: CollectorClient, ts: subprocess.Popen[str], timeout: float = 30
                      ) -> control_pb2.CaptureStatus:
    """The capture the extcap started, once all its pods capture."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ts.poll() is not None:
            raise AssertionError(f"tshark ended ({ts.returncode}): {ts.communicate()}")
        for cap in client.list_captures():
            capturing = all(p.state == common_pb2.POD_CAPTURE_STATE_CAPTURING for p in cap.pods)
            if "Wireshark" in cap.note and cap.pods and capturing:
                return cap
        time.sleep(0.1)
    raise AssertionError(f"no capture from Wireshark with capturing pods: {client.list_captures()}")


def stored_udp(env: dict[str, str], path: str) -> list[tuple[str, int, int, int]]:
    """(interface name, destination index, sequence number, frame length) of every PODCAPSEQ datagram, read by
    tshark itself from the file it stored."""
    r = tshark(env, "-r", path, "-Y", f"udp.dstport == {PORT}", "-T", "fields", "-e", "frame.interface_name",
               "-e", "udp.payload", "-e", "frame.len")
    assert r.returncode == 0, r.stderr
    out = []
    for line in r.stdout.splitlines():
        name, payload, length = line.split("\t")
        body = bytes.fromhex(payload.replace(":", ""))
        assert body.startswith(b"PODCAPSEQ"), line
        out.append((name, int.from_bytes(body[9:13], "big"), int.from_bytes(body[13:17], "big"), int(length)))
    return out


def test_tshark_lists_the_podcap_interface(wireshark_env: dict[str, str]) -> None:
    r = tshark(wireshark_env, "-D", timeout=60)
    assert r.returncode == 0, r.stderr
    listed = [line for line in r.stdout.splitlines() if "podcap" in line]
    assert len(listed) == 1 and "podcap (podcap: Kubernetes pods)" in listed[0], r.stdout
    # Without the folders pointed at the test's, there is no podcap interface: the install made it appear.
    bare = {**wireshark_env, "XDG_CONFIG_HOME": os.path.join(wireshark_env["HOME"], "empty")}
    assert "podcap" not in tshark(bare, "-D", timeout=60).stdout


@pytest.mark.root
@pytest.mark.parametrize("keep", [False, True], ids=["stopped", "kept"])
def test_tshark_captures_exactly_the_chosen_pods_each_on_its_interface(
    collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, wireshark_env: dict[str, str], tmp_path: str,
    keep: bool,
) -> None:
    address = collector[0]
    warm_up(node)
    count = 2000
    chosen = ["rx-0", "rx-2"]
    out = os.path.join(tmp_path, "out.pcapng")
    extra = {"keep": "true"} if keep else {}
    args = ["-i", "podcap", *options(tokenfile=token_file(tmp_path, ADMIN), namespace=node.namespace,
                                     pods=",".join(f"{node.namespace}/{p}" for p in chosen),
                                     filter=f"udp port {PORT}", **extra),
            "-c", str(count * len(chosen)), "-a", "duration:60", "-w", out]
    ts = subprocess.Popen(["tshark", *args], env=wireshark_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    try:
        with CollectorClient(address, token=ADMIN) as client:
            cap = wireshark_capture(client, ts)
            assert sorted(p.pod.name for p in cap.pods) == chosen
            receivers = node.pods[1:]  # rx-0, rx-1, rx-2: traffic to all three, only two are captured
            done = node.exec(node.pod("sender"), [sys.executable, SENDER, str(PORT), str(count),
                                                  *[p.ip for p in receivers]])
            assert done.returncode == 0, done.stderr
            _, stderr = ts.communicate(timeout=TSHARK_TIMEOUT)
            assert ts.returncode == 0, stderr
            got = stored_udp(wireshark_env, out)
            for name in chosen:
                d = [p.name for p in receivers].index(name)
                mine = [g for g in got if g[0] == f"{node.namespace}/{name}"]
                assert [g[2] for g in mine] == list(range(count)), f"{name}: missing, duplicated or reordered"
                assert {g[1] for g in mine} == {d}, f"packets of another pod on {name}'s interface"
                assert all(length == 14 + 20 + 8 + 17 + seq % 200 for _, _, seq, length in mine)
            assert len(got) == count * len(chosen), "packets of a pod that was not chosen"
            # The podcap capture is stopped once tshark is done (or kept running when asked to).
            deadline = time.monotonic() + 30
            while True:
                st = client.get(cap.id)
                if keep or st.state == control_pb2.CAPTURE_STATE_DONE or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if keep:
                time.sleep(3)
                st = client.get(cap.id)
                assert st.state == control_pb2.CAPTURE_STATE_RUNNING, st
                st = client.stop(cap.id)
            assert st.state == control_pb2.CAPTURE_STATE_DONE, st
            assert ("stopped by user" in st.end_reason), st.end_reason
            assert sorted((p.pod.name, p.packets) for p in st.pods) == [(n, count) for n in chosen]
            audit = [(r.user, r.action, r.result) for r in client.audit(capture_id=cap.id)]
            assert ("admin", "start", "allowed") in audit and ("admin", "follow", "allowed") in audit
    finally:
        if ts.poll() is None:
            ts.kill()
            ts.wait()


def _cli_message(address: str, token: str, *args: str) -> str:
    """What ``podcap start`` says of the same failure (its line without the hint, which names CLI options)."""
    r = subprocess.run([tool("podcap"), "--collector", address, "--token", token, "start", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r
    return r.stderr.strip().rsplit("; ", 1)[0]


@pytest.mark.root
def test_failures_are_extcap_errors_with_the_clis_line_not_a_hang(
    collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, wireshark_env: dict[str, str], tmp_path: str,
) -> None:
    address = collector[0]
    ns = node.namespace
    with CollectorClient(address, token=ADMIN) as client:
        before = len(client.list_captures())
    admin, alice = token_file(tmp_path, ADMIN), token_file(tmp_path, ALICE)
    cases = [
        # (extcap options, the same request through `podcap start`, what the line says)
        (dict(tokenfile=alice, namespace=ns, pods=f"{ns}/rx-0"), (ALICE, "-n", ns, "rx-0"), "permission denied"),
        (dict(tokenfile=admin, namespace=ns, filter="tcp port eighty"),
         (ADMIN, "-n", ns, "--filter", "tcp port eighty"), "filter"),
        (dict(tokenfile=admin, namespace=ns, pods=f"{ns}/nope"), (ADMIN, "-n", ns, "nope"), "rx-0"),
        (dict(tokenfile=admin, namespace=ns, collector="127.0.0.1:1"), None, "cannot reach the collector"),
    ]
    for opts, cli, needle in cases:
        started = time.monotonic()
        r = tshark(wireshark_env, "-i", "podcap", *options(**opts), "-a", "duration:30",
                   "-w", os.path.join(tmp_path, "x.pcapng"), timeout=60)
        assert time.monotonic() - started < 25, f"{opts}: took {time.monotonic() - started:.0f} s"
        assert r.returncode != 0, (opts, r.stderr)
        errors = [line for line in r.stderr.splitlines() if "Error by extcap pipe" in line]
        assert len(errors) == 1 and needle in errors[0], (opts, r.stderr)
        # Ours is the only message (tshark 4.0 adds bare "tshark:" lines of its own: see report_failure).
        assert [line for line in r.stderr.splitlines() if line.startswith("tshark:") and line.strip() != "tshark:"] \
            == errors, r.stderr
        line = errors[0].split("Error by extcap pipe: ", 1)[1].strip()
        assert line.startswith("podcap: "), line
        assert "-h'" not in line and "-n/--namespace" not in line and "--collector" not in line, line
        if cli is not None:  # the CLI's message; the hint is for Wireshark's dialog
            assert line.startswith(_cli_message(address, *cli)), line
    with CollectorClient(address, token=ADMIN) as client:
        assert len(client.list_captures()) == before, "a failed start started something"


@pytest.mark.root
def test_a_packet_between_two_chosen_pods_shows_once(
    collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, wireshark_env: dict[str, str], tmp_path: str,
) -> None:
    """Client and server pods both chosen: Wireshark gets each packet once, in time order (issue 26: every packet
    twice, each second copy marked a retransmission); the other pod's copies are counted in its statistics."""
    warm_up(node)
    count = 500
    out = os.path.join(tmp_path, "both.pcapng")
    ts = subprocess.Popen(["tshark", "-i", "podcap", *options(
        tokenfile=token_file(tmp_path, ADMIN), namespace=node.namespace,
        pods=f"{node.namespace}/sender,{node.namespace}/rx-0", filter=f"udp port {PORT}"), "-w", out],
        env=wireshark_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with CollectorClient(collector[0], token=ADMIN) as client:
            cap = wireshark_capture(client, ts)
            done = node.exec(node.pod("sender"), [sys.executable, SENDER, str(PORT), str(count), node.pod("rx-0").ip])
            assert done.returncode == 0, done.stderr
            time.sleep(3)
            st = client.stop(cap.id)
            assert sorted(p.packets for p in st.pods) == [count, count]  # both pods stored every packet
        _, stderr = ts.communicate(timeout=60)
        assert ts.returncode == 0, stderr
    finally:
        if ts.poll() is None:
            ts.kill()
            ts.wait()
    got = stored_udp(wireshark_env, out)
    assert sorted(g[2] for g in got) == list(range(count)), "each packet once"
    f = read_pcapng(out)
    assert [p.ts_ns for p in f.packets] == sorted(p.ts_ns for p in f.packets)
    comments = " ".join(o.decode() for s in f.stats for o in s.options.get(1, []))
    assert f"{count} packets seen first on another pod left out of this view" in comments


@pytest.mark.root
def test_the_capture_stops_when_the_fifos_reader_goes_away_without_a_signal(
    collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, tmp_path: str,
) -> None:
    """A Wireshark that dies without signalling: the closed fifo alone ends the extcap and stops the capture,
    even while no packet flows."""
    address = collector[0]
    fifo = os.path.join(tmp_path, "fifo")
    os.mkfifo(fifo)
    ext = subprocess.Popen([tool("podcap-extcap"), "--capture", "--extcap-interface", "podcap", "--fifo", fifo,
                            "--collector", address, "--token-file", token_file(tmp_path, ADMIN),
                            "--namespace", node.namespace, "--pods", f"{node.namespace}/rx-1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with open(fifo, "rb") as reader, CollectorClient(address, token=ADMIN) as client:
            assert reader.read(4) == b"\x0a\x0d\x0d\x0a"  # the section header block: the stream has begun
            cap = wireshark_capture(client, ext)
        _, stderr = ext.communicate(timeout=30)  # the reader is closed: it ends by itself
        assert ext.returncode == 0, stderr
        with CollectorClient(address, token=ADMIN) as client:
            st = client.get(cap.id)
        assert st.state == control_pb2.CAPTURE_STATE_DONE and "stopped by user" in st.end_reason, st
    finally:
        if ext.poll() is None:
            ext.kill()
            ext.wait()


@pytest.mark.root
def test_a_capture_that_ends_by_itself_ends_tsharks_capture_with_the_final_counters(
    collector: tuple[str, str, Proc], node: DemoNode, agent: Proc, wireshark_env: dict[str, str], tmp_path: str,
) -> None:
    """``podcap stop`` from elsewhere (or a limit): the stream ends, tshark's capture ends, and the file it saved
    carries each pod's final counters (ISBs from the extcap, kept by dumpcap)."""
    address = collector[0]
    warm_up(node)
    out = os.path.join(tmp_path, "out.pcapng")
    ts = subprocess.Popen(["tshark", "-i", "podcap", *options(tokenfile=token_file(tmp_path, ADMIN),
                                                              pods=f"{node.namespace}/rx-1",
                                                              filter=f"udp port {PORT}"), "-w", out],
                          env=wireshark_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with CollectorClient(address, token=ADMIN) as client:
            cap = wireshark_capture(client, ts)
            done = node.exec(node.pod("sender"), [sys.executable, SENDER, str(PORT), "500", node.pod("rx-1").ip])
            assert done.returncode == 0, done.stderr
            st = client.stop(cap.id)
            assert st.state == control_pb2.CAPTURE_STATE_DONE
        _, stderr = ts.communicate(timeout=60)  # no -a/-c: it ends because the stream ended
        assert ts.returncode == 0, stderr
    finally:
        if ts.poll() is None:
            ts.kill()
            ts.wait()
    assert [g[2] for g in stored_udp(wireshark_env, out)] == list(range(500))
    f = read_pcapng(out)
    final = [s for s in f.stats if s.counter(ISB_USRDELIV) is not None]
    assert len(final) == 1 and final[0].counter(ISB_USRDELIV) == 500 and final[0].counter(ISB_IFRECV) == 500
    assert f.interfaces[final[0].interface_id].name == f"{node.namespace}/rx-1"


def _late_pods_stream(path: str) -> None:
    """Write a live stream whose second pod is announced after packets of the first, as the extcap does."""
    frame = bytes(12) + b"\x08\x00" + bytes(46)
    status = control_pb2.CaptureStatus(id="latepods0001")
    with open(path, "wb") as fifo:
        stream = PcapngStream(fifo, status)
        for i, name in enumerate(["early", "late"]):
            stream.write(control_pb2.FollowMessage(pod=control_pb2.FollowPod(
                index=i, pod=common_pb2.Pod(namespace="ns", name=name, uid=name),
                format=common_pb2.PcapFormat(linktype=1, snaplen=65535, nanosecond=i == 0))))
            for _ in range(3):
                rec = struct.pack("<IIII", int(time.time()), 1000, len(frame), len(frame)) + frame
                stream.write(control_pb2.FollowMessage(records=control_pb2.FollowRecords(index=i, records=rec)))
        stream.finish()  # what the view still holds (it orders packets across pods)
        stream.close()


@pytest.mark.timeout(120)
def test_dumpcap_keeps_pods_announced_after_packets_on_their_own_interfaces(tmp_path: str) -> None:
    """What makes a live view of a dynamic capture work: dumpcap reading a pcapng pipe takes IDBs that follow
    packets (tshark -i FIFO reads a pipe as it reads an extcap's fifo)."""
    fifo = os.path.join(tmp_path, "fifo")
    os.mkfifo(fifo)
    writer = threading.Thread(target=_late_pods_stream, args=(fifo,))
    writer.start()
    out = os.path.join(tmp_path, "late.pcapng")
    r = subprocess.run(["tshark", "-i", fifo, "-w", out], capture_output=True, text=True, timeout=60)
    writer.join()
    assert r.returncode == 0, r.stderr
    names = subprocess.run(["tshark", "-r", out, "-T", "fields", "-e", "frame.interface_name"],
                           capture_output=True, text=True, timeout=60).stdout.split()
    assert names == ["ns/early"] * 3 + ["ns/late"] * 3
