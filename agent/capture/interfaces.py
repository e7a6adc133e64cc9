"""What the capture engine needs from outside it: handles to read from, and a sink to deliver to.

``CaptureHandle`` is the part of a libpcap handle the engine uses, and ``HandleFactory`` opens one; the default
factory is the real binding (``podcap.agent.capture.libpcap.Handle``), and a unit test hands the engine a fake that
yields records and counters without root or interfaces. ``StreamSink`` is where streams deliver chunks and events
(the collector session's upload log, in the agent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from podcap.agent.capture.chunkbuf import PacketTriggerCounter, RecordSink, TriggerState
from podcap.agent.capture.libpcap import HandleOptions, KernelCounters
from podcap.agent.upload.encoded import EncodedChunk
from podcap.v1 import ingest_pb2


class CaptureHandle(Protocol):
    """One open, non-blocking capture handle writing the packets it dispatches into ``sink``."""

    @property
    def fd(self) -> int:
        """Readable when the kernel has packets for the handle (registered with the engine's epoll)."""
        ...

    @property
    def linktype(self) -> int: ...

    @property
    def snaplen(self) -> int: ...

    @property
    def nanosecond(self) -> bool: ...

    @property
    def sink(self) -> RecordSink | None:
        """Where ``dispatch`` writes records; None once closed."""
        ...

    @property
    def trigger(self) -> PacketTriggerCounter | None:
        """The packet trigger the handle's C handler evaluates (recordings), None without one."""
        ...

    @property
    def trigger_error(self) -> str:
        """Why a packet trigger asked for is not evaluated ("" when it is, or none was asked for)."""
        ...

    def dispatch(self, max_packets: int = -1) -> int:
        """Move up to ``max_packets`` (-1 = all) from the ring into ``sink``; the packet count. Raises PcapError."""
        ...

    def freeze(self) -> None:
        """Stop the kernel queueing (and counting) packets for this handle; what it queued stays readable.
        Raises PcapError."""
        ...

    def stats(self) -> KernelCounters | None:
        """Cumulative 32-bit kernel counters, None when unreadable."""
        ...

    def close(self) -> None: ...


# Opens a handle (on the calling thread, which may have entered the pod's network namespace). Raises PcapError.
HandleFactory = Callable[[HandleOptions], CaptureHandle]


class StreamSink(Protocol):
    """Where streams deliver."""

    def chunk(self, chunk: EncodedChunk) -> bool:
        """Queue a chunk (already serialized: see ``podcap.agent.upload.encoded``). Never refuses its place in the
        stream: False means only its records could not be kept and a gap went in their place (the sink reports that
        loss through ``CaptureEngine.record_loss``)."""
        ...

    def event(self, event: ingest_pb2.PodCaptureEvent) -> None: ...

    def trigger(self, key: tuple[str, str], state: TriggerState) -> None:
        """A stream's packet trigger matched or fired since the last call (at most once per loop walk, about every
        0.2 s): ``state`` holds its cumulative counters and the last firing's times."""
        ...
