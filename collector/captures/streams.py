"""One pod's streams as the collector knows them: their place in the chunk sequence, and where every packet went.

A stream is one opening of a pod's capture handle on its node (``PcapChunk.stream_id``). A pod has one stream at a
time, but the collector may hear of several: a pod re-attached after its sandbox restarted, an agent that came back
(re-sending an older stream's unacknowledged chunks behind the new one's), so each stream keeps its own sequence
position (written, acknowledged) and its own accounting, and the pod's counters are the sums over its streams.

Per stream, every packet the kernel delivered is explained (``StreamState.drops``):

- the agent's last report: the kernel's counters, ``delivered`` (read from the ring), and the causes only the node
  knows (``unread``, and ``past_limit`` for packets read after the stream's own packet limit);
- in-band gaps the chunks carry (``buffer_full``, ``out_of_memory``, ``spool_error``, and ``rejected`` for a chunk
  the agent did not send because it was larger than the collector declared it takes), counted as they arrive, so
  the stored files and the counters agree at every point of the stream;
- the collector's own causes (``rejected`` for a chunk it refused — malformed, or over its message limit: the
  agent drops it and sends nothing in its place —, ``past_limit``, ``late``);
- ``lost_with_agent`` for a stream that will never report again without having sent its final report (its agent
  was killed, or was away when the capture ended): what its last report said the kernel had queued for it (read,
  or still in the ring), minus what arrived — and at least what the agent last said it held unacknowledged
  (``podcap.collector.captures.held``), which may be newer than its last counters. Its ``received`` is then at
  least what is accounted for, since the kernel's count after that report died with the agent.

A stream is ``complete`` once its final report came and every chunk that report announced (``final_seq``) was
written: then nothing of it is on its way, whatever the agent last said it held.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from podcap.collector.agents import AgentConnection
from podcap.collector.storage.catalog import StreamRow
from podcap.drops import CAUSES, Drops
from podcap.v1 import common_pb2


@dataclass(frozen=True)
class Held:
    """What an agent holds unacknowledged for a stream, as of its last report (``podcap.v1.HeldData``)."""

    chunks: int = 0
    bytes: int = 0
    packets: int = 0

    @classmethod
    def from_proto(cls, pb: common_pb2.HeldData) -> Held:
        return cls(pb.chunks, pb.bytes, pb.packets)

    def to_proto(self) -> common_pb2.HeldData:
        return common_pb2.HeldData(chunks=self.chunks, bytes=self.bytes, packets=self.packets)

    def __add__(self, other: Held) -> Held:
        return Held(self.chunks + other.chunks, self.bytes + other.bytes, self.packets + other.packets)

    def __bool__(self) -> bool:
        return bool(self.chunks or self.bytes or self.packets)


@dataclass
class StreamState:
    id: str
    fmt: common_pb2.PcapFormat
    # Order in which the collector first saw the pod's streams (the highest is the current one).
    ordinal: int
    last_seq: int = 0  # last chunk written
    committed_seq: int = 0  # last chunk durably recorded (acknowledged)
    ack_conn: AgentConnection | None = None  # owed an acknowledgement once committed
    # The agent's last report (cumulative for the stream).
    kernel: tuple[int, int, int] = (0, 0, 0)
    delivered: int = 0
    reported: Drops = field(default_factory=Drops)
    reported_ns: int = 0  # when that report came (wall clock; where the next report's losses begin)
    final: bool = False  # that report was the stream's last (it ended on its node)
    final_seq: int = 0  # the last chunk that final report announced
    abandoned: bool = False  # it will never report again (its agent is gone for good, or the capture ended)
    # Counted here: gaps carried in-band by its chunks, and the collector's own causes.
    inband: Drops = field(default_factory=Drops)
    local: Drops = field(default_factory=Drops)
    stored: int = 0  # packets written to the pod's files (retention does not lower it)
    last_ts_ns: int = 0  # end of the last chunk handled (where the next in-band gap begins)
    recorded: StreamRow | None = None  # its row as the catalog has it (a commit writes it only when it changed)

    @property
    def complete(self) -> bool:
        """Its final report came and every chunk it announced was written: nothing of it is on its way."""
        return self.final and self.last_seq >= self.final_seq

    @property
    def lost(self) -> bool:
        """It will never report again and never sent its final report: its end is estimated."""
        return self.abandoned and not self.final

    def drops(self, held: int = 0) -> Drops:
        """Every cause; ``held``: packets the agent last said it held for the stream (a floor of
        ``lost_with_agent`` once the stream is lost)."""
        d = Drops(unread=self.reported.unread, past_limit=self.reported.past_limit)
        d.add(self.inband).add(self.local)
        if self.lost:
            # What the kernel had queued for the agent (read or still in the ring) by its last report, and at
            # least what the agent held when it was last heard of.
            d.lost_with_agent = max(0, self.kernel[0] - self.kernel[1] - self.stored - d.total(), held)
        return d

    def received(self, held: int = 0) -> int:
        """The kernel's count of packets delivered for the stream (see the module docstring for a stream whose
        agent died before its final report)."""
        if self.lost:
            return max(self.kernel[0], self.kernel[1] + self.stored + self.drops(held).total())
        return self.kernel[0]

    def row(self, held: Held | None = None) -> StreamRow:
        """Its catalog row (with what the agent last said it held for it)."""
        return StreamRow(self.id, self.ordinal, self.fmt, self.last_seq, self.counters_json(held))

    def counters_json(self, held: Held | None = None) -> str:
        """What is persisted besides the sequence position (``load_counters`` reads it back), with what the agent
        last said it held for the stream."""
        d: dict[str, object] = {
            "kernel": list(self.kernel), "delivered": self.delivered, "reported": self.reported.nonzero(),
            "final": self.final, "abandoned": self.abandoned, "inband": self.inband.nonzero(),
            "local": self.local.nonzero(), "stored": self.stored,
        }
        if self.final_seq:
            d["final_seq"] = self.final_seq
        if held:
            d["held"] = [held.chunks, held.bytes, held.packets]
        return json.dumps(d, separators=(",", ":"))

    def load_counters(self, text: str) -> Held | None:
        """Read back ``counters_json``; returns the held data it recorded, if any."""
        d = json.loads(text or "{}")
        k = d.get("kernel", [0, 0, 0])
        self.kernel = (int(k[0]), int(k[1]), int(k[2]))
        self.delivered = int(d.get("delivered", 0))
        self.reported = _drops(d.get("reported", {}))
        self.final = bool(d.get("final", False))
        self.abandoned = bool(d.get("abandoned", False))
        self.inband = _drops(d.get("inband", {}))
        self.local = _drops(d.get("local", {}))
        self.stored = int(d.get("stored", 0))
        self.final_seq = int(d.get("final_seq", 0))
        h = d.get("held")
        return Held(int(h[0]), int(h[1]), int(h[2])) if h else None


def _drops(d: dict[str, int]) -> Drops:
    return Drops(**{c: int(v) for c, v in d.items() if c in CAUSES})


@dataclass(frozen=True)
class PodCounts:
    """A pod's counters summed over its streams."""

    received: int
    dropped: int
    if_dropped: int
    drops: Drops


def pod_counts(streams: list[StreamState], orphan: Drops, held: Mapping[str, Held] | None = None) -> PodCounts:
    """Sums over a pod's streams; ``orphan`` counts chunks the pod got of streams the collector never saw, ``held``
    is what the agent last said it held, by stream."""
    drops = orphan.copy()
    received = dropped = if_dropped = 0
    for st in streams:
        h = held.get(st.id) if held else None
        packets = h.packets if h is not None else 0
        drops.add(st.drops(packets))
        received += st.received(packets)
        dropped += st.kernel[1]
        if_dropped += st.kernel[2]
    received += orphan.total()
    return PodCounts(received, dropped, if_dropped, drops)
