"""One pod's streams as the collector knows them: their place in the chunk sequence, and where every packet went.

A stream is one opening of a pod's capture handle on its node (``PcapChunk.stream_id``). A pod has one stream at a
time, but the collector may hear of several: a pod re-attached after its sandbox restarted, an agent that came back
(re-sending an older stream's unacknowledged chunks behind the new one's), so each stream keeps its own sequence
position (written, acknowledged) and its own accounting, and the pod's counters are the sums over its streams.

Per stream, every packet the kernel delivered is explained (``StreamState.drops``):

- the agent's last report: the kernel's counters, ``delivered`` (read from the ring), and the causes only the node
  knows (``unread``, and ``past_limit`` for packets read after the stream's own packet limit);
- in-band gaps the chunks carry (``buffer_full``, ``out_of_memory``, ``spool_error``), counted as they arrive, so
  the stored files and the counters agree at every point of the stream;
- the collector's own causes (``rejected``, ``past_limit``, ``late``);
- ``lost_with_agent`` for a stream that will never report again without having sent its final report (its agent
  was killed): what its last report said the kernel had queued for it (read, or still in the ring), minus what
  arrived. Its ``received`` is then at least what
  is accounted for, since the kernel's count after that report died with the agent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from podcap.collector.agents import AgentConnection
from podcap.drops import CAUSES, Drops
from podcap.v1 import common_pb2


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
    abandoned: bool = False  # it will never report again (its agent is gone for good, or the capture ended)
    # Counted here: gaps carried in-band by its chunks, and the collector's own causes.
    inband: Drops = field(default_factory=Drops)
    local: Drops = field(default_factory=Drops)
    stored: int = 0  # packets written to the pod's files (retention does not lower it)
    last_ts_ns: int = 0  # end of the last chunk handled (where the next in-band gap begins)

    def drops(self) -> Drops:
        d = Drops(unread=self.reported.unread, past_limit=self.reported.past_limit)
        d.add(self.inband).add(self.local)
        if self.abandoned and not self.final:
            # What the kernel had queued for the agent (read or still in the ring) by its last report.
            d.lost_with_agent = max(0, self.kernel[0] - self.kernel[1] - self.stored - d.total())
        return d

    def received(self) -> int:
        """The kernel's count of packets delivered for the stream (see the module docstring for a stream whose
        agent died before its final report)."""
        if self.abandoned and not self.final:
            return max(self.kernel[0], self.kernel[1] + self.stored + self.drops().total())
        return self.kernel[0]

    def counters_json(self) -> str:
        """What is persisted besides the sequence position (``from_json`` reads it back)."""
        return json.dumps({
            "kernel": list(self.kernel), "delivered": self.delivered, "reported": self.reported.nonzero(),
            "final": self.final, "abandoned": self.abandoned, "inband": self.inband.nonzero(),
            "local": self.local.nonzero(), "stored": self.stored,
        }, separators=(",", ":"))

    def load_counters(self, text: str) -> None:
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


def _drops(d: dict[str, int]) -> Drops:
    return Drops(**{c: int(v) for c, v in d.items() if c in CAUSES})


@dataclass(frozen=True)
class PodCounts:
    """A pod's counters summed over its streams."""

    received: int
    dropped: int
    if_dropped: int
    drops: Drops


def pod_counts(streams: list[StreamState], orphan: Drops) -> PodCounts:
    """Sums over a pod's streams; ``orphan`` counts chunks the pod got of streams the collector never saw."""
    drops = orphan.copy()
    received = dropped = if_dropped = 0
    for st in streams:
        drops.add(st.drops())
        received += st.received()
        dropped += st.kernel[1]
        if_dropped += st.kernel[2]
    received += orphan.total()
    return PodCounts(received, dropped, if_dropped, drops)
