"""A fake agent with rings, speaking the real Ingest protocol (generated stubs, real gRPC on loopback), for the
collector's half of the flight recorder (issue 24) while the agent's half is built elsewhere.

Each pod "captures" sequence-numbered UDP-like records at a steady rate into an in-memory ring (timestamps are the
wall clock in nanoseconds); the agent answers ``StartPodRecording`` by recording, reports every ring with each
heartbeat, and answers ``SavePodWindow`` as the contract says: once the window has passed it sends
``PodCaptureEvent(started)`` for (save capture, pod) with stream id ``save-<capture>-<pod uid>``, the window's
records as chunks, and a terminal ``DONE`` whose accounting covers the window (received == stored).
``fire_packets`` sends a ``PacketTriggerFired``. Everything it was asked is kept in ``starts``, ``saves`` and
``stops`` for assertions.
"""

from __future__ import annotations

import queue
import struct
import threading
import time
from collections.abc import Iterator

import grpc

from podcap.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc

FMT = common_pb2.PcapFormat(linktype=1, snaplen=262144, nanosecond=True)


def record(seq: int, ts_ns: int) -> bytes:
    """A 64-byte Ethernet-sized record whose payload starts with its sequence number (big-endian u32)."""
    data = seq.to_bytes(4, "big") * 16
    sec, nsec = divmod(ts_ns, 1_000_000_000)
    return struct.pack("<IIII", sec, nsec, len(data), len(data)) + data


class Ring:
    def __init__(self) -> None:
        self.records: list[tuple[int, int]] = []  # (ts_ns, seq)
        self.lock = threading.Lock()


class RingAgent:
    def __init__(self, address: str, node: str, pods: list[common_pb2.Pod], *, rate_pps: int = 200,
                 heartbeat_s: float = 0.3) -> None:
        self.node = node
        self.pods = {p.uid: p for p in pods}
        self.rings: dict[tuple[str, str], Ring] = {}
        self.starts: list[ingest_pb2.StartPodRecording] = []
        self.saves: list[ingest_pb2.SavePodWindow] = []
        self.stops: list[ingest_pb2.StopPodRecording] = []
        self.rate_pps = rate_pps
        self.heartbeat_s = heartbeat_s
        self._seq = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.address = address
        self.channel = grpc.insecure_channel(address)
        self._out: queue.Queue[ingest_pb2.AgentMessage | None] = queue.Queue()
        self.registered = threading.Event()
        self.send(ingest_pb2.AgentMessage(register=ingest_pb2.Register(
            node=node, instance_id="ring-fake", version="t", pods=pods, pod_source="netns")))
        self.call = ingest_pb2_grpc.IngestStub(self.channel).Attach(self._requests(), timeout=300)
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._read, self._capture, self._beat)]
        for t in self._threads:
            t.start()
        assert self.registered.wait(15), "no Registered from the collector"

    def send(self, msg: ingest_pb2.AgentMessage) -> None:
        self._out.put(msg)

    def _requests(self) -> Iterator[ingest_pb2.AgentMessage]:
        while (msg := self._out.get()) is not None:
            yield msg

    def _read(self) -> None:
        try:
            for m in self.call:
                kind = m.WhichOneof("kind")
                if kind == "registered":
                    self.registered.set()
                elif kind == "start_recording":
                    with self._lock:
                        self.starts.append(m.start_recording)
                        self.rings.setdefault((m.start_recording.recorder_id, m.start_recording.pod.uid), Ring())
                elif kind == "stop_recording":
                    with self._lock:
                        self.stops.append(m.stop_recording)
                elif kind == "start":  # an ordinary capture: started, nothing captured (not what this fake is for)
                    self.send(ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
                        capture_id=m.start.capture_id, pod_uid=m.start.pod.uid, stream_id="c-" + m.start.pod.uid,
                        started=True, state=common_pb2.POD_CAPTURE_STATE_CAPTURING, format=FMT)))
                elif kind == "stop":
                    for uid in [m.stop.pod_uid] if m.stop.pod_uid else list(self.pods):
                        self.send(ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
                            capture_id=m.stop.capture_id, pod_uid=uid, stream_id="c-" + uid,
                            state=common_pb2.POD_CAPTURE_STATE_DONE, kernel=common_pb2.KernelStats())))
                elif kind == "save":
                    with self._lock:
                        self.saves.append(m.save)
                    threading.Thread(target=self._save, args=(m.save,), daemon=True).start()
        except grpc.RpcError:
            pass

    def _capture(self) -> None:
        """Every pod of every ring gets records at ``rate_pps``, each with the next sequence number."""
        period = 1.0 / self.rate_pps
        while not self._stop.wait(period):
            now = time.time_ns()
            with self._lock:
                rings = list(self.rings.values())
            for ring in rings:
                with ring.lock:
                    self._seq += 1
                    ring.records.append((now, self._seq))

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.send(ingest_pb2.AgentMessage(heartbeat=ingest_pb2.Heartbeat(rings=self.ring_status())))

    def ring_status(self) -> list[ingest_pb2.RingStatus]:
        out = []
        with self._lock:
            items = list(self.rings.items())
        for (rid, uid), ring in items:
            with ring.lock:
                n = len(ring.records)
                oldest = ring.records[0][0] if n else 0
                newest = ring.records[-1][0] if n else 0
            out.append(ingest_pb2.RingStatus(
                recorder_id=rid, pod_uid=uid, state=ingest_pb2.RING_STATE_RECORDING, bytes=n * 80, packets=n,
                oldest_unix_ns=oldest, newest_unix_ns=newest, kernel=common_pb2.KernelStats(received=n), written=n,
                limit_bytes=1 << 20))
        return out

    def _save(self, s: ingest_pb2.SavePodWindow) -> None:
        ring = self.rings.get((s.recorder_id, s.pod_uid))
        stream = f"save-{s.capture_id}-{s.pod_uid}"
        if ring is None:
            self.send(ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
                capture_id=s.capture_id, pod_uid=s.pod_uid, stream_id=stream,
                state=common_pb2.POD_CAPTURE_STATE_FAILED,
                message=f"no ring of recorder {s.recorder_id} for pod {s.pod_uid} on node {self.node}")))
            return
        while time.time_ns() < s.to_unix_ns + 200_000_000 and not self._stop.is_set():
            time.sleep(0.05)
        self.send(ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
            capture_id=s.capture_id, pod_uid=s.pod_uid, stream_id=stream, started=True,
            state=common_pb2.POD_CAPTURE_STATE_CAPTURING, format=FMT, interface="veth-fake")))
        with ring.lock:
            window = [(ts, seq) for ts, seq in ring.records if s.from_unix_ns <= ts < s.to_unix_ns]
        seq = 0
        for i in range(0, len(window), 100):
            part = window[i:i + 100]
            seq += 1
            self.send(ingest_pb2.AgentMessage(chunk=ingest_pb2.PcapChunk(
                capture_id=s.capture_id, pod_uid=s.pod_uid, stream_id=stream, seq=seq,
                records=b"".join(record(q, ts) for ts, q in part), packets=len(part),
                first_ts_ns=part[0][0], last_ts_ns=part[-1][0])))
        n = len(window)
        self.send(ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
            capture_id=s.capture_id, pod_uid=s.pod_uid, stream_id=stream, state=common_pb2.POD_CAPTURE_STATE_DONE,
            last_seq=seq, kernel=common_pb2.KernelStats(received=n), delivered=n, drops=common_pb2.PodcapDrops())))

    def reconnect(self) -> None:
        """The session dies (as on a network blip or an agent restart) and a new one registers, the rings kept."""
        self.call.cancel()
        self._out.put(None)
        self._threads[0].join(5)
        self.channel.close()
        self.registered.clear()
        self.channel = grpc.insecure_channel(self.address)
        self._out = queue.Queue()
        self.send(ingest_pb2.AgentMessage(register=ingest_pb2.Register(
            node=self.node, instance_id="ring-fake-2", version="t", pods=list(self.pods.values()),
            pod_source="netns", rings=self.ring_status())))
        self.call = ingest_pb2_grpc.IngestStub(self.channel).Attach(self._requests(), timeout=300)
        self._threads[0] = threading.Thread(target=self._read, daemon=True)
        self._threads[0].start()
        assert self.registered.wait(15), "no Registered from the collector"

    def disconnect(self) -> None:
        """The session ends and stays away until ``reconnect``."""
        self.call.cancel()

    def fire_packets(self, recorder_id: str, pod_uid: str, ts_ns: int, matches: int) -> None:
        self.send(ingest_pb2.AgentMessage(packet_trigger=ingest_pb2.PacketTriggerFired(
            recorder_id=recorder_id, pod_uid=pod_uid, fired_unix_ns=ts_ns, first_match_unix_ns=ts_ns,
            matches=matches, total_matches=matches)))

    def close(self) -> None:
        self._stop.set()
        self._out.put(None)
        for t in self._threads:
            t.join(5)
        self.channel.close()
