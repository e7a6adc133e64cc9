"""Every cause for which podcap does not store a packet the kernel delivered, in one place.

The agent, the collector, ``status``, the metrics, ``gaps.tsv`` and the merged pcapng's interface statistics all
name drops with these causes (``podcap.v1.PodcapDrops`` on the wire), so the accounting that podcap promises can
be checked from any of them: per pod, once its capture has ended,

    kernel received == stored + retired + kernel dropped + Drops.total()

``Drops`` is a small mutable counter set; ``CAUSES`` lists the causes in the order people read them, with the short
words ``LABELS`` gives for tables and logs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from podcap.v1 import common_pb2

CAUSES = ("buffer_full", "out_of_memory", "spool_error", "unread", "past_limit", "rejected", "late",
          "lost_with_agent", "ring_evicted", "ring_unwritten")
# Causes decided on the node (summed into the legacy ``agent_dropped_packets``).
AGENT_CAUSES = ("buffer_full", "out_of_memory", "spool_error", "unread", "lost_with_agent", "ring_evicted",
                "ring_unwritten")
# Causes that travel in-band, as gaps in the chunk stream (the rest arrive in reports or are the collector's).
INBAND_CAUSES = ("buffer_full", "out_of_memory", "spool_error", "rejected")
LABELS = {
    "buffer_full": "agent buffer full",
    "out_of_memory": "agent out of memory",
    "spool_error": "agent spool error",
    "unread": "left in the ring",
    "past_limit": "past the capture's limit",
    "rejected": "refused by the collector",
    "late": "arrived after the end",
    "lost_with_agent": "lost with the agent",
    "ring_evicted": "evicted from the node's ring",
    "ring_unwritten": "not written to the node's ring",
}


@dataclass
class Drops:
    """Packets not stored, by cause (see ``podcap.v1.PodcapDrops`` for what each one means)."""

    buffer_full: int = 0
    out_of_memory: int = 0
    spool_error: int = 0
    unread: int = 0
    past_limit: int = 0
    rejected: int = 0
    late: int = 0
    lost_with_agent: int = 0
    ring_evicted: int = 0
    ring_unwritten: int = 0

    @classmethod
    def from_proto(cls, pb: common_pb2.PodcapDrops) -> Drops:
        return cls(**{c: getattr(pb, c) for c in CAUSES})

    def to_proto(self) -> common_pb2.PodcapDrops:
        return common_pb2.PodcapDrops(**self.as_dict())

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def add(self, other: Drops) -> Drops:
        """Add ``other`` into this one; returns self."""
        for c in CAUSES:
            setattr(self, c, getattr(self, c) + getattr(other, c))
        return self

    def count(self, cause: str, packets: int) -> None:
        setattr(self, cause, getattr(self, cause) + packets)

    def copy(self) -> Drops:
        return dataclasses.replace(self)

    def total(self) -> int:
        return sum(getattr(self, c) for c in CAUSES)

    def agent_total(self) -> int:
        return sum(getattr(self, c) for c in AGENT_CAUSES)

    def __bool__(self) -> bool:
        return any(getattr(self, c) for c in CAUSES)

    def nonzero(self) -> dict[str, int]:
        """Causes with a count, in ``CAUSES`` order."""
        return {c: getattr(self, c) for c in CAUSES if getattr(self, c)}

    def describe(self) -> str:
        """``"agent buffer full 1200, past the capture's limit 30"``, or ``""``."""
        return ", ".join(f"{LABELS[c]} {n}" for c, n in self.nonzero().items())


def total_of(pb: common_pb2.PodcapDrops) -> int:
    """The sum of a ``PodcapDrops`` message."""
    return sum(getattr(pb, c) for c in CAUSES)
