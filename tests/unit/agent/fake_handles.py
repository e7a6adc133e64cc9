"""A capture handle without libpcap, for unit tests of the capture engine and the agent session.

``FakeHandle`` implements ``podcap.agent.capture.interfaces.CaptureHandle``: the test makes packets arrive, the
engine's epoll sees its fd readable, ``dispatch`` moves them into a Python record sink as pcap records, and
``stats`` reports kernel counters the way libpcap does (cumulative). Packets can also arrive *unreadable* — queued
and counted by the kernel but stuck in a ring block that has not retired — and be released later (``release``), or
never (the interface vanished). After ``freeze`` nothing more arrives or is counted, as with the real handle.

Each packet's payload starts with its number (big-endian, from 1 per handle), so a test can check that every packet
was stored once and in order.
"""

from __future__ import annotations

import os
import struct
import threading

from podcap.agent.capture.libpcap import HandleOptions, KernelCounters, PcapError
from podcap.agent.upload.encoded import EncodedChunk
from podcap.formats.pcap import FileFormat, first_timestamp_ns
from podcap.v1 import ingest_pb2

PAYLOAD = 60
RECORD = 16 + PAYLOAD


def packet_numbers(records: bytes) -> list[int]:
    """The numbers of the packets in a chunk's records."""
    out = []
    pos = 0
    while pos < len(records):
        _sec, _frac, caplen, _len = struct.unpack_from("<IIII", records, pos)
        out.append(int.from_bytes(records[pos + 16 : pos + 20], "big"))
        pos += 16 + caplen
    return out


class FakeRecordSink:
    """``RecordSink`` in Python: records appended by ``FakeHandle.dispatch``, cut by bytes as ``chunks.c`` does
    (a record that would take the open chunk past the limit closes it first)."""

    callback = 0
    user = 0
    splits = True

    def __init__(self) -> None:
        self.closed: list[tuple[bytes, int]] = []  # chunks closed at the limit: (records, count)
        self.records = bytearray()  # the open chunk
        self.count = 0
        self.limit = 0

    def append(self, record: bytes) -> None:
        if self.limit and self.count and len(self.records) + len(record) > self.limit:
            self.closed.append((bytes(self.records), self.count))
            self.records.clear()
            self.count = 0
        self.records += record
        self.count += 1

    def set_limit(self, limit: int) -> None:
        self.limit = limit

    def pending(self) -> int:
        return len(self.records) + sum(len(r) for r, _ in self.closed)

    def ready(self) -> int:
        return len(self.closed)

    def packets(self, dispatched: int) -> int:
        return self.closed[0][1] if self.closed else self.count

    def packets_left(self) -> int:
        return self.count + sum(n for _, n in self.closed)

    def first_ts_ns(self, fmt: FileFormat) -> int:
        head = self.closed[0][0] if self.closed else bytes(self.records)
        return first_timestamp_ns(head[:16], fmt) if len(head) >= 16 else 0

    def cut(self, meta: ingest_pb2.PcapChunk) -> EncodedChunk:
        if self.closed:
            records, _ = self.closed.pop(0)
            return EncodedChunk.build(meta, records)
        chunk = EncodedChunk.build(meta, bytes(self.records))
        self.records.clear()
        self.count = 0
        return chunk

    def reset(self) -> None:
        self.closed.clear()
        self.records.clear()
        self.count = 0

    def lost(self) -> int:
        return 0

    def close(self) -> None:
        pass


class FakeHandle:
    def __init__(self, opts: HandleOptions) -> None:
        self.opts = opts
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self.linktype = 1
        self.snaplen = opts.snaplen
        self.nanosecond = True
        self.sink: FakeRecordSink | None = FakeRecordSink()
        self.trigger = None  # no packet trigger in the fake (tests/integration covers the C one)
        self.trigger_error = ""
        self._ring: list[int] = []  # readable packets (their numbers)
        self._stuck: list[int] = []  # queued, not readable yet
        self._next = 1
        self.received = 0
        self.dropped = 0
        self.frozen = False
        self.closed = False

    @property
    def fd(self) -> int:
        return self._r

    # ---- the test's side ----

    def arrive(self, n: int, *, readable: bool = True) -> None:
        """``n`` packets reach the handle (ignored once frozen, as the kernel's filter rejects them)."""
        with self._lock:
            if self.frozen:
                return
            numbers = list(range(self._next, self._next + n))
            self._next += n
            self.received += n
            (self._ring if readable else self._stuck).extend(numbers)
            if readable and n:
                os.write(self._w, b"x")

    def drop(self, n: int) -> None:
        """``n`` packets the kernel dropped (ring full): received and dropped, never readable."""
        with self._lock:
            if not self.frozen:
                self.received += n
                self.dropped += n

    def release(self) -> None:
        """The stuck packets become readable (their ring block retired)."""
        with self._lock:
            self._ring.extend(self._stuck)
            self._stuck.clear()
            os.write(self._w, b"x")

    # ---- CaptureHandle ----

    def dispatch(self, max_packets: int = -1) -> int:
        if self.closed or self.sink is None:
            raise PcapError("handle closed")
        with self._lock:
            take = len(self._ring) if max_packets < 0 else min(max_packets, len(self._ring))
            numbers, self._ring = self._ring[:take], self._ring[take:]
            if not self._ring:
                try:
                    while os.read(self._r, 4096):
                        pass
                except BlockingIOError:
                    pass
        for number in numbers:
            self.sink.append(struct.pack("<IIII", 1700000000, number, PAYLOAD, PAYLOAD)
                             + number.to_bytes(4, "big") + bytes(PAYLOAD - 4))
        return len(numbers)

    def freeze(self) -> None:
        with self._lock:
            self.frozen = True

    def stats(self) -> KernelCounters | None:
        with self._lock:
            return KernelCounters(self.received & 0xFFFFFFFF, self.dropped & 0xFFFFFFFF, 0)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sink = None
            os.close(self._r)
            os.close(self._w)


class FakeHandles:
    """A ``HandleFactory`` that remembers what it opened, by device."""

    def __init__(self) -> None:
        self.opened: dict[str, FakeHandle] = {}
        self._cond = threading.Condition()

    def __call__(self, opts: HandleOptions) -> FakeHandle:
        handle = FakeHandle(opts)
        with self._cond:
            self.opened[opts.device] = handle
            self._cond.notify_all()
        return handle

    def wait(self, device: str, timeout: float = 5.0) -> FakeHandle:
        with self._cond:
            if not self._cond.wait_for(lambda: device in self.opened, timeout):
                raise AssertionError(f"no handle opened on {device} within {timeout}s")
            return self.opened[device]
