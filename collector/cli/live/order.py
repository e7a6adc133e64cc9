"""Time order across pods in a live view (``podcap follow``, the Wireshark extcap), one copy per packet.

The collector's Follow stream carries a capture's packets as they are stored: a message holds records of one pod,
in that pod's order, and the pods' messages interleave in the order their chunks arrived — an agent sends a pod's
chunk when it is full or 2 s after its first packet, so one pod's packets can come before another's older ones
(the issue measured time going back 1.27 s). A live view holds each pod's records and writes them in time order:

- up to the *watermark*, the oldest "latest timestamp" of the pods (0 for a pod that delivered nothing yet, also one
  the capture has but the stream has not announced yet: a view started with its capture hears of the pods as they
  start streaming): every pod's own records come in order, so none of them can still deliver an earlier one;
- for a pod that went quiet (its latest timestamp holds the watermark back), whatever arrived ``HOLD_NS`` ago or
  earlier: longer than an agent keeps a chunk, so the other pods' packets of that time have arrived too. Arrival is
  the view's own monotonic clock: the clocks of the nodes and of this machine need not agree.

So a quiet view shows a packet at most ``HOLD_NS`` after it arrived, a busy one sooner, and memory is bounded
(``MAX_BUFFERED``: past it the oldest records go out at once, in order). With ``one_copy_ns`` a packet seen on a
second pod is written once (``podcap.collector.cli.dedup``), decided in that time order.

In C where the library is built (``pcapmerge.NativeLive``: no Python per packet), else ``PyLiveOrder``, its twin;
tests hold the two to the same bytes.
"""

from __future__ import annotations

import heapq
import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from podcap.collector.cli.dedup import OneCopy
from podcap.collector.cli.get import pcapmerge
from podcap.formats.pcap import FileFormat, iter_records
from podcap.formats.pcapng import epb

T = TypeVar("T")
_FOREVER = (1 << 64) - 1
HOLD_NS = 2_500_000_000
MAX_BUFFERED = 64 << 20


@dataclass
class _Input:
    iface: int
    fmt: FileFormat
    records: deque[tuple[int, int, bytes]] = field(default_factory=deque)  # (ts ns, wire length, data)
    segments: deque[list[int]] = field(default_factory=deque)  # [arrival, last ts, records left]
    last_ts: int = 0
    seen: bool = False
    retired: bool = False
    written: int = 0
    dropped: int = 0


class PyLiveOrder:
    """The live view's order without the C library: the same decisions, in Python."""

    def __init__(self, one_copy_ns: int) -> None:
        self._inputs: list[_Input] = []
        self._one = OneCopy(one_copy_ns) if one_copy_ns else None
        self.buffered = 0

    def close(self) -> None:
        pass

    def add(self, interface_id: int, fmt: FileFormat) -> int:
        self._inputs.append(_Input(interface_id, fmt))
        return len(self._inputs) - 1

    def push(self, index: int, records: bytes, arrival_ns: int) -> None:
        inp = self._inputs[index]
        taken = [(r.ts_ns, r.wirelen, r.data) for r in iter_records(records, inp.fmt)]  # checks every record first
        if not taken:
            return
        inp.records.extend(taken)
        inp.segments.append([arrival_ns, taken[-1][0], len(taken)])
        inp.last_ts, inp.seen = taken[-1][0], True
        self.buffered += len(records)

    def release(self, now_ns: int, hold_ns: int) -> int:
        if not self._inputs:
            return 0
        held = max((seg[1] for inp in self._inputs for seg in inp.segments if seg[0] + hold_ns <= now_ns), default=0)
        latest = [inp.last_ts if inp.seen else 0 for inp in self._inputs if not inp.retired]
        return max(min(latest, default=_FOREVER), held)

    def retire(self, index: int) -> None:
        self._inputs[index].retired = True

    def pop(self, until_ns: int) -> bytes:
        heap = [(inp.records[0][0], -i) for i, inp in enumerate(self._inputs)
                if inp.records and inp.records[0][0] <= until_ns]
        heapq.heapify(heap)  # earliest first; of equal timestamps the later input (as the merge)
        out: list[bytes] = []
        while heap:
            ts, neg = heapq.heappop(heap)
            inp = self._inputs[-neg]
            _, wirelen, data = inp.records.popleft()
            seg = inp.segments[0]
            seg[2] -= 1
            if not seg[2]:
                inp.segments.popleft()
            self.buffered -= 16 + len(data)
            if self._one is not None and self._one.drop(inp.fmt.linktype, data, wirelen, ts, inp.iface):
                inp.dropped += 1
            else:
                out.append(epb(inp.iface, ts // (1 if inp.fmt.nanosecond else 1000), data, wirelen))
                inp.written += 1
            if inp.records and inp.records[0][0] <= until_ns:
                heapq.heappush(heap, (inp.records[0][0], neg))
        return b"".join(out)

    def counts(self) -> tuple[list[int], list[int]]:
        return [inp.written for inp in self._inputs], [inp.dropped for inp in self._inputs]


LiveOrder = pcapmerge.NativeLive | PyLiveOrder


def live_order(one_copy_ns: int) -> LiveOrder:
    """The C live view when the library is built, else its Python twin."""
    return pcapmerge.NativeLive(one_copy_ns) if pcapmerge.one_copy_available() else PyLiveOrder(one_copy_ns)


TICK_S = 0.25  # how often a view that gets no messages looks at what it holds


def ticking(messages: Iterator[T], interval: float) -> Iterator[T | None]:
    """``messages`` with a ``None`` whenever ``interval`` seconds pass without one, so that a view can write what
    it held long enough while its stream is quiet. The messages are read in a thread of their own (a gRPC stream
    blocks); at most a few wait there, so the stream's flow control still holds the collector back. What reading
    raises is raised here."""
    q: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=64)

    def pump() -> None:
        try:
            for m in messages:
                q.put((0, m))
            q.put((1, None))
        except BaseException as e:  # handed to the reader, whatever it is
            q.put((2, e))

    threading.Thread(target=pump, name="follow-reader", daemon=True).start()
    while True:
        try:
            kind, item = q.get(timeout=interval)
        except queue.Empty:
            yield None
            continue
        if kind == 1:
            return
        if kind == 2:
            assert isinstance(item, BaseException)
            raise item
        yield item  # type: ignore[misc]
