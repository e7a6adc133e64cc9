"""Capture streams: one libpcap handle per (capture, pod), all driven by one poll thread.

Why this shape: a C handler (``chunkbuf``) appends every packet to the outgoing chunk during
``pcap_dispatch`` (no Python per packet); one thread polling every handle's fd carried 100 pods × 10k packets with
no drops at ~6% CPU, so there is one poll loop, not a thread per pod. Opening a handle is slow (~24 ms, the kernel
allocates the ring) and may need to enter a pod's network namespace, so opens run on a small thread pool and the
opened handle is handed to the loop.

A stream's bytes are cut into chunks of whole records when they reach ``chunk_bytes`` or have waited
``flush_interval`` seconds; each chunk goes to the ``StreamSink`` (the collector session) with the next sequence
number — always: a chunk the sink cannot keep (its bounded buffer is full) travels as a gap in its place, and
packets lost before a chunk existed (out of memory) ride in the next chunk's ``lost`` counters. The capture never
blocks, and the collector sees every loss in-band, where it happened.

Every packet is accounted for: ``delivered`` counts what libpcap handed over, and a graceful stop first *freezes*
the handle (a socket filter that rejects everything, so the kernel neither queues nor counts more), then drains the
ring until ``received == dropped + delivered``. What cannot be read (the interface vanished with packets in the
ring) is reported as ``unread``; what arrives after ``max_packets`` is read and counted as ``past_limit``.
Lifecycle events (STARTED, periodic counters, DONE/FAILED) go to the sink in order with the chunks. A stream whose
interface disappears (pod deleted, or its sandbox restarted with a new network namespace) ends with a PENDING
event: the session decides whether the pod comes back (re-attach) or is gone (DONE).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from podcap.agent import netns
from podcap.agent.capture.libpcap import Handle, HandleOptions, KernelCounters, PcapError
from podcap.agent.pods.source import PodNetwork
from podcap.agent.upload.encoded import EncodedChunk, gap_chunk
from podcap.drops import Drops
from podcap.names import CaptureId, PodUid
from podcap.pcapfile import MAX_SNAPLEN, FileFormat
from podcap.pods import PodRef
from podcap.v1 import common_pb2, ingest_pb2

log = logging.getLogger(__name__)

# The loop walks every stream (flush deadlines, stats, graceful stops) at most this often, not on every wakeup:
# with 200 pods that walk was most of what an idle wakeup cost.
HOUSEKEEPING_PERIOD = 0.2
RING_BLOCK = 256 << 10  # libpcap 1.10's TPACKET_V3 block size (= its maximum snaplen); rings are whole blocks
# Two blocks at least, even past the budget: with one, the kernel has nowhere to write while the agent reads it.
MIN_RING = 2 * RING_BLOCK
# A ring is what covers the agent's worst wakeup latency: on a busy node (the generator competing for the CPU,
# ~1 Mpps of 128-byte frames, ~200 MB/s in the ring) the capture thread was measured waiting 20-40 ms after the
# kernel had data, so an 8 MiB ring (~40 ms) overflowed (0.3-0.8% dropped where tcpdump dropped none); 32 MiB
# (~160 ms) dropped nothing (tests/bench --p1-hostile). Only captures of a few pods get that much (the budget is
# shared).
MAX_AUTO_RING = 32 << 20


class StreamSink(Protocol):
    """Where streams deliver."""

    def chunk(self, chunk: EncodedChunk) -> bool:
        """Queue a chunk (already serialized: see ``podcap.agent.upload.encoded``). Never refuses its place in the
        stream: False means only its records could not be kept and a gap went in their place (the sink reports that
        loss through ``CaptureEngine.record_loss``)."""
        ...

    def event(self, event: ingest_pb2.PodCaptureEvent) -> None: ...


@dataclass(frozen=True)
class EngineSettings:
    # Cut a chunk at this size (fewer, larger messages: less per-message cost on both ends; the collector may ask
    # for smaller ones, never larger) ...
    chunk_bytes: int = 4 << 20
    # ... or when its first packet has waited this long (the latency of a live view of a quiet pod). 2 s rather
    # than 1 s halves the chunks, messages and acknowledgements of quiet pods: 200 pods at 100 pps each cost the
    # agent less CPU (tests/bench p3).
    flush_interval: float = 2.0
    stats_interval: float = 5.0
    open_workers: int = 8
    # While no ring fills fast, the loop wakes at most once per this period, so that one wakeup serves many
    # handles (200 quiet pods would otherwise wake it thousands of times a second). A drain that moved at least
    # ``busy_bytes`` means a ring is filling fast: then the loop does not nap. 0.1 s measured as too long: a nap
    # that starts just as a pod turns busy lets ~9 MB arrive at 600k packets/s, more than an 8 MiB ring holds
    # (tests/bench p1 dropped 3.6%).
    min_loop_period: float = 0.05
    busy_bytes: int = 64 << 10
    # Total kernel ring memory the agent aims for when a capture leaves the buffer size to it.
    ring_budget_bytes: int = 128 << 20
    # The upload buffer the chunks go to (memory and spool; 0 = unknown). Chunks are kept to a quarter of each
    # stream's equal share of it: when many pods cut their chunks at once (they started together, so their flush
    # deadlines coincide), the burst still fits, and a full buffer's fair share holds several chunks per pod.
    # Measured: 50 pods x 5k pps cut 50 chunks of 1.4 MB within one walk, 72 MB for a 64 MiB buffer: 6 pods lost
    # a chunk each although the collector kept up with the average rate.
    upload_buffer_bytes: int = 0
    min_chunk_bytes: int = 64 << 10


@dataclass
class _Stream:
    key: tuple[CaptureId, PodUid]
    stream_id: str
    pod: PodRef
    handle: Handle
    interface: str
    remaining: int  # packets still allowed; -1 = unlimited; 0 = the limit is reached, what follows is discarded
    has_filter: bool = False
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
    # A graceful stop in progress: the handle is frozen and the stream finishes once it has read ``expect``
    # packets in all (everything the kernel queued), or at ``finish_at`` at the latest.
    finish_at: float = 0.0
    finish_reason: str = ""
    expect: int = -1


@dataclass
class CaptureCounters:
    """Per-capture totals on this node (all streams, finished ones included), for metrics."""

    captured: int = 0
    kernel_dropped: int = 0
    if_dropped: int = 0
    drops: Drops = field(default_factory=Drops)


def auto_ring_bytes(budget: int, pods: int) -> int:
    """Ring size per pod when the capture leaves it to the agent: the budget shared by the pods, clamped to
    2..128 blocks."""
    share = budget // max(1, pods)
    size = max(MIN_RING, min(MAX_AUTO_RING, share))
    # libpcap rounds a ring *up* to whole blocks: round down here so that the pods together stay within budget.
    return max(MIN_RING, size - size % RING_BLOCK)


def _wrap_add(total: int, last_raw: int, raw: int) -> int:
    """libpcap's counters are 32-bit and wrap on long captures: accumulate the difference modulo 2**32."""
    return total + ((raw - last_raw) & 0xFFFFFFFF)


class CaptureEngine:
    """Owns every capture stream on the node."""

    def __init__(self, sink: StreamSink, *, instance_id: str, settings: EngineSettings | None = None) -> None:
        self._sink = sink
        self._instance = instance_id
        self._cfg = settings or EngineSettings()
        self._lock = threading.Lock()
        self._streams: dict[tuple[CaptureId, PodUid], _Stream] = {}
        self._by_fd: dict[int, _Stream] = {}
        self._by_id: dict[str, _Stream] = {}
        self._chunk_cap = self._cfg.chunk_bytes
        self._opening: set[tuple[CaptureId, PodUid]] = set()
        self._cancelled_opens: set[tuple[CaptureId, PodUid]] = set()
        self._commands: list[Callable[[], None]] = []
        self._totals: dict[CaptureId, CaptureCounters] = {}
        self._counter = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # epoll: a wakeup costs O(ready fds), not O(all handles) as poll() does.
        self._poll = select.epoll()
        self._poll.register(self._wake_r, select.EPOLLIN)
        self._pool = ThreadPoolExecutor(max_workers=self._cfg.open_workers, thread_name_prefix="pcap-open")
        # Closing a handle waits for an RCU grace period in the kernel (packet_release: ~25 ms): done here, never
        # on the loop thread, where 200 pods stopping at once stalled every other stream's draining for 5 s.
        self._closer = ThreadPoolExecutor(max_workers=self._cfg.open_workers, thread_name_prefix="pcap-close")
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="capture-loop", daemon=True)
        self._thread.start()

    # ---- public API (any thread) ----

    def active(self) -> list[tuple[CaptureId, PodUid]]:
        with self._lock:
            return list(self._streams) + list(self._opening)

    def start(
        self,
        capture_id: CaptureId,
        pod: PodRef,
        network: PodNetwork,
        settings: common_pb2.CaptureSettings,
        *,
        pods_on_node: int = 1,
    ) -> None:
        """Open a handle for the pod in the background; STARTED or FAILED is reported to the sink. Idempotent."""
        key = (capture_id, pod.uid)
        with self._lock:
            if key in self._streams or key in self._opening:
                return
            self._opening.add(key)
            self._cancelled_opens.discard(key)
            self._counter += 1
            stream_id = f"{self._instance}-{self._counter}"
        self._pool.submit(self._open, key, stream_id, pod, network, settings, pods_on_node)

    def stop(self, capture_id: CaptureId, pod_uid: PodUid | None, reason: str) -> None:
        """Stop one pod's stream (or all of a capture): flush, report final counters, close."""

        def run() -> None:
            for key, stream in list(self._streams.items()):
                if key[0] == capture_id and (pod_uid is None or key[1] == pod_uid):
                    self._finish_later(stream, reason)

        with self._lock:
            for key in list(self._opening):
                if key[0] == capture_id and (pod_uid is None or key[1] == pod_uid):
                    self._cancelled_opens.add(key)
        self._submit(run)

    def stop_all(self, reason: str) -> None:
        def run() -> None:
            for stream in list(self._streams.values()):
                self._finish_later(stream, reason)

        with self._lock:
            self._cancelled_opens.update(self._opening)
        self._submit(run)

    def _finish_later(self, stream: _Stream, reason: str) -> None:
        """A graceful stop (loop thread). The handle is frozen first: from then on the kernel neither queues nor
        counts packets for it, so its counters say exactly how many the stream must still read. Packets in the
        kernel's current ring block become readable only when the block retires (after one to two block
        timeouts), so the stream keeps draining until it has read them all — or until that time is up — and is
        finished then; nothing captured before the stop is lost, and nothing after it is counted."""
        if stream.finish_at:
            return
        try:
            stream.handle.freeze()
        except PcapError as e:
            log.warning("capture %s: pod %s: %s (packets after the stop will count as unread)", stream.key[0],
                        stream.pod.name, e)
        self._read_kernel(stream)
        stream.expect = stream.kernel.received - stream.kernel.dropped
        stream.finish_at = time.monotonic() + 2 * stream.handle_timeout + 0.1
        stream.finish_reason = reason

    def close(self, reason: str = "agent shutting down") -> None:
        """Stop every stream (flushing them) and end the loop thread."""
        self.stop_all(reason)
        self._pool.shutdown(wait=True)
        self.stop_all(reason)  # streams whose open finished while we waited
        deadline = time.monotonic() + 10
        while self.active() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._running = False
        self._wake()
        self._thread.join(timeout=10)
        self._closer.shutdown(wait=True)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def counters(self) -> dict[CaptureId, CaptureCounters]:
        with self._lock:
            return {k: CaptureCounters(v.captured, v.kernel_dropped, v.if_dropped, v.drops.copy())
                    for k, v in self._totals.items()}

    def _total(self, stream: _Stream) -> CaptureCounters:
        with self._lock:
            return self._totals.setdefault(stream.key[0], CaptureCounters())

    def record_loss(self, capture_id: str, stream_id: str, cause: str, packets: int) -> None:
        """Packets of a stream that will never be sent (any thread: the upload log calls it when it keeps a gap in
        a chunk's place). Counted in the stream's next report and in the capture's totals."""
        with self._lock:
            stream = self._by_id.get(stream_id)
            if stream is not None:
                stream.drops.count(cause, packets)
            self._totals.setdefault(CaptureId(capture_id), CaptureCounters()).drops.count(cause, packets)

    def _count(self, stream: _Stream, cause: str, packets: int) -> None:
        with self._lock:
            stream.drops.count(cause, packets)
            self._totals.setdefault(stream.key[0], CaptureCounters()).drops.count(cause, packets)

    # ---- opening (pool threads) ----

    def _open(
        self,
        key: tuple[CaptureId, PodUid],
        stream_id: str,
        pod: PodRef,
        network: PodNetwork,
        settings: common_pb2.CaptureSettings,
        pods_on_node: int,
    ) -> None:
        capture_id, uid = key
        ring = settings.buffer_bytes or auto_ring_bytes(self._cfg.ring_budget_bytes, pods_on_node)
        snaplen = settings.snaplen or MAX_SNAPLEN
        where = settings.interface or common_pb2.CAPTURE_INTERFACE_HOST_VETH
        try:
            if pod.host_network:
                raise PcapError("pod uses the node's network (hostNetwork): it has no traffic of its own to capture")
            if where == common_pb2.CAPTURE_INTERFACE_HOST_VETH and network.host_veth:
                opts = HandleOptions(device=network.host_veth, snaplen=snaplen, buffer_bytes=ring,
                                     filter=settings.filter)
                handle = Handle(opts)
                interface = network.host_veth
            else:
                # No host veth (or asked for): open inside the pod's namespace. The handle keeps capturing there
                # after this thread returns to the agent's namespace.
                device = "any" if where == common_pb2.CAPTURE_INTERFACE_POD_ALL else "eth0"
                opts = HandleOptions(device=device, snaplen=snaplen, buffer_bytes=ring, filter=settings.filter)
                with netns.entered(network.netns_path):
                    handle = Handle(opts)
                interface = f"{device} in {network.netns_path}"
        except (PcapError, OSError) as e:
            with self._lock:
                self._opening.discard(key)
            log.warning("capture %s: cannot capture pod %s/%s: %s", capture_id, pod.namespace, pod.name, e)
            self._sink.event(
                # No stream id: the stream never started, so the collector must not take this for a retired one.
                ingest_pb2.PodCaptureEvent(
                    capture_id=capture_id, pod_uid=uid,
                    state=common_pb2.POD_CAPTURE_STATE_FAILED, message=str(e),
                )
            )
            return
        assert handle.sink is not None
        stream = _Stream(
            key=key, stream_id=stream_id, pod=pod, handle=handle, interface=interface,
            remaining=settings.max_packets or -1, has_filter=bool(settings.filter),
            fmt=FileFormat(handle.linktype, handle.snaplen, handle.nanosecond),
            handle_timeout=opts.timeout_ms / 1000, ring_bytes=opts.buffer_bytes,
            chunk_bytes=min(settings.max_chunk_bytes or self._cfg.chunk_bytes, self._cfg.chunk_bytes),
        )

        def register() -> None:
            with self._lock:
                self._opening.discard(key)
                cancelled = key in self._cancelled_opens
                self._cancelled_opens.discard(key)
                if not cancelled:
                    self._streams[key] = stream
                    self._by_id[stream_id] = stream
            if cancelled:
                handle.close()
                return
            self._by_fd[handle.fd] = stream
            self._poll.register(handle.fd, select.EPOLLIN)
            self._resize_chunks()
            stream.next_stats = time.monotonic() + self._cfg.stats_interval
            self._sink.event(
                ingest_pb2.PodCaptureEvent(
                    capture_id=capture_id, pod_uid=uid, stream_id=stream_id,
                    state=common_pb2.POD_CAPTURE_STATE_CAPTURING, interface=interface,
                    format=common_pb2.PcapFormat(
                        linktype=stream.fmt.linktype, snaplen=stream.fmt.snaplen, nanosecond=stream.fmt.nanosecond
                    ),
                )
            )
            log.info("capture %s: capturing %s/%s on %s", capture_id, pod.namespace, pod.name, interface)

        self._submit(register)

    # ---- the loop thread ----

    def _submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._commands.append(fn)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def _loop(self) -> None:
        timeout = max(0.01, min(self._cfg.flush_interval / 2, 0.1))
        period = self._cfg.min_loop_period
        next_housekeeping = 0.0
        while self._running:
            started = time.monotonic()
            try:
                ready = self._poll.poll(timeout)
            except InterruptedError:
                continue
            busy = False
            for fd, events in ready:
                if fd == self._wake_r:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    continue
                stream = self._by_fd.get(fd)
                if stream is not None:
                    busy = self._drain(stream, events) or busy
            with self._lock:
                commands, self._commands = self._commands, []
            for fn in commands:
                try:
                    fn()
                except Exception:  # a command must never kill the loop
                    log.exception("capture loop command failed")
            now = time.monotonic()
            if now >= next_housekeeping:  # flushes, stats and stop deadlines: a walk over every stream
                self._housekeeping(now)
                next_housekeeping = now + HOUSEKEEPING_PERIOD
            if ready and not busy and period > 0 and self._running:
                rest = started + period - now
                if rest > 0:
                    time.sleep(rest)

    def _drain(self, stream: _Stream, events: int) -> bool:
        """Move what the ring holds into the stream; True when the ring is filling fast (no nap)."""
        try:
            moved = self._pull(stream, rounds=64)  # bounded, so one busy pod cannot starve the others
        except PcapError as e:
            # The interface went away (pod deleted, sandbox torn down) or the handle broke: end the stream.
            self._finish(stream, common_pb2.POD_CAPTURE_STATE_PENDING,
                         f"interface {stream.interface} is gone ({e}); waiting for the pod's sandbox")
            return False
        if stream.finish_at and stream.delivered >= stream.expect:
            self._finish(stream, common_pb2.POD_CAPTURE_STATE_DONE, stream.finish_reason)
            return False
        if events & (select.EPOLLERR | select.EPOLLHUP) and stream.pending_packets == 0:
            self._finish(stream, common_pb2.POD_CAPTURE_STATE_PENDING,
                         f"interface {stream.interface} is gone; waiting for the pod's sandbox")
            return False
        # Busy (no nap) when this drain moved a noticeable part of the ring: napping then could let it overflow.
        return moved >= min(self._cfg.busy_bytes, stream.ring_bytes // 16)

    def _pull(self, stream: _Stream, *, rounds: int) -> int:
        """Up to ``rounds`` dispatches (-1: until the ring is empty), cutting chunks as they fill; returns the record
        bytes moved. Past ``max_packets`` packets are read all the same (so the ring drains and every packet is
        counted) and discarded as ``past_limit``. Raises PcapError."""
        handle = stream.handle
        sink = handle.sink
        if sink is None:
            return 0
        before = sink.pending()
        moved = 0
        while rounds:
            rounds -= 1
            # At most about a chunk's worth per call (a full ring can hold far more than a message may).
            chunk_bytes = min(stream.chunk_bytes, self._chunk_cap)
            room = max(1, (chunk_bytes - sink.pending()) // stream.avg_record)
            want = room if stream.remaining <= 0 else min(stream.remaining, room)
            n = handle.dispatch(want)
            if n <= 0:
                break
            stream.delivered += n
            if stream.remaining == 0:
                stream.sink_lost = sink.lost()  # what the handler lost of them is past the limit all the same
                sink.reset()
                self._count(stream, "past_limit", n)
                before = 0
                continue
            if stream.pending_packets == 0:
                stream.pending_since = time.monotonic()
            stream.pending_packets += n
            pending = sink.pending()
            moved += pending - before
            stream.avg_record = max(32, (stream.avg_record * 7 + (pending - before) // n) // 8)
            before = pending
            if stream.remaining > 0:
                stream.remaining -= n
                if stream.remaining == 0:
                    self._cut(stream)
                    before = 0
                    self._finish_later(stream, "max-packets reached")
                    continue
            if pending >= chunk_bytes:
                self._cut(stream)
                before = 0
        return moved

    def _resize_chunks(self) -> None:
        """Recompute the chunk size cap for the number of streams (loop thread; see ``upload_buffer_bytes``)."""
        budget = self._cfg.upload_buffer_bytes
        if budget:
            share = budget // (4 * max(1, len(self._streams)))
            self._chunk_cap = max(self._cfg.min_chunk_bytes, min(self._cfg.chunk_bytes, share))

    def _cut(self, stream: _Stream) -> None:
        """Send what the stream holds as its next chunk: the records, with the losses not yet reported in-band;
        only the losses (a gap) when no record survived."""
        sink = stream.handle.sink
        if sink is None:
            return
        lost = sink.lost() - stream.sink_lost
        if lost:  # the handler could not grow its buffer (out of memory): those packets are lost here
            stream.sink_lost += lost
            self._count(stream, "out_of_memory", lost)
            stream.unsent_lost.out_of_memory += lost
        dispatched = stream.pending_packets
        stream.pending_packets = 0
        packets = sink.packets(dispatched) if sink.pending() > 0 else 0
        if not packets and not stream.unsent_lost:
            return
        meta = ingest_pb2.PcapChunk(
            capture_id=stream.key[0], pod_uid=stream.key[1], stream_id=stream.stream_id, seq=stream.seq + 1,
            packets=packets, first_ts_ns=sink.first_ts_ns(stream.fmt) if packets else time.time_ns(),
            last_ts_ns=time.time_ns(), lost=stream.unsent_lost.to_proto(),
        )
        if packets:
            try:
                chunk = sink.cut(meta)
            except MemoryError:
                # No memory to seal the chunk: its packets are lost, and a gap says so in its place.
                log.error("capture %s: pod %s: out of memory cutting a chunk; %d packets dropped", stream.key[0],
                          stream.pod.name, packets)
                sink.reset()
                self._count(stream, "out_of_memory", packets)
                chunk = gap_chunk(meta, "out_of_memory", packets)
        else:
            chunk = EncodedChunk.build(meta)
        stream.seq += 1
        stream.unsent_lost = Drops()
        self._total(stream).captured += chunk.packets
        self._sink.chunk(chunk)

    def _read_kernel(self, stream: _Stream) -> None:
        raw = stream.handle.stats()
        if raw is None:  # unreadable now: the last reading stands (zeros would look like a 32-bit wrap)
            return
        last = stream.raw_kernel
        total = self._total(stream)
        total.kernel_dropped += (raw.dropped - last[1]) & 0xFFFFFFFF
        total.if_dropped += (raw.if_dropped - last[2]) & 0xFFFFFFFF
        stream.kernel = KernelCounters(
            _wrap_add(stream.kernel.received, last[0], raw.received),
            _wrap_add(stream.kernel.dropped, last[1], raw.dropped),
            _wrap_add(stream.kernel.if_dropped, last[2], raw.if_dropped),
        )
        stream.raw_kernel = (raw.received, raw.dropped, raw.if_dropped)

    def _event(
        self, stream: _Stream, state: common_pb2.PodCaptureState.ValueType, message: str = ""
    ) -> ingest_pb2.PodCaptureEvent:
        with self._lock:
            drops = stream.drops.copy()
        return ingest_pb2.PodCaptureEvent(
            capture_id=stream.key[0], pod_uid=stream.key[1], stream_id=stream.stream_id, state=state,
            interface=stream.interface, message=message, last_seq=stream.seq,
            agent_dropped_packets=drops.agent_total(), drops=drops.to_proto(), delivered=stream.delivered,
            kernel=common_pb2.KernelStats(
                received=stream.kernel.received - stream.kernel_adjust, dropped=stream.kernel.dropped,
                if_dropped=stream.kernel.if_dropped,
            ),
        )

    def _housekeeping(self, now: float) -> None:
        for stream in list(self._streams.values()):
            if stream.finish_at and (now >= stream.finish_at or stream.delivered >= stream.expect):
                self._finish(stream, common_pb2.POD_CAPTURE_STATE_DONE, stream.finish_reason)
                continue
            if stream.pending_packets and now - stream.pending_since >= self._cfg.flush_interval:
                self._cut(stream)
            if now >= stream.next_stats:
                stream.next_stats = now + self._cfg.stats_interval
                self._read_kernel(stream)
                self._sink.event(self._event(stream, common_pb2.POD_CAPTURE_STATE_CAPTURING))

    def _finish(self, stream: _Stream, state: common_pb2.PodCaptureState.ValueType, reason: str) -> None:
        """End of a stream: drain what the ring holds, flush the last chunk, account for every packet the kernel
        queued, send the final counters, close."""
        if self._streams.get(stream.key) is not stream:
            return
        handle = stream.handle
        try:
            self._pull(stream, rounds=-1)
        except PcapError:
            pass  # the interface is gone: what the ring still holds is counted below as unread
        self._cut(stream)
        self._read_kernel(stream)
        residual = stream.kernel.received - stream.kernel.dropped - stream.delivered
        if residual > 0:
            if stream.finish_at and stream.has_filter and time.monotonic() >= stream.finish_at:
                # Frozen and given time for every block to retire: what is still missing was discarded by libpcap
                # itself (queued while the filter was being set, not matching it). Not received, then.
                stream.kernel_adjust = residual
            else:
                self._count(stream, "unread", residual)
                log.warning("capture %s: pod %s/%s: %d packets left unread in the ring", stream.key[0],
                            stream.pod.namespace, stream.pod.name, residual)
        elif residual < 0:
            log.error("capture %s: pod %s/%s: read %d packets more than the kernel queued", stream.key[0],
                      stream.pod.namespace, stream.pod.name, -residual)
        self._by_fd.pop(handle.fd, None)
        try:
            self._poll.unregister(handle.fd)
        except KeyError:
            pass
        self._closer.submit(handle.close)
        # Report before the stream leaves the table, so nobody sees it inactive before its final event is queued.
        self._sink.event(self._event(stream, state, reason))
        with self._lock:
            del self._streams[stream.key]
            self._by_id.pop(stream.stream_id, None)
        self._resize_chunks()
        log.info("capture %s: pod %s/%s ended: %s", stream.key[0], stream.pod.namespace, stream.pod.name, reason)
