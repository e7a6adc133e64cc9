"""Issue 24, the collector's half, through real gRPC on loopback: an in-process collector, the CLI's client, and a
fake agent with rings speaking the real Ingest protocol (``recorder_agent``). A recorder sends each pod's agent a
StartPodRecording; ring counters from heartbeats show in status; a manual trigger waits for its save and the save's
stored files hold the pod's sequence-numbered packets from before the trigger to after it, with no gap (parsed);
a second trigger inside a waiting save joins it; a packet trigger saves, the next within the cooldown is held back;
the save is kept by --keep-ended; the recorder and its saves outlive a collector restart; bad input is a one-line
error with the right status code. No root needed."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from podcap.collector.captures.lifecycle import LifecyclePolicy
from podcap.collector.cli.client import CollectorClient, CollectorError
from podcap.collector.cli.get.pcapng import capture_section
from podcap.collector.server import Collector, start_collector
from podcap.formats.pcap import iter_records, parse_file_header
from podcap.v1 import common_pb2, control_pb2
from tests.conftest import podcap, tool
from tests.integration.recorder_agent import RingAgent
from tests.pcapng_reader import read_pcapng
from tests.unit.collector.cli.test_pcapng import tshark

NODE = "node-r"
PODS = [common_pb2.Pod(namespace="shop", name=f"web-{i}", uid=f"uid-web-{i}", node=NODE,
                       labels={"app": "web"}) for i in range(2)]


def collector(data: str, **kw: object) -> Collector:
    return start_collector("127.0.0.1:0", data, **kw)  # type: ignore[arg-type]


@pytest.fixture
def served(tmp_path: str) -> Iterator[tuple[Collector, str, RingAgent]]:
    c = collector(os.path.join(tmp_path, "data"))
    agent = RingAgent(f"127.0.0.1:{c.port}", NODE, PODS)
    try:
        yield c, f"127.0.0.1:{c.port}", agent
    finally:
        agent.close()
        c.stop(0)


def wait_for(ok: Callable[[], object], timeout: float = 15, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start(cli: CollectorClient, **kw: object) -> control_pb2.RecorderStatus:
    req = control_pb2.StartRecorderRequest(target=control_pb2.Target(namespace="shop", selector="app=web"),
                                           keep_seconds=60, before_ms=2000, after_ms=1000, **kw)  # type: ignore[arg-type]
    return cli.record(req)


def recording(cli: CollectorClient, agent: RingAgent) -> control_pb2.RecorderStatus:
    """A recorder started (``start``) whose rings the agent has been recording for half a second."""
    rec = start(cli)
    wait_for(lambda: len(agent.starts) == 2, what="starts")
    time.sleep(0.5)
    return rec


def seqs_of(cli: CollectorClient, capture_id: str) -> dict[str, list[tuple[int, int]]]:
    """Per pod uid, the (timestamp ns, sequence number) of every stored packet, parsed from the downloaded file."""
    files: dict[str, bytearray] = {}
    current = ""
    for msg in cli.download(capture_id):
        if msg.WhichOneof("kind") == "file":
            current = msg.file.pod.uid
            files[current] = bytearray()
        else:
            files[current] += msg.data
    out = {}
    for uid, data in files.items():
        fmt = parse_file_header(bytes(data[:24]))
        out[uid] = [(r.ts_ns, int.from_bytes(bytes(r.data[:4]), "big")) for r in iter_records(memoryview(data)[24:],
                                                                                               fmt)]
    return out


def test_a_manual_trigger_saves_the_pods_window_from_before_the_trigger(
        served: tuple[Collector, str, RingAgent]) -> None:
    _, address, agent = served
    with CollectorClient(address) as cli:
        rec = start(cli)
        assert rec.id.startswith("rec-") and len(rec.pods) == 2
        wait_for(lambda: len(agent.starts) == 2, what="StartPodRecording for both pods")
        s = agent.starts[0]
        assert (s.recorder_id, s.keep.max_duration_ns, s.pods_on_node) == (rec.id, 60 * 10**9, 2)
        # Ring counters from the heartbeats show in status.
        wait_for(lambda: all(p.state == "recording" and p.packets > 0 for p in cli.get_recorder(rec.id).pods),
                 what="ring reports")
        time.sleep(2.5)  # more than --before of history in the rings
        t0 = time.time_ns()
        answer = cli.trigger(rec.id, ["web-0"], reason="checkout failed for a customer", timeout=30)
        assert not answer.joined
        st = answer.capture
        assert st.state == control_pb2.CAPTURE_STATE_DONE, st
        assert [p.pod.name for p in st.pods] == ["web-0"] and st.pods[0].final and st.pods[0].unaccounted == 0
        save = agent.saves[-1]
        assert save.capture_id == answer.capture_id and save.pod_uid == "uid-web-0"
        trigger_ns = st.save.triggers[0].unix_ns
        assert t0 <= trigger_ns <= time.time_ns()
        assert (save.from_unix_ns, save.to_unix_ns) == (trigger_ns - 2 * 10**9, trigger_ns + 10**9)
        # The stored file holds the window: every record of the pod's ring within it, in order, none outside.
        stored = seqs_of(cli, answer.capture_id)["uid-web-0"]
        ring = agent.rings[(rec.id, "uid-web-0")]
        with ring.lock:
            expected = [(ts, q) for ts, q in ring.records if save.from_unix_ns <= ts < save.to_unix_ns]
        assert stored == expected and len(stored) > 300
        assert stored[0][0] < trigger_ns - 1_500_000_000  # packets from well before the trigger
        assert stored[-1][0] > trigger_ns + 500_000_000
        assert st.pods[0].packets == len(stored)
        # Status names the save; its merged pcapng says why it was taken.
        rs = cli.get_recorder(rec.id)
        assert [s.capture_id for s in rs.saves] == [answer.capture_id]
        assert rs.saves[0].state == control_pb2.CAPTURE_STATE_DONE and rs.saves[0].packets == len(stored)
        comments = capture_section(cli.get(answer.capture_id)).comments
        assert any("manual" in c and "checkout failed for a customer" in c and "shop/web-0" in c for c in comments)
        # Recorders are listed with the captures.
        listed = cli.list_all()
        assert [r.id for r in listed.recorders] == [rec.id]
        assert answer.capture_id in [c.id for c in listed.captures]


def test_triggers_inside_a_waiting_save_join_it_and_no_bytes_are_saved_twice(
        served: tuple[Collector, str, RingAgent]) -> None:
    _, address, agent = served
    with CollectorClient(address) as cli:
        rec = recording(cli, agent)
        first = cli.trigger(rec.id, ["web-0"], no_wait=True)
        time.sleep(0.3)
        second = cli.trigger(rec.id, ["web-1"], reason="peer", no_wait=True)
        assert second.joined and second.capture_id == first.capture_id
        wait_for(lambda: cli.get(first.capture_id).state == control_pb2.CAPTURE_STATE_DONE, what="the save")
        st = cli.get(first.capture_id)
        assert sorted(p.pod.name for p in st.pods) == ["web-0", "web-1"]
        assert len(st.save.triggers) == 2 and st.save.to_unix_ns == st.save.triggers[1].unix_ns + 10**9
        # Both pods' whole window, the first pod's too (a join never clips the save's own pods).
        assert not st.save.pod_from_unix_ns
        for uid in ("uid-web-0", "uid-web-1"):
            sent = next(s for s in agent.saves if s.capture_id == first.capture_id and s.pod_uid == uid)
            assert (sent.from_unix_ns, sent.to_unix_ns) == (st.save.from_unix_ns, st.save.to_unix_ns)
            ring = agent.rings[(rec.id, uid)]
            with ring.lock:
                expected = [(ts, q) for ts, q in ring.records if sent.from_unix_ns <= ts < sent.to_unix_ns]
            assert seqs_of(cli, first.capture_id)[uid] == expected and expected
        # A trigger right after: its window overlaps the saved one, so it saves only what follows it.
        third = cli.trigger(rec.id, ["web-0"], timeout=30)
        assert not third.joined and third.capture_id != first.capture_id
        a = seqs_of(cli, first.capture_id)["uid-web-0"]
        b = seqs_of(cli, third.capture_id)["uid-web-0"]
        assert a and b and a[-1][0] < b[0][0]  # never the same packet twice
        assert third.capture.save.pod_from_unix_ns["uid-web-0"] == st.save.to_unix_ns


def test_a_packet_trigger_saves_and_the_next_within_the_cooldown_is_held_back(
        served: tuple[Collector, str, RingAgent]) -> None:
    _, address, agent = served
    with CollectorClient(address) as cli:
        rec = start(cli, on=[control_pb2.RECORDER_TRIGGER_PACKETS], cooldown_seconds=300,
                    packet_trigger=control_pb2.RecorderPacketTrigger(filter="tcp[tcpflags] & tcp-rst != 0",
                                                                      count=20, window_ms=10000))
        wait_for(lambda: len(agent.starts) == 2, what="starts")
        assert agent.starts[0].trigger.filter == "tcp[tcpflags] & tcp-rst != 0"
        assert (agent.starts[0].trigger.count, agent.starts[0].trigger.window_ns) == (20, 10 * 10**9)
        fired = time.time_ns()
        agent.fire_packets(rec.id, "uid-web-1", fired, 20)
        agent.fire_packets(rec.id, "uid-web-1", fired, 20)  # re-sent (a new session): the same firing, once
        wait_for(lambda: cli.get_recorder(rec.id).saves, what="a save")
        cid = cli.get_recorder(rec.id).saves[0].capture_id
        wait_for(lambda: cli.get(cid).state == control_pb2.CAPTURE_STATE_DONE, what="the save's end")
        st = cli.get(cid)
        assert [p.pod.name for p in st.pods] == ["web-1"]
        assert st.save.triggers[0].reason == control_pb2.RECORDER_TRIGGER_PACKETS
        agent.fire_packets(rec.id, "uid-web-1", time.time_ns(), 20)  # after the window: a new save, unless debounced
        wait_for(lambda: cli.get_recorder(rec.id).suppressed == 1, what="the held-back trigger")
        rs = cli.get_recorder(rec.id)
        assert len(rs.saves) == 1 and "cooldown" in rs.last_suppressed and len(st.save.triggers) == 1


def test_bad_input_is_a_one_line_error(served: tuple[Collector, str, RingAgent]) -> None:
    _, address, _agent = served
    with CollectorClient(address) as cli:
        cases = [
            (dict(keep_seconds=30, before_ms=60000), grpc.StatusCode.INVALID_ARGUMENT, "--before 60s is longer than "
             "--keep 30s"),
            (dict(keep_seconds=30, before_ms=1000, on=[99]), grpc.StatusCode.INVALID_ARGUMENT, "unknown trigger"),
            (dict(keep_seconds=30, before_ms=1000,
                  packet_trigger=control_pb2.RecorderPacketTrigger(filter="tcp[tcpflags] &&& rst")),
             grpc.StatusCode.INVALID_ARGUMENT, "--trigger-filter"),
            (dict(), grpc.StatusCode.INVALID_ARGUMENT, "--keep is required"),
        ]
        for kw, code, text in cases:
            with pytest.raises(CollectorError) as err:
                cli.record(control_pb2.StartRecorderRequest(target=control_pb2.Target(namespace="shop"),
                                                            **kw))  # type: ignore[arg-type]
            assert err.value.code == code and text in str(err.value) and "\n" not in str(err.value), str(err.value)
        with pytest.raises(CollectorError) as err:
            cli.trigger("rec-nosuchthing", timeout=5)
        assert err.value.code == grpc.StatusCode.NOT_FOUND and "no recorder 'rec-nosuchthing'" in str(err.value)
        rec = start(cli)
        with pytest.raises(CollectorError) as err:
            cli.trigger(rec.id, ["nope"], timeout=5)
        assert err.value.code == grpc.StatusCode.NOT_FOUND and "has no pod 'nope'" in str(err.value)
        cli.stop_recorder(rec.id)
        with pytest.raises(CollectorError) as err:
            cli.trigger(rec.id, timeout=5)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "was stopped" in str(err.value)
        with pytest.raises(CollectorError) as err:  # a user may not make a save by hand
            cli.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="shop"),
                                                      save=control_pb2.RecorderSaveInfo(recorder_id=rec.id)))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_saves_escape_keep_ended_and_recorders_outlive_a_restart(tmp_path: str) -> None:
    data = os.path.join(tmp_path, "data")
    c = collector(data, policy=LifecyclePolicy(keep_ended_s=0.5))
    agent = RingAgent(f"127.0.0.1:{c.port}", NODE, PODS)
    try:
        with CollectorClient(f"127.0.0.1:{c.port}") as cli:
            rec = recording(cli, agent)
            save = cli.trigger(rec.id, ["web-0"], timeout=30)
            plain = cli.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="shop",
                                                                                        pod_names=["web-1"])))
            cli.stop(plain.id)
            c.captures.lifecycle.run_once(time.time_ns() + 10**10)  # both ended long ago, for the policy
            ids = [x.id for x in cli.list_all().captures]
            assert save.capture_id in ids and plain.id not in ids
    finally:
        agent.close()
        c.stop(0)
    c = collector(data)
    agent = RingAgent(f"127.0.0.1:{c.port}", NODE, PODS)
    try:
        with CollectorClient(f"127.0.0.1:{c.port}") as cli:
            rs = cli.get_recorder(rec.id)
            assert rs.state == control_pb2.RECORDER_STATE_RECORDING
            assert [s.capture_id for s in rs.saves] == [save.capture_id]
            assert rs.saves[0].state == control_pb2.CAPTURE_STATE_DONE
            # The returning agent is asked to record again (it keeps no wishes across sessions).
            wait_for(lambda: len(agent.starts) == 2, what="starts after the restart")
            st = cli.get(save.capture_id)
            assert st.save.recorder_id == rec.id and st.state == control_pb2.CAPTURE_STATE_DONE
    finally:
        agent.close()
        c.stop(0)


def test_the_cli_records_triggers_shows_and_refuses_bad_input_in_one_line(
        served: tuple[Collector, str, RingAgent], tmp_path: str) -> None:
    """`podcap record` prints the recorder id last, `podcap trigger` waits and prints the save's capture id last,
    `status`/`list`/`stop` take recorders, and each bad input is one line on stderr, exit status 1 or 2."""
    _, address, agent = served
    r = podcap(address, "record", "-n", "shop", "-l", "app=web", "--keep", "1m", "--before", "2s", "--after",
               "500ms", "--on", "restart,oomkilled")
    rid = r.stdout.strip().splitlines()[-1]
    assert rid.startswith("rec-"), r.stdout
    wait_for(lambda: len(agent.starts) == 2, what="starts")
    time.sleep(0.5)
    t = podcap(address, "trigger", rid, "shop/web-1", "--reason", "user report 4711")
    cid = t.stdout.strip().splitlines()[-1]
    with CollectorClient(address) as cli:
        st = cli.get(cid)
        assert st.state == control_pb2.CAPTURE_STATE_DONE and [p.pod.name for p in st.pods] == ["web-1"]
        assert st.save.triggers[0].detail == "user report 4711"
    status = podcap(address, "status", rid).stdout
    assert rid in status and cid in status and "manual" in status and "recording" in status
    # The merged pcapng says why the save was taken, when, on which pod.
    merged = os.path.join(str(tmp_path), "save.pcapng")
    podcap(address, "get", cid, "--merge", merged)
    f = read_pcapng(merged)
    (trig,) = [c for c in f.comments if c.startswith(f"podcap recorder {rid}: trigger manual at ")]
    assert " on pod shop/web-1: user report 4711 (by anonymous); window " in trig
    assert len(f.packets) == st.packets
    assert rid in podcap(address, "list").stdout
    data = json.loads(podcap(address, "status", rid, "-o", "json").stdout)
    assert data["state"] == "recording" and data["saves"][0]["capture_id"] == cid
    assert data["request"]["on"] == ["restart", "oomkilled"]
    for args, text in [
        (["record", "-n", "shop", "--keep", "30s", "--before", "1m"], "--before 60s is longer than --keep 30s"),
        (["record", "-n", "shop", "--keep", "30s", "--on", "crash"], "unknown trigger 'crash'"),
        (["record", "-n", "shop", "--keep", "1m", "--before", "5s", "--trigger-filter", "tcp &&& rst"],
         "--trigger-filter"),
        (["trigger", "rec-nosuchthing"], "no recorder 'rec-nosuchthing'"),
    ]:
        bad = podcap(address, *args, check=False)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode in (1, 2) and len(lines) == 1 and text in lines[0], (args, bad.stderr)
    words = f"podcap --collector {address} trigger rec-"  # shell completion offers the recording recorder
    done = subprocess.run([tool("podcap")], capture_output=True, text=True, timeout=60, env={
        **os.environ, "_PODCAP_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": "4"})
    assert [line.split(",", 1)[1] for line in done.stdout.splitlines()] == [rid], done
    podcap(address, "stop", rid)
    bad = podcap(address, "trigger", rid, check=False)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "was stopped" in bad.stderr
    wait_for(lambda: any(s.recorder_id == rid and s.delete_ring for s in agent.stops), what="the rings' deletion")


def test_a_save_while_the_agent_is_away_completes_when_it_returns(
        served: tuple[Collector, str, RingAgent]) -> None:
    _, address, agent = served
    with CollectorClient(address) as cli:
        rec = recording(cli, agent)
        answer = cli.trigger(rec.id, ["web-0"], no_wait=True)
        agent.disconnect()
        time.sleep(2.0)  # the window passes while the agent is away: the save is due, and waits
        st = cli.get(answer.capture_id)
        assert st.state == control_pb2.CAPTURE_STATE_RUNNING and st.save.dispatched
        assert st.pods[0].state != common_pb2.POD_CAPTURE_STATE_DONE
        assert not [s for s in agent.saves if s.capture_id == answer.capture_id]
        agent.reconnect()
        wait_for(lambda: cli.get(answer.capture_id).state == control_pb2.CAPTURE_STATE_DONE, what="the save")
        st = cli.get(answer.capture_id)
        save = next(s for s in agent.saves if s.capture_id == answer.capture_id)
        ring = agent.rings[(rec.id, "uid-web-0")]
        with ring.lock:
            expected = [(ts, q) for ts, q in ring.records if save.from_unix_ns <= ts < save.to_unix_ns]
        assert seqs_of(cli, answer.capture_id)["uid-web-0"] == expected and st.pods[0].final


def test_recorders_need_a_captures_rights(tmp_path: str) -> None:
    """Starting needs `create` in the target's namespace, a manual trigger too, reading `get`; list shows a
    recorder only to who may read it."""
    tokens = os.path.join(tmp_path, "tokens.csv")
    with open(tokens, "w") as f:
        f.write("t-admin,admin,*,*\nt-viewer,viewer,get;list,shop\nt-other,other,*,other\n")
    from podcap.collector.api.auth import StaticTokenAuthorizer
    c = collector(os.path.join(tmp_path, "data"), authorizer=StaticTokenAuthorizer(tokens))
    agent = RingAgent(f"127.0.0.1:{c.port}", NODE, PODS)
    address = f"127.0.0.1:{c.port}"
    try:
        with CollectorClient(address, token="t-other") as other, CollectorClient(address, token="t-viewer") as viewer, \
                CollectorClient(address, token="t-admin") as admin:
            with pytest.raises(CollectorError) as err:
                start(other)
            assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
            rec = start(admin)
            assert viewer.get_recorder(rec.id).id == rec.id
            assert [r.id for r in viewer.list_all().recorders] == [rec.id]
            assert not other.list_all().recorders
            with pytest.raises(CollectorError) as err:
                viewer.trigger(rec.id, no_wait=True)
            assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(CollectorError) as err:
                other.get_recorder(rec.id)
            assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(CollectorError) as err:
                viewer.stop_recorder(rec.id)
            assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
            denied = [a for a in admin.audit(limit=50) if a.result == "denied"]
            assert {a.action for a in denied} == {"record", "trigger", "status", "stop"}
    finally:
        agent.close()
        c.stop(0)


def test_a_saves_triggers_are_packet_comments_where_they_happened(
        served: tuple[Collector, str, RingAgent], tmp_path: str) -> None:
    """Two triggers in one save (web-0's, then web-1's joining it): `get --merge` and `get --format pcapng` carry each
    as a comment on the first packet of its pod at or after its time, and Wireshark shows them there (tshark's
    frame.comment); the section still says them all (issue 24)."""
    _, address, agent = served
    with CollectorClient(address) as cli:
        rec = start(cli)
        wait_for(lambda: len(agent.starts) == 2, what="starts")
        time.sleep(0.5)
        first = cli.trigger(rec.id, ["web-0"], reason="checkout failed", no_wait=True)
        time.sleep(0.3)
        assert cli.trigger(rec.id, ["web-1"], reason="peer", no_wait=True).capture_id == first.capture_id
        wait_for(lambda: cli.get(first.capture_id).state == control_pb2.CAPTURE_STATE_DONE, what="the save")
        triggers = {t.pod.name: t.unix_ns for t in cli.get(first.capture_id).save.triggers}
    merged = os.path.join(str(tmp_path), "save.pcapng")
    podcap(address, "get", first.capture_id, "--merge", merged)
    f = read_pcapng(merged)
    names = [i.name for i in f.interfaces]
    commented = [(k, p) for k, p in enumerate(f.packets) if p.comments]
    assert len(commented) == 2 and len(f.packets) > 300
    for k, p in commented:
        pod = names[p.interface_id].split("/")[1]
        (text,) = p.comments
        assert text.startswith(f"podcap recorder {rec.id}: trigger manual at ") and f" on pod shop/{pod}: " in text
        # The first packet of that pod at or after the trigger: its packets before it are all earlier.
        assert p.ts_ns >= triggers[pod] > max(q.ts_ns for q in f.packets[:k] if q.interface_id == p.interface_id)
        assert f"{text}; also the comment of the first packet of shop/{pod} at or after it" in f.comments
    rows = tshark(merged, "frame.number", "frame.interface_name", "frame.comment", extra=("-Y", "frame.comment"))
    assert [(int(n), name, c) for n, name, c in rows] == [
        (k + 1, names[p.interface_id], p.comments[0]) for k, p in commented]
    # Per pod (--format pcapng): each pod's file carries its own trigger on its packet, the other's in the section.
    out_dir = os.path.join(str(tmp_path), "pods")
    podcap(address, "get", first.capture_id, "-o", out_dir, "--format", "pcapng")
    files = sorted(os.path.join(d, n) for d, _, names in os.walk(out_dir) for n in names if n.endswith(".pcapng"))
    assert len(files) == 2, files
    for path in files:
        per_pod = read_pcapng(path)
        pod = per_pod.interfaces[0].name.split("/")[1]
        [(p, text)] = [(p, c) for p in per_pod.packets for c in p.comments]
        assert f" on pod shop/{pod}: " in text and p.ts_ns >= triggers[pod]
        assert len([c for c in per_pod.comments if "trigger manual" in c]) == 2
        rows = tshark(path, "frame.comment", extra=("-Y", "frame.comment"))
        assert rows == [[text]]
