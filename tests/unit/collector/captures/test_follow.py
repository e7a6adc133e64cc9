"""A follower's buffer is bounded: a slow reader loses packets from its own view (reported as a gap), and
offering never blocks the capture."""

from __future__ import annotations

import time

from podcap.collector.captures.follow import Subscription
from podcap.v1 import common_pb2

POD = common_pb2.Pod(namespace="ns", name="web", uid="u1", node="n")
FMT = common_pb2.PcapFormat(linktype=1, snaplen=65535, nanosecond=True)


def kinds(sub: Subscription) -> list[str]:
    return [m.WhichOneof("kind") + (f":{m.gap.packets}" if m.WhichOneof("kind") == "gap" else "")
            for m in sub.messages()]


def test_slow_reader_gets_a_gap_and_offer_never_blocks() -> None:
    sub = Subscription("c", [], max_bytes=1000)
    t0 = time.monotonic()
    for _ in range(50):  # nobody reads: 50 x 400 bytes into a 1000-byte buffer
        sub.offer(POD, FMT, b"x" * 400, packets=4)
    assert time.monotonic() - t0 < 0.5
    sub.end(None)
    # two chunks fit, 48 chunks (192 packets) were missed and are reported before the stream ends
    assert kinds(sub) == ["pod", "records", "records", "gap:192"]


def test_gap_is_reported_before_the_next_records_once_the_reader_catches_up() -> None:
    sub = Subscription("c", ["ns/web"], max_bytes=500)
    sub.offer(POD, FMT, b"x" * 400, packets=1)
    sub.offer(POD, FMT, b"x" * 400, packets=3)  # does not fit: lost for this reader
    it = sub.messages()
    assert [next(it).WhichOneof("kind") for _ in range(2)] == ["pod", "records"]
    sub.offer(POD, FMT, b"x" * 400, packets=1)  # room again
    sub.end(None)
    assert [m.WhichOneof("kind") for m in it] == ["gap", "records"]


def test_selectors() -> None:
    assert Subscription("c", []).wants(POD)
    assert Subscription("c", ["web"]).wants(POD) and Subscription("c", ["u1"]).wants(POD)
    assert not Subscription("c", ["ns/other"]).wants(POD)
