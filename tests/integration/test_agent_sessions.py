"""Issue 21 through real gRPC on loopback: a collector (in-process, or real processes for the port test) and a fake
agent speaking the Ingest protocol with the generated stubs. A chunk over the declared limit is refused in-band,
counted, and the session goes on; a gap counting `rejected` is counted; what an agent holds shows while it is away
and the pod is not final; a start for a node whose agent just disconnected is accepted and sent when it registers
again; a second collector on a port in use refuses to start. No root needed."""

from __future__ import annotations

import logging
import os
import queue
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from podcap.collector.api.ingest import MAX_MESSAGE_BYTES
from podcap.collector.captures import table
from podcap.collector.cli.client import CollectorClient, CollectorError
from podcap.collector.cli.render import accounting_caption
from podcap.collector.server import Collector, start_collector
from podcap.v1 import common_pb2, control_pb2, ingest_pb2, ingest_pb2_grpc
from tests.conftest import Proc, free_port, podcap, tool

NODE = "node-x"
PODS = [common_pb2.Pod(namespace="bk", name=f"bulk-{i}", uid=f"uid-{i}", node=NODE) for i in range(2)]
FMT = common_pb2.PcapFormat(linktype=1, snaplen=262144, nanosecond=True)


def records(start: int, n: int, size: int = 60) -> bytes:
    return b"".join(struct.pack("<IIII", 10, i, size, size) + i.to_bytes(4, "big") * (size // 4)
                    for i in range(start, start + n))


class FakeAgent:
    """One agent session: messages to send go through a queue, replies are collected by a reader thread."""

    def __init__(self, address: str, *, held: list[ingest_pb2.StreamHeld] | None = None) -> None:
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
        self._out: queue.Queue[ingest_pb2.AgentMessage | None] = queue.Queue()
        self.replies: queue.Queue[ingest_pb2.CollectorMessage] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.send(ingest_pb2.AgentMessage(register=ingest_pb2.Register(
            node=NODE, instance_id="fake", version="t", pods=PODS, pod_source="netns", held=held or [])))
        self.call = ingest_pb2_grpc.IngestStub(self.channel).Attach(self._requests(), timeout=120)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # The collector answers once its registry has the node: from then on its pods can be targeted.
        self.registration = self.expect(lambda m: m.WhichOneof("kind") == "registered")

    def _requests(self) -> Iterator[ingest_pb2.AgentMessage]:
        while (msg := self._out.get()) is not None:
            yield msg

    def _read(self) -> None:
        try:
            for reply in self.call:
                self.replies.put(reply)
        except grpc.RpcError as e:
            self.error = e

    def send(self, msg: ingest_pb2.AgentMessage) -> None:
        self._out.put(msg)

    def expect(self, ok: Callable[[ingest_pb2.CollectorMessage], bool], timeout: float = 15) -> \
            ingest_pb2.CollectorMessage:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.replies.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no such reply within {timeout} s (session error: {self.error})") from None
            if ok(msg):
                return msg

    def expect_ack(self, ok: Callable[[ingest_pb2.ChunkAck], bool], timeout: float = 15) -> ingest_pb2.ChunkAck:
        found: list[ingest_pb2.ChunkAck] = []

        def any_ack(m: ingest_pb2.CollectorMessage) -> bool:
            acks = [m.ack] if m.WhichOneof("kind") == "ack" else list(m.acks.acks) if m.WhichOneof("kind") == \
                "acks" else []
            found.extend(a for a in acks if ok(a))
            return bool(found)

        self.expect(any_ack, timeout)
        return found[0]

    def started(self, capture_id: str, stream: str = "s1") -> None:
        self.send(ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
            capture_id=capture_id, pod_uid="uid-0", stream_id=stream, state=common_pb2.POD_CAPTURE_STATE_CAPTURING,
            format=FMT, interface="veth-x")))

    def chunk(self, capture_id: str, seq: int, data: bytes, packets: int, **lost: int) -> None:
        self.send(ingest_pb2.AgentMessage(chunk=ingest_pb2.PcapChunk(
            capture_id=capture_id, pod_uid="uid-0", stream_id="s1", seq=seq, records=data, packets=packets,
            lost=common_pb2.PodcapDrops(**lost))))

    def cancel(self) -> None:
        """The session dies under the agent (what the collector sees of a broken connection)."""
        self.call.cancel()
        self._reader.join(5)
        self.channel.close()

    def close(self) -> None:
        self._out.put(None)
        self._reader.join(5)
        self.channel.close()


def is_start(capture_id: str) -> Callable[[ingest_pb2.CollectorMessage], bool]:
    return lambda m: m.WhichOneof("kind") == "start" and m.start.capture_id == capture_id


@pytest.fixture
def served(tmp_path: str) -> Iterator[tuple[Collector, str]]:
    c = start_collector("127.0.0.1:0", os.path.join(tmp_path, "data"))
    try:
        yield c, f"127.0.0.1:{c.port}"
    finally:
        c.stop(0)


def wait_status(cli: CollectorClient, capture_id: str, ok: Callable[[control_pb2.CaptureStatus], bool],
                timeout: float = 15) -> control_pb2.CaptureStatus:
    deadline = time.monotonic() + timeout
    while True:
        st = cli.get(capture_id)
        if ok(st):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.05)


def start_one(cli: CollectorClient) -> str:
    return cli.start(control_pb2.StartCaptureRequest(
        target=control_pb2.Target(namespace="bk", pod_names=["bulk-0"]))).id


def test_an_oversized_chunk_is_refused_in_band_the_session_goes_on_and_gaps_are_counted(
        served: tuple[Collector, str]) -> None:
    _, address = served
    agent = FakeAgent(address)
    try:
        reg = agent.registration
        assert reg.registered.max_message_bytes == MAX_MESSAGE_BYTES
        with CollectorClient(address) as cli:
            cid = start_one(cli)
            agent.expect(is_start(cid))
            agent.started(cid)
            agent.chunk(cid, 1, records(0, 3), 3)
            big = ingest_pb2.AgentMessage(chunk=ingest_pb2.PcapChunk(  # over the declared limit, within gRPC's
                capture_id=cid, pod_uid="uid-0", stream_id="s1", seq=2, records=b"\0" * MAX_MESSAGE_BYTES,
                packets=900))
            agent.send(big)
            refused = agent.expect_ack(lambda a: a.rejected)
            assert refused.seq == 2 and refused.reason == (
                f"chunk of {big.ByteSize()} bytes exceeds the collector's limit of {MAX_MESSAGE_BYTES} bytes")
            assert wait_status(cli, cid, lambda s: s.pods[0].drops.rejected == 900)  # the agent drops it: counted
            agent.chunk(cid, 3, records(3, 2), 2)
            assert agent.expect_ack(lambda a: not a.rejected and a.seq == 3).seq == 3  # the same session goes on
            agent.chunk(cid, 4, b"", 0, rejected=50)  # a chunk the agent found too large itself: a gap in its place
            assert agent.expect_ack(lambda a: not a.rejected and a.seq == 4).seq == 4
            assert wait_status(cli, cid, lambda s: s.pods[0].drops.rejected == 950)
            agent.send(ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
                capture_id=cid, pod_uid="uid-0", stream_id="s1", state=common_pb2.POD_CAPTURE_STATE_DONE,
                last_seq=4, kernel=common_pb2.KernelStats(received=955), delivered=955,
                drops=common_pb2.PodcapDrops(rejected=950))))
            st = wait_status(cli, cid, lambda s: s.state == control_pb2.CAPTURE_STATE_DONE and s.pods[0].final)
            p = st.pods[0]
            assert (p.packets, p.drops.rejected, p.unaccounted) == (5, 950, 0)
            assert accounting_caption(st) == ("all 955 packets the kernel delivered are stored, deleted by retention "
                                              "or counted as dropped")
        assert agent.error is None
    finally:
        agent.close()


def test_held_data_shows_while_the_agent_is_away_and_the_pod_is_not_final(
        served: tuple[Collector, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _, address = served
    monkeypatch.setattr(table, "STOP_GRACE_S", 0.5)
    agent = FakeAgent(address)
    with CollectorClient(address) as cli:
        cid = start_one(cli)
        agent.expect(is_start(cid))
        agent.started(cid)
        agent.send(ingest_pb2.AgentMessage(heartbeat=ingest_pb2.Heartbeat(held=[ingest_pb2.StreamHeld(
            capture_id=cid, pod_uid="uid-0", stream_id="s1",
            held=common_pb2.HeldData(chunks=9, bytes=55 << 20, packets=38000))])))
        st = wait_status(cli, cid, lambda s: s.pods[0].held.packets == 38000)
        assert st.pods[0].agent == "connected" and not st.pods[0].final
        with caplog.at_level(logging.WARNING, logger="podcap.collector"):
            agent.cancel()
            st = wait_status(cli, cid, lambda s: s.pods[0].agent.startswith("disconnected"))
        p = st.pods[0]
        assert (p.held.chunks, p.held.bytes, p.held.packets) == (9, 55 << 20, 38000) and not p.final
        assert p.state == common_pb2.POD_CAPTURE_STATE_NO_AGENT and "the call was cancelled" in p.agent
        assert f"agent of node {NODE}: disconnected" in accounting_caption(st)
        log_line = next(r.getMessage() for r in caplog.records if "disconnected (session" in r.getMessage())
        assert "the call was cancelled" in log_line and "stay known for 30 s, captures wait for it" in log_line
        # The capture ends without the agent: what it held is lost with it, and nothing claims otherwise.
        st = cli.stop(cid)
        st = wait_status(cli, cid, lambda s: s.state == control_pb2.CAPTURE_STATE_DONE)
        p = st.pods[0]
        assert not p.final and p.drops.lost_with_agent == 38000 and p.unaccounted == 0
        caption = accounting_caption(st)
        assert caption.startswith(f"1 pod(s) on node {NODE} never sent their final counters: their losses after "
                                  "the last report (lost with the agent: 38000) are estimates")
        assert "all " not in caption.splitlines()[0]


def test_a_start_for_a_node_whose_agent_just_disconnected_is_sent_when_it_registers_again(
        served: tuple[Collector, str]) -> None:
    collector, address = served
    first = FakeAgent(address)
    assert first.registration.WhichOneof("kind") == "registered"
    first.cancel()
    deadline = time.monotonic() + 10
    while collector.registry.get(NODE) is not None:  # (the collector has seen the session end)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with CollectorClient(address) as cli:
        # Before issue 21's fix: "namespace 'bk' has no pods on any connected node".
        cid = cli.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="bk"))).id
        st = cli.get(cid)
        assert [p.state for p in st.pods] == [common_pb2.POD_CAPTURE_STATE_PENDING] * 2
        assert all(p.agent.startswith("disconnected") for p in st.pods)
        again = FakeAgent(address)
        try:
            got = {again.expect(is_start(cid)).start.pod.name for _ in range(2)}
            assert got == {"bulk-0", "bulk-1"}
            assert wait_status(cli, cid, lambda s: all(p.agent == "connected" for p in s.pods))
        finally:
            again.close()


def test_a_node_whose_agent_does_not_come_back_ends_as_before(served: tuple[Collector, str]) -> None:
    collector, address = served
    collector.registry.absence_grace_s = 1.0
    first = FakeAgent(address)
    assert first.registration.WhichOneof("kind") == "registered"
    first.cancel()
    with CollectorClient(address) as cli:
        deadline = time.monotonic() + 10
        while True:
            try:
                cid = cli.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="bk"))).id
                break
            except CollectorError:  # (the session's end not seen yet: the agent is still registered)
                assert time.monotonic() < deadline
                time.sleep(0.02)
        st = wait_status(cli, cid, lambda s: all(p.state == common_pb2.POD_CAPTURE_STATE_NO_AGENT for p in s.pods))
        assert "did not come back" in st.pods[0].message
        with pytest.raises(CollectorError, match="has no pods"):
            cli.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="bk")))


def test_a_second_collector_on_a_port_in_use_refuses_to_start(collector: tuple[str, str, Proc], tmp_path: str) -> None:
    address, _, first = collector

    def second(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tool("podcap-collector"), "--insecure", "--data-dir", os.path.join(tmp_path, "d2"),
                               *args], capture_output=True, text=True, timeout=60)

    r = second("--listen", address)
    assert r.returncode != 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"podcap-collector: cannot listen on {address}: address already in use"
    assert "Traceback" not in r.stderr and "Failed to add port" not in r.stderr
    with socket.socket() as busy:  # the metrics listener is exclusive too
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        metrics = f"127.0.0.1:{busy.getsockname()[1]}"
        r = second("--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", metrics)
    assert r.returncode != 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"podcap-collector: cannot listen on {metrics}: address already in use"
    assert first.proc.poll() is None
    podcap(address, "list")  # the first one still serves
