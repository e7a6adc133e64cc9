"""One capture stream: opening it, its state, cutting its chunks, its counters.

A ``Stream`` is what the engine knows about one (capture, pod); it is owned by the engine's loop thread (its
``drops`` are also counted from other threads, under the engine's lock). The steps that need nothing else of the
engine live here as plain functions: opening the handle (``open_stream``, on a pool thread), turning what the
handle's record sink holds into the next chunk (``cut_chunk``), folding libpcap's 32-bit counters into running
totals (``read_kernel``) and the report a stream sends (``event``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from podcap.agent import netns
from podcap.agent.capture.interfaces import CaptureHandle, HandleFactory
from podcap.agent.capture.libpcap import HandleOptions, KernelCounters, PcapError, TriggerSpec
from podcap.agent.capture.settings import MIN_RING, EngineSettings, auto_ring_bytes
from podcap.agent.pods.source import PodNetwork
from podcap.agent.upload.encoded import EncodedChunk, gap_chunk
from podcap.drops import Drops
from podcap.formats.pcap import MAX_SNAPLEN, FileFormat
from podcap.names import CaptureId, PodUid
from podcap.pods import PodRef
from podcap.v1 import common_pb2, ingest_pb2

log = logging.getLogger(__name__)


@dataclass
class Stream:
    key: tuple[CaptureId, PodUid]
    stream_id: str
    pod: PodRef
    handle: CaptureHandle
    interface: str
    remaining: int  # packets still allowed; -1 = unlimited; 0 = the limit is reached, what follows is discarded
    # libpcap may itself discard packets the kernel counted (a filter set after the socket opened; the "any"
    # device's outgoing loopback copies): a residual after a graceful stop is then not "unread".
    libpcap_discards: bool = False
    seq: int = 0
    pending_packets: int = 0
    sink_lost: int = 0
    pending_since: float = 0.0
    delivered: int = 0  # packets libpcap handed over (every one is stored, or counted in ``drops``)
    # Causes decided here (out_of_memory, unread, past_limit) and by the upload log (buffer_full, spool_error).
    drops: Drops = field(default_factory=Drops)
    # In-band losses not yet carried by a chunk (they ride in the next one).
    unsent_lost: Drops = field(default_factory=Drops)
    # Packets libpcap discarded itself (not matching the filter, queued while it was being set): not "received".
    kernel_adjust: int = 0
    kernel: KernelCounters = field(default_factory=lambda: KernelCounters(0, 0, 0))
    raw_kernel: tuple[int, int, int] = (0, 0, 0)
    next_stats: float = 0.0
    fmt: FileFormat = FileFormat(1, MAX_SNAPLEN, True)
    # Running average of record size (header included), to ask libpcap for about a chunk's worth per call.
    avg_record: int = 256
    # Ring block timeout in seconds, and a graceful stop in progress (finish at this monotonic time).
    handle_timeout: float = 0.5
    ring_bytes: int = MIN_RING
    chunk_bytes: int = 4 << 20
    sink_limit: int = 0  # the byte limit last given to the handle's sink
    # A graceful stop in progress: the handle is frozen and the stream finishes once it has read ``expect``
    # packets in all (everything the kernel queued), or at ``finish_at`` at the latest.
    finish_at: float = 0.0
    finish_reason: str = ""
    # How the stream ends: DONE when its capture or pod is stopped; PENDING when the agent itself goes away (the
    # capture goes on, and the node's next agent re-attaches the pod: a gap, not an end).
    finish_state: common_pb2.PodCaptureState.ValueType = common_pb2.POD_CAPTURE_STATE_UNSPECIFIED
    expect: int = -1
    # Matches and firings of the handle's packet trigger already reported (recordings).
    trigger_total: int = 0
    trigger_fired: int = 0


@dataclass
class CaptureCounters:
    """Per-capture totals on this node (all streams, finished ones included), for metrics."""

    captured: int = 0
    kernel_dropped: int = 0
    if_dropped: int = 0
    drops: Drops = field(default_factory=Drops)


def open_stream(
    handles: HandleFactory,
    key: tuple[CaptureId, PodUid],
    stream_id: str,
    pod: PodRef,
    network: PodNetwork,
    settings: common_pb2.CaptureSettings,
    cfg: EngineSettings,
    *,
    pods_on_node: int,
    trigger: TriggerSpec | None = None,
) -> Stream:
    """Open the handle that captures ``pod`` as ``settings`` ask (on the host veth, or inside the pod's network
    namespace) and the stream around it, with ``trigger`` evaluated on its packets in C (recordings). Slow (the
    kernel allocates the ring): pool threads only. Raises PcapError or OSError."""
    ring = settings.buffer_bytes or auto_ring_bytes(cfg.ring_budget_bytes, pods_on_node)
    snaplen = settings.snaplen or MAX_SNAPLEN
    where = settings.interface or common_pb2.CAPTURE_INTERFACE_HOST_VETH
    if pod.host_network:
        raise PcapError("pod uses the node's network (hostNetwork): it has no traffic of its own to capture")
    if where == common_pb2.CAPTURE_INTERFACE_HOST_VETH and network.host_veth:
        opts = HandleOptions(device=network.host_veth, snaplen=snaplen, buffer_bytes=ring, filter=settings.filter,
                             trigger=trigger)
        handle = handles(opts)
        interface = network.host_veth
    else:
        # No host veth (or asked for): open inside the pod's namespace. The handle keeps capturing there after this
        # thread returns to the agent's namespace.
        device = "any" if where == common_pb2.CAPTURE_INTERFACE_POD_ALL else "eth0"
        opts = HandleOptions(device=device, snaplen=snaplen, buffer_bytes=ring, filter=settings.filter,
                             trigger=trigger)
        with netns.entered(network.netns_path):
            handle = handles(opts)
        interface = f"{device} in {network.netns_path}"
    assert handle.sink is not None
    return Stream(
        key=key, stream_id=stream_id, pod=pod, handle=handle, interface=interface,
        remaining=settings.max_packets or -1,
        libpcap_discards=bool(settings.filter) or opts.device == "any",
        fmt=FileFormat(handle.linktype, handle.snaplen, handle.nanosecond),
        handle_timeout=opts.timeout_ms / 1000, ring_bytes=opts.buffer_bytes,
        chunk_bytes=min(settings.max_chunk_bytes or cfg.chunk_bytes, cfg.chunk_bytes),
    )


def cut_chunk(stream: Stream, count: Callable[[str, int], None]) -> EncodedChunk | None:
    """The stream's next chunk: the records its sink holds, with the losses not yet reported in-band; only the
    losses (a gap) when no record survived; None when there is nothing to send. ``count(cause, packets)`` counts
    packets lost here (out of memory)."""
    sink = stream.handle.sink
    if sink is None:
        return None
    lost = sink.lost() - stream.sink_lost
    if lost:  # the handler could not grow its buffer (out of memory): those packets are lost here
        stream.sink_lost += lost
        count("out_of_memory", lost)
        stream.unsent_lost.out_of_memory += lost
    dispatched = stream.pending_packets
    packets = sink.packets(dispatched) if sink.pending() > 0 else 0
    if not packets and not stream.unsent_lost:
        stream.pending_packets = 0
        return None
    meta = ingest_pb2.PcapChunk(
        capture_id=stream.key[0], pod_uid=stream.key[1], stream_id=stream.stream_id, seq=stream.seq + 1,
        packets=packets, first_ts_ns=sink.first_ts_ns(stream.fmt) if packets else time.time_ns(),
        last_ts_ns=time.time_ns(), lost=stream.unsent_lost.to_proto(),
    )
    if packets:
        try:
            chunk = sink.cut(meta)
        except MemoryError:
            # No memory to seal the chunk: what the sink holds is lost, and a gap says so in this chunk's place.
            held = max(packets, sink.packets_left())
            log.error("capture %s: pod %s: out of memory cutting a chunk; %d packets dropped", stream.key[0],
                      stream.pod.name, held)
            sink.reset()
            count("out_of_memory", held)
            chunk = gap_chunk(meta, "out_of_memory", held)
    else:
        chunk = EncodedChunk.build(meta)
    stream.pending_packets = sink.packets_left()  # chunks behind this one (closed at the limit, or open)
    stream.seq += 1
    stream.unsent_lost = Drops()
    return chunk


def _wrap_add(total: int, last_raw: int, raw: int) -> int:
    """libpcap's counters are 32-bit and wrap on long captures: accumulate the difference modulo 2**32."""
    return total + ((raw - last_raw) & 0xFFFFFFFF)


def read_kernel(stream: Stream, total: CaptureCounters) -> None:
    """Fold the handle's current kernel counters into the stream's (and the drops into the capture's totals)."""
    raw = stream.handle.stats()
    if raw is None:  # unreadable now: the last reading stands (zeros would look like a 32-bit wrap)
        return
    last = stream.raw_kernel
    total.kernel_dropped += (raw.dropped - last[1]) & 0xFFFFFFFF
    total.if_dropped += (raw.if_dropped - last[2]) & 0xFFFFFFFF
    stream.kernel = KernelCounters(
        _wrap_add(stream.kernel.received, last[0], raw.received),
        _wrap_add(stream.kernel.dropped, last[1], raw.dropped),
        _wrap_add(stream.kernel.if_dropped, last[2], raw.if_dropped),
    )
    stream.raw_kernel = (raw.received, raw.dropped, raw.if_dropped)


def event(
    stream: Stream, state: common_pb2.PodCaptureState.ValueType, message: str, drops: Drops
) -> ingest_pb2.PodCaptureEvent:
    """The stream's report: its state and every counter (``drops``: a copy taken under the engine's lock)."""
    return ingest_pb2.PodCaptureEvent(
        capture_id=stream.key[0], pod_uid=stream.key[1], stream_id=stream.stream_id, state=state,
        interface=stream.interface, message=message, last_seq=stream.seq,
        agent_dropped_packets=drops.agent_total(), drops=drops.to_proto(), delivered=stream.delivered,
        kernel=common_pb2.KernelStats(
            received=stream.kernel.received - stream.kernel_adjust, dropped=stream.kernel.dropped,
            if_dropped=stream.kernel.if_dropped,
        ),
    )
