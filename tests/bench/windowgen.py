"""Synthetic agent for the time-window phase (p4); runs as its own process, a gRPC client of ``podcap.v1.Ingest``.

usage: python -m tests.bench.windowgen --collector ADDR --node NODE --namespace NS --pods P --per-pod N
                                       --base-ns T --span S

It registers NODE with pods ``w0`` .. ``w<P-1>`` (namespace NS), prints ``REGISTERED`` and waits for the
collector's StartPodCapture commands (the benchmark starts the capture through the Control API). Then, as an agent
does, it announces each pod's stream (PodCaptureEvent CAPTURING with the record format) and sends PcapChunk
messages of whole pcap records, ~4 MiB each, pods in turn, at most ``WINDOW`` unacknowledged chunks per pod, until
every chunk is acknowledged (``INGESTED {json}``). On the collector's StopPodCapture it reports every pod DONE
(``STOPPED``) and ends its session.

The records are 1500-byte Ethernet/IPv4/UDP frames whose timestamps follow ``Schedule``: pod p's record i at
``base + i*step + p*step/(2P) + jitter(i)`` (jitter < step/2, so every pod's timestamps strictly increase), i.e.
all pods advance together over ``span`` seconds of packet time. The UDP payload starts with (pod, i), so a reader
can check exactly which records a window returned (``Schedule.expected`` / ``verify_pcap``).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import queue
import struct
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from podcap.formats.pcap import FILE_HEADER_LEN, RECORD_HEADER_LEN, parse_file_header
from podcap.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc

FRAME_LEN = 1500
RECORD_LEN = RECORD_HEADER_LEN + FRAME_LEN
RECORDS_PER_CHUNK = (4 << 20) // RECORD_LEN
CHUNK_BYTES = RECORDS_PER_CHUNK * RECORD_LEN
STAMP_OFF = RECORD_HEADER_LEN + 14 + 20 + 8  # (pod, index) at the start of the UDP payload
STAMP = struct.Struct("<IQ")
TS = struct.Struct("<II")
WINDOW = 4  # unacknowledged chunks per pod
SNAPLEN = 262144


@dataclass(frozen=True)
class Schedule:
    """Where every generated record sits in packet time."""

    base_ns: int
    span_s: float
    pods: int
    per_pod: int  # records per pod (a whole number of chunks)

    @property
    def step_ns(self) -> int:
        return max(4, int(self.span_s * 1e9) // self.per_pod)

    def ts(self, pod: int, i: int) -> int:
        step = self.step_ns
        return self.base_ns + i * step + pod * step // (2 * self.pods) + (i * 2654435761) % (step // 2)

    def expected(self, pod: int, since_ns: int, until_ns: int) -> tuple[int, int]:
        """(first index, count) of pod's records with since <= ts <= until."""
        lo = bisect.bisect_left(range(self.per_pod), since_ns, key=lambda i: self.ts(pod, i))
        hi = bisect.bisect_right(range(self.per_pod), until_ns, key=lambda i: self.ts(pod, i))
        return lo, max(0, hi - lo)

    def args(self) -> list[str]:
        return ["--base-ns", str(self.base_ns), "--span", repr(self.span_s), "--pods", str(self.pods),
                "--per-pod", str(self.per_pod)]


def pod_name(p: int) -> str:
    return f"w{p}"


def _checksum(hdr: bytes) -> int:
    s: int = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def frame_template(pod: int) -> bytes:
    """One 1500-byte UDP frame from the pod (10.98.<pod>.2:4000+pod -> 10.98.255.1:9), stamp zeroed."""
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, FRAME_LEN - 14, 0, 0x4000, 64, 17, 0,
                               bytes([10, 98, pod & 0xFF, 2]), bytes([10, 98, 255, 1])))
    struct.pack_into("!H", ip, 10, _checksum(bytes(ip)))
    udp = struct.pack("!HHHH", 4000 + pod, 9, FRAME_LEN - 14 - 20, 0)
    eth = bytes.fromhex("029800000002") + bytes([2, 0x98, 0, 0, 1, pod & 0xFF]) + b"\x08\x00"
    frame = eth + bytes(ip) + udp
    return frame + b"B" * (FRAME_LEN - len(frame))


class ChunkBuilder:
    """Chunks of one pod: a record template filled in place (timestamps and stamps only)."""

    def __init__(self, sched: Schedule, pod: int) -> None:
        self.sched = sched
        self.pod = pod
        rec = struct.pack("<IIII", 0, 0, FRAME_LEN, FRAME_LEN) + frame_template(pod)
        self.buf = bytearray(rec * RECORDS_PER_CHUNK)

    def chunk(self, k: int) -> tuple[bytes, int, int]:
        """Records of chunk k (0-based) with the first and last timestamps."""
        buf, ts, pod = self.buf, self.sched.ts, self.pod
        pack_ts, pack_stamp = TS.pack_into, STAMP.pack_into
        first_i = k * RECORDS_PER_CHUNK
        off = 0
        t = 0
        for i in range(first_i, first_i + RECORDS_PER_CHUNK):
            t = ts(pod, i)
            pack_ts(buf, off, t // 1_000_000_000, t % 1_000_000_000)
            pack_stamp(buf, off + STAMP_OFF, pod, i)
            off += RECORD_LEN
        return bytes(buf), ts(pod, first_i), t


@dataclass
class Verified:
    records: int
    first_index: int
    bytes: int


def verify_pcap(path: str, sched: Schedule, pod: int, since_ns: int, until_ns: int) -> Verified:
    """Parse a downloaded pcap file: every record is the pod's, inside the window, and together they are exactly the
    records generated for that pod in the window (contiguous indices, expected count). Raises ValueError."""
    first, count = sched.expected(pod, since_ns, until_ns)
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < FILE_HEADER_LEN:
        raise ValueError(f"{path}: {len(data)} bytes, no pcap file header")
    fmt = parse_file_header(data[:FILE_HEADER_LEN])
    if not fmt.nanosecond:
        raise ValueError(f"{path}: microsecond timestamps, expected nanosecond")
    off, n = FILE_HEADER_LEN, 0
    while off < len(data):
        if off + RECORD_HEADER_LEN > len(data):
            raise ValueError(f"{path}: truncated record header at {off}")
        sec, frac, incl, _orig = struct.unpack_from("<IIII", data, off)
        if incl != FRAME_LEN or off + RECORD_HEADER_LEN + incl > len(data):
            raise ValueError(f"{path}: record at {off} has caplen {incl}")
        t = sec * 1_000_000_000 + frac
        p, i = STAMP.unpack_from(data, off + STAMP_OFF)
        if p != pod:
            raise ValueError(f"{path}: record {n} is pod {p}'s, not pod {pod}'s")
        if i != first + n:
            raise ValueError(f"{path}: record {n} is #{i}, expected #{first + n}")
        if t != sched.ts(pod, i) or not since_ns <= t <= until_ns:
            raise ValueError(f"{path}: record #{i} has timestamp {t}, outside the window or not as generated")
        off += RECORD_HEADER_LEN + incl
        n += 1
    if n != count:
        raise ValueError(f"{path}: {n} records, expected {count} (#{first}..#{first + count - 1})")
    return Verified(records=n, first_index=first, bytes=len(data))


# ---------------------------------------------------------------------------------------------------------------
# The agent


def say(msg: str) -> None:
    print(msg, flush=True)


class Agent:
    def __init__(self, address: str, node: str, namespace: str, sched: Schedule) -> None:
        self.sched = sched
        self.node = node
        self.pods = [common_pb2.Pod(namespace=namespace, name=pod_name(p), uid=str(uuid.uuid4()), node=node)
                     for p in range(sched.pods)]
        self.index = {pod.uid: p for p, pod in enumerate(self.pods)}
        self.out: queue.Queue[ingest_pb2.AgentMessage | None] = queue.Queue()
        self.cond = threading.Condition()
        self.started: dict[str, str] = {}  # uid -> capture id
        self.acked = [0] * sched.pods
        self.stopped = False
        self.error = ""
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 32 << 20),
                                                               ("grpc.max_receive_message_length", 32 << 20)])
        self.stub = ingest_pb2_grpc.IngestStub(self.channel)

    def _requests(self) -> Iterator[ingest_pb2.AgentMessage]:
        while True:
            m = self.out.get()
            if m is None:
                return
            yield m

    def _read(self, replies: Iterator[ingest_pb2.CollectorMessage]) -> None:
        try:
            for r in replies:
                kind = r.WhichOneof("kind")
                with self.cond:
                    if kind == "registered":
                        say("REGISTERED")
                    elif kind == "start":
                        self.started[r.start.pod.uid] = r.start.capture_id
                    elif kind == "stop":
                        self.stopped = True
                    elif kind in ("ack", "acks"):
                        for ack in [r.ack] if kind == "ack" else list(r.acks.acks):
                            p = self.index.get(ack.pod_uid)
                            if ack.rejected:
                                self.error = f"chunk {ack.seq} of pod {p} rejected: {ack.reason}"
                            elif p is not None:
                                self.acked[p] = max(self.acked[p], ack.seq)
                    self.cond.notify_all()
        except grpc.RpcError as e:
            with self.cond:
                if not self.stopped:
                    self.error = f"session ended: {e}"
                self.cond.notify_all()

    def _heartbeats(self) -> None:
        while True:
            time.sleep(2.0)
            self.out.put(ingest_pb2.AgentMessage(heartbeat=ingest_pb2.Heartbeat(sent_unix_ns=time.time_ns())))

    def _wait(self, pred: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():  # type: ignore[operator]
                if self.error:
                    raise RuntimeError(self.error)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"timed out waiting for {what}")
                self.cond.wait(left)
            if self.error:
                raise RuntimeError(self.error)

    def run(self, start_timeout: float) -> None:
        self.out.put(ingest_pb2.AgentMessage(register=ingest_pb2.Register(
            node=self.node, instance_id=uuid.uuid4().hex, version="bench-windowgen", pods=self.pods,
            pod_source="synthetic")))
        replies = self.stub.Attach(self._requests())
        threading.Thread(target=self._read, args=(replies,), daemon=True).start()
        threading.Thread(target=self._heartbeats, daemon=True).start()
        self._wait(lambda: len(self.started) == len(self.pods), start_timeout, "StartPodCapture for every pod")
        cid = self.started[self.pods[0].uid]
        say(f"STARTED {cid}")
        fmt = common_pb2.PcapFormat(linktype=1, snaplen=SNAPLEN, nanosecond=True)
        for pod in self.pods:
            self.out.put(ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
                capture_id=cid, pod_uid=pod.uid, stream_id=f"s-{pod.uid[:8]}",
                state=common_pb2.POD_CAPTURE_STATE_CAPTURING, format=fmt, interface="eth0")))
        builders = [ChunkBuilder(self.sched, p) for p in range(self.sched.pods)]
        chunks = self.sched.per_pod // RECORDS_PER_CHUNK
        t0 = time.monotonic()
        for k in range(chunks):
            for p, pod in enumerate(self.pods):
                seq = k + 1
                self._wait(lambda p=p, seq=seq: seq - self.acked[p] <= WINDOW, 300, f"acks of pod {p}")
                data, first, last = builders[p].chunk(k)
                self.out.put(ingest_pb2.AgentMessage(chunk=ingest_pb2.PcapChunk(
                    capture_id=cid, pod_uid=pod.uid, stream_id=f"s-{pod.uid[:8]}", seq=seq, records=data,
                    packets=RECORDS_PER_CHUNK, first_ts_ns=first, last_ts_ns=last)))
        self._wait(lambda: all(a >= chunks for a in self.acked), 300, "the last acks")
        el = time.monotonic() - t0
        total = chunks * CHUNK_BYTES * self.sched.pods
        say("INGESTED " + json.dumps({"chunks": chunks * self.sched.pods, "records": self.sched.per_pod
                                      * self.sched.pods, "record_bytes": total, "seconds": round(el, 2),
                                      "mb_per_s": round(total / el / 1e6, 1)}))
        self._wait(lambda: self.stopped, 600, "StopPodCapture")
        for pod in self.pods:
            self.out.put(ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
                capture_id=cid, pod_uid=pod.uid, stream_id=f"s-{pod.uid[:8]}",
                state=common_pb2.POD_CAPTURE_STATE_DONE, message="capture stopped", last_seq=chunks,
                kernel=common_pb2.KernelStats(received=self.sched.per_pod))))
        time.sleep(1.0)
        say("STOPPED")
        self.out.put(None)
        self.channel.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--collector", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--pods", type=int, required=True)
    ap.add_argument("--per-pod", type=int, required=True, help="records per pod (a multiple of RECORDS_PER_CHUNK)")
    ap.add_argument("--base-ns", type=int, required=True)
    ap.add_argument("--span", type=float, required=True, help="seconds of packet time")
    ap.add_argument("--start-timeout", type=float, default=60.0)
    a = ap.parse_args()
    sched = Schedule(base_ns=a.base_ns, span_s=a.span, pods=a.pods, per_pod=a.per_pod)
    try:
        Agent(a.collector, a.node, a.namespace, sched).run(a.start_timeout)
    except Exception as e:
        say(f"FAILED {type(e).__name__}: {e}")
        sys.stdout.flush()
        os._exit(1)
    os._exit(0)  # no waiting for gRPC's threads


if __name__ == "__main__":
    main()
