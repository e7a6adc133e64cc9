"""The flight recorder's agent half (issue 24) on real netns pods, a real podcap-agent process and real gRPC: a
stand-in collector (tests/ingest_standin.py) starts a recording, the pod's traffic goes into the ring on
disk (not to the collector), and a ``SavePodWindow`` brings back exactly the window's packets as an ordinary capture
stream, accounted for (received == stored + kernel dropped + drops); the same after an agent restart between the
traffic and the save (the ring and its index survive); a ring smaller than the traffic saves its newest packets and
counts the rest as ``ring_evicted``; a packet trigger on TCP RSTs fires once its count is reached within its window."""

from __future__ import annotations

import os
import struct
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from podcap.collector.demo.node import DemoNode
from podcap.formats.pcap import FileFormat, iter_records
from podcap.v1 import common_pb2, ingest_pb2
from tests.conftest import Proc, free_port, start_proc, tool
from tests.ingest_standin import IngestStandIn
from tests.integration.helpers import frame_seqs, send_numbered, warm_up

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]
RECORDER = "rec-h4"
UDP = "udp port 9999"
RST = "tcp[tcpflags] & tcp-rst != 0"


@pytest.fixture
def node_pods() -> list[str]:
    return ["sender", "rx-0"]


@pytest.fixture
def standin() -> Iterator[IngestStandIn]:
    with IngestStandIn() as s:
        yield s


@contextmanager
def running_agent(standin: IngestStandIn, node: DemoNode, ring_dir: str, log: str, *extra: str) -> Iterator[Proc]:
    """A podcap-agent recording into ``ring_dir`` for ``node``, attached to ``standin``; it must stop cleanly."""
    agent = start_proc([tool("podcap-agent"), "--insecure", "--collector", standin.address, "--node",
                        "node-" + node.tag, "--pod-source", "netns", "--ring-dir", ring_dir,
                        "--ring-min-free", "0", *extra], log)
    try:
        yield agent
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]


@pytest.fixture
def ring_dir(tmp_path: str) -> str:
    return os.path.join(tmp_path, "rings")


def pod_of(reg: ingest_pb2.Register, node: DemoNode, name: str) -> common_pb2.Pod:
    """Our node's pod (the machine's named namespaces may hold other tests' pods of the same name)."""
    for p in reg.pods:
        if p.namespace == node.namespace and p.name == name:
            return p
    raise AssertionError(f"pod {node.namespace}/{name} not in the agent's registration")


def start_recording(standin: IngestStandIn, node: DemoNode, *, filter: str = UDP, max_bytes: int = 64 << 20,
                    trigger: ingest_pb2.PacketTrigger | None = None) -> common_pb2.Pod:
    """Once the agent has registered, record ``rx-0`` (ARP resolved first); returns once a heartbeat shows its ring
    RECORDING. The pod, as the agent registered it."""
    pod = pod_of(standin.wait_registered(), node, "rx-0")
    warm_up(node)
    standin.send(ingest_pb2.CollectorMessage(start_recording=ingest_pb2.StartPodRecording(
        recorder_id=RECORDER, pod=pod, settings=common_pb2.CaptureSettings(filter=filter),
        keep=ingest_pb2.RingLimits(max_bytes=max_bytes), trigger=trigger, pods_on_node=1)))
    standin.wait_for(lambda m: m.WhichOneof("kind") == "heartbeat" and any(
        r.pod_uid == pod.uid and r.state == ingest_pb2.RING_STATE_RECORDING for r in m.heartbeat.rings),
        what="ring RECORDING in a heartbeat")
    return pod


def seqs(chunks: list[ingest_pb2.PcapChunk], fmt: FileFormat) -> list[int]:
    return frame_seqs(rec.data for c in chunks for rec in iter_records(c.records, fmt))


def save(standin: IngestStandIn, uid: str, cid: str, lo: int, hi: int) -> tuple[ingest_pb2.PodCaptureEvent, list[int]]:
    standin.send(ingest_pb2.CollectorMessage(save=ingest_pb2.SavePodWindow(
        recorder_id=RECORDER, pod_uid=uid, capture_id=cid, from_unix_ns=lo, to_unix_ns=hi)))
    final = standin.final_event(cid, uid)
    assert final.state == common_pb2.POD_CAPTURE_STATE_DONE, final.message
    fmt = standin.started_format(cid, uid)
    chunks = standin.chunks(final.stream_id)
    assert [c.seq for c in chunks] == list(range(1, final.last_seq + 1))
    stored = sum(c.packets for c in chunks)
    drops = sum(f.number and v for f, v in final.drops.ListFields())
    assert final.kernel.received == stored + final.kernel.dropped + drops, final
    return final, seqs(chunks, fmt)


def phases(node: DemoNode) -> tuple[int, int]:
    """Three bursts of 500 datagrams a second apart (0-499, 1000-1499, 2000-2499); the middle one's time range."""
    send_numbered(node, 0, 500)
    time.sleep(1.0)
    lo = time.time_ns()
    send_numbered(node, 1000, 500)
    hi = time.time_ns() + 300_000_000
    time.sleep(1.0)
    send_numbered(node, 2000, 500)
    return lo, hi


def test_save_window_exact_and_accounted_across_agent_restart(node: DemoNode, standin: IngestStandIn,
                                                               ring_dir: str, tmp_path: str) -> None:
    with running_agent(standin, node, ring_dir, os.path.join(tmp_path, "agent1.log")):
        pod = start_recording(standin, node)
        lo, hi = phases(node)
        time.sleep(2.5)  # the last chunks reach the ring
        # While idle nothing but counters travel: no chunk of the recording reached the collector.
        assert not any(m.WhichOneof("kind") in ("chunk", "chunks") for m in standin.messages)
        final, got = save(standin, pod.uid, "save-live", lo, hi)
        assert got == list(range(1000, 1500)), got[:5]
        assert final.kernel.received == 500 and final.kernel.dropped == 0
    # The agent restarts: the ring (and its index) are found on disk and reported at registration; a save of the
    # first burst, asked for only now, still works.
    with running_agent(standin, node, ring_dir, os.path.join(tmp_path, "agent2.log")):
        reg = standin.wait_registered(2)
        rings = [r for r in reg.rings if r.pod_uid == pod.uid]
        assert rings and rings[0].packets == 1500 and rings[0].recorder_id == RECORDER, reg.rings
        final, got = save(standin, pod.uid, "save-after-restart", lo - 1_500_000_000, lo)
        assert got == list(range(0, 500))
        # Idempotent: the same save again runs nothing new and repeats its terminal event.
        before = len(standin.all("chunk")) + len(standin.all("chunks"))
        standin.send(ingest_pb2.CollectorMessage(save=ingest_pb2.SavePodWindow(
            recorder_id=RECORDER, pod_uid=pod.uid, capture_id="save-after-restart", from_unix_ns=0, to_unix_ns=1)))
        time.sleep(1.0)
        assert len(standin.all("chunk")) + len(standin.all("chunks")) == before


def test_save_completes_when_the_collector_returns(node: DemoNode, ring_dir: str, tmp_path: str) -> None:
    first = IngestStandIn().__enter__()
    second: IngestStandIn | None = None
    try:
        with running_agent(first, node, ring_dir, os.path.join(tmp_path, "agent.log")):
            pod = start_recording(first, node)
            lo = time.time_ns()
            send_numbered(node, 0, 500)
            # A save whose window reaches 3 s into the future; the collector dies right after asking for it.
            first.send(ingest_pb2.CollectorMessage(save=ingest_pb2.SavePodWindow(
                recorder_id=RECORDER, pod_uid=pod.uid, capture_id="save-outage", from_unix_ns=lo,
                to_unix_ns=time.time_ns() + 3_000_000_000)))
            time.sleep(0.3)
            first.kill()
            send_numbered(node, 1000, 500)  # still in the window, while the collector is away
            time.sleep(5)
            assert not any(m.WhichOneof("kind") == "pod_event" and m.pod_event.capture_id == "save-outage"
                           and m.pod_event.state == common_pb2.POD_CAPTURE_STATE_DONE for m in first.messages)
            second = IngestStandIn(first.port).__enter__()  # the collector is back, same address
            second.wait_registered(timeout=30)
            final = second.final_event("save-outage", pod.uid, timeout=30)
            assert final.state == common_pb2.POD_CAPTURE_STATE_DONE, final.message
            fmt = second.started_format("save-outage", pod.uid)
            chunks = second.chunks(final.stream_id)
            assert [c.seq for c in chunks] == list(range(1, final.last_seq + 1))
            assert seqs(chunks, fmt) == [*range(0, 500), *range(1000, 1500)]
            assert final.kernel.received == 1000 and sum(c.packets for c in chunks) == 1000
    finally:
        if second is not None:
            second.__exit__()


def test_deleted_pod_ring_is_kept_and_saved(node: DemoNode, standin: IngestStandIn, ring_dir: str,
                                            tmp_path: str) -> None:
    with running_agent(standin, node, ring_dir, os.path.join(tmp_path, "agent.log")):
        pod = start_recording(standin, node)
        lo = time.time_ns()
        send_numbered(node, 0, 500)
        time.sleep(0.5)
        node.remove_pod(node.pod("rx-0"))  # deleted mid-recording: its veth and namespace are gone
        standin.wait_for(lambda m: m.WhichOneof("kind") == "heartbeat" and any(
            r.pod_uid == pod.uid and r.state == ingest_pb2.RING_STATE_KEPT for r in m.heartbeat.rings), 20,
            "ring KEPT after the pod left")
        final, got = save(standin, pod.uid, "save-gone", lo, time.time_ns())
        # Packets in the kernel's last block when the interface vanished cannot be read: they are counted (unread),
        # never silently missing.
        assert got == list(range(len(got))) and len(got) + final.drops.unread + final.kernel.dropped == 500, final


def test_recording_follows_a_sandbox_restart(node: DemoNode, standin: IngestStandIn, ring_dir: str,
                                             tmp_path: str) -> None:
    """The pod's sandbox is recreated (new namespace and veth, same uid): the recording re-attaches and the same
    ring holds both incarnations' packets."""
    with running_agent(standin, node, ring_dir, os.path.join(tmp_path, "agent.log")):
        pod = start_recording(standin, node)
        lo = time.time_ns()
        send_numbered(node, 0, 300)
        time.sleep(0.5)
        node.remove_pod(node.pod("rx-0"))
        time.sleep(1.0)
        node.add_pod("rx-0")
        count = len(standin.all("heartbeat"))
        standin.wait_for(lambda m: m in standin.all("heartbeat")[count:] and any(
            r.pod_uid == pod.uid and r.state == ingest_pb2.RING_STATE_RECORDING for r in m.heartbeat.rings), 20,
            "ring RECORDING again after the sandbox restart")
        warm_up(node)
        send_numbered(node, 1000, 300)
        final, got = save(standin, pod.uid, "save-restarted", lo, time.time_ns())
        first, second = [n for n in got if n < 1000], [n for n in got if n >= 1000]
        assert second == list(range(1000, 1300))
        assert first == list(range(len(first))) and len(first) + final.drops.unread + final.kernel.dropped == 300


def test_small_tmpfs_shrinks_rings_never_fills(tmp_path: str) -> None:
    """A real, small filesystem (4 MiB tmpfs) under a budget far larger than it: writes make room by evicting, the
    filesystem always keeps its reserve, nothing fails, every packet is held, evicted or counted unwritten."""
    from podcap.agent.recorder.store import RingStore, StoreSettings
    from podcap.formats.pcap import FileFormat

    mnt = os.path.join(tmp_path, "tmpfs")
    os.makedirs(mnt)
    assert os.system(f"mount -t tmpfs -o size=4m h4ring-rings {mnt}") == 0
    try:
        store = RingStore(StoreSettings(os.path.join(mnt, "rings"), budget_bytes=1 << 30))
        fmt = FileFormat(1, 2000, True)
        keys = [("rec-t", f"uid-{i}") for i in range(3)]
        for k in keys:
            store.ensure(k, pod={}, max_bytes=1 << 30, max_duration_ns=0, keep_gone_ns=0)
        written = unwritten = 0
        for i in range(300):  # 300 chunks of 100 KB: 30 MB through a 4 MiB filesystem
            data = (struct.pack("<IIII", 1_700_000_000 + i, 0, 984, 984) + bytes(984)) * 100
            ok = store.write(keys[i % 3], data, 100, fmt, (1_700_000_000 + i) * 10**9, (1_700_000_000 + i) * 10**9)
            written += 100 if ok else 0
            unwritten += 0 if ok else 100
            st = os.statvfs(mnt)
            assert st.f_bavail * st.f_frsize >= store.min_free
        rings = [store.get(k) for k in keys]
        held = sum(r.held_packets for r in rings if r)
        evicted = sum(r.counters.ring_evicted for r in rings if r)
        assert written > 0 and evicted > 0 and held + evicted + unwritten == 30_000
        assert sum(r.counters.ring_unwritten for r in rings if r) == unwritten
        store.close()
    finally:
        os.system(f"umount {mnt}")


def test_small_ring_keeps_the_newest_and_counts_evicted(node: DemoNode, standin: IngestStandIn, ring_dir: str,
                                                       tmp_path: str) -> None:
    metrics = free_port()
    with running_agent(standin, node, ring_dir, os.path.join(tmp_path, "agent.log"), "--metrics-listen",
                        f"127.0.0.1:{metrics}"):
        pod = start_recording(standin, node, max_bytes=512 << 10)
        lo = time.time_ns()
        for i in range(6):  # ~6 x 500 x 150 B = 0.5 MB per burst... ~1.3 MB in all into a 512 KiB ring
            send_numbered(node, i * 1000, 1000)
            time.sleep(0.6)
        time.sleep(2.5)
        final, got = save(standin, pod.uid, "save-small", lo, time.time_ns())
        assert final.drops.ring_evicted > 0 and len(got) > 1000
        sent = [i * 1000 + j for i in range(6) for j in range(1000)]
        assert got == sent[len(sent) - len(got):], "the ring keeps one contiguous run of the newest packets"
        assert final.kernel.received == len(got) + final.drops.ring_evicted + final.kernel.dropped
        # The node's metrics say it too.
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                  if line.startswith("podcap_agent_ring_")}
        assert values[f'podcap_agent_ring_evicted_packets_total{{recorder="{RECORDER}"}}'] > 0
        assert 0 < values[f'podcap_agent_ring_bytes{{recorder="{RECORDER}"}}'] <= 512 << 10


def test_packet_trigger_fires_once_count_reached(node: DemoNode, standin: IngestStandIn, ring_dir: str,
                                                 tmp_path: str) -> None:
    with running_agent(standin, node, ring_dir, os.path.join(tmp_path, "agent.log")):
        pod = start_recording(standin, node, filter="tcp", trigger=ingest_pb2.PacketTrigger(
            filter=RST, count=5, window_ns=10_000_000_000))
        connect = ("import socket\nfor _ in range({n}):\n    s = socket.socket()\n    s.settimeout(2)\n"
                   "    try: s.connect(('" + node.pod("rx-0").ip + "', 81))\n    except OSError: pass\n"
                   "    s.close()\n")
        sender = node.pod("sender")
        assert node.exec(sender, [sys.executable, "-c", connect.format(n=4)]).returncode == 0
        time.sleep(1.5)
        assert not standin.all("packet_trigger"), "fired before its count"
        t0 = time.time_ns()
        assert node.exec(sender, [sys.executable, "-c", connect.format(n=2)]).returncode == 0
        fired = standin.wait_for(lambda m: m.WhichOneof("kind") == "packet_trigger", 5, "PacketTriggerFired")
        ev = fired.packet_trigger
        assert (ev.recorder_id, ev.pod_uid, ev.matches) == (RECORDER, pod.uid, 5)
        assert t0 - 1_000_000_000 < ev.fired_unix_ns < time.time_ns()
        # total_matches is read once per wakeup: the 6th match may already be counted by then.
        assert ev.first_match_unix_ns < t0 and ev.total_matches in (5, 6)
        time.sleep(1.5)
        assert len(standin.all("packet_trigger")) == 1, "fired once; the 6th match starts a new count"
        # Every match counted in the ring's status (not only those of a firing), the firing once.
        standin.wait_for(lambda m: m.WhichOneof("kind") == "heartbeat" and any(
            (r.trigger_fired, r.trigger_matches) == (1, 6) for r in m.heartbeat.rings), 10,
            "heartbeat with 6 matches and 1 firing")


def test_trigger_that_does_not_compile_records_without_it(node: DemoNode, standin: IngestStandIn, ring_dir: str,
                                                         tmp_path: str) -> None:
    with running_agent(standin, node, ring_dir, os.path.join(tmp_path, "agent.log")):
        pod = start_recording(standin, node, trigger=ingest_pb2.PacketTrigger(
            filter="tcp[tcpflags] & nonsense", count=1, window_ns=1_000_000_000))
        hb = standin.wait_for(lambda m: m.WhichOneof("kind") == "heartbeat" and any(
            r.pod_uid == pod.uid and "bad filter" in r.message for r in m.heartbeat.rings), 10,
            "the trigger's error in the ring's status")
        assert [r for r in hb.heartbeat.rings if r.pod_uid == pod.uid][0].state == ingest_pb2.RING_STATE_RECORDING
        lo = time.time_ns()
        send_numbered(node, 0, 100)
        _final, got = save(standin, pod.uid, "save-badtrigger", lo, time.time_ns())
        assert got == list(range(100))
