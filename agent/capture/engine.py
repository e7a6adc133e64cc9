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

Beside this module: ``settings`` (sizes and pacing, with the measurements behind them), ``stream`` (opening a stream,
its state, cutting its chunks, its counters), ``interfaces`` (the handle factory the engine opens handles with — libpcap
by default, a fake in unit tests — and the sink it delivers to). What stays here is the loop and the steps it runs per
stream (pull, finish), which share the engine's lock, totals and sink: why it is a little over 400 lines.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from podcap.agent.capture import chunkbuf
from podcap.agent.capture.interfaces import HandleFactory, StreamSink
from podcap.agent.capture.libpcap import Handle, PcapError, TriggerSpec
from podcap.agent.capture.settings import EngineSettings
from podcap.agent.capture.stream import CaptureCounters, Stream, cut_chunk, event, open_stream, read_kernel
from podcap.agent.pods.source import PodNetwork
from podcap.names import CaptureId, PodUid
from podcap.pods import PodRef
from podcap.v1 import common_pb2, ingest_pb2

log = logging.getLogger(__name__)
DONE = common_pb2.POD_CAPTURE_STATE_DONE
PENDING = common_pb2.POD_CAPTURE_STATE_PENDING

# The loop walks every stream (flush deadlines, stats, graceful stops) at most this often, not on every wakeup:
# with 200 pods that walk was most of what an idle wakeup cost.
HOUSEKEEPING_PERIOD = 0.2
# What one wakeup reads of one stream at most before turning to the others (a ring holds 2 to 256 blocks).
DRAIN_BYTES = 8 << 20
# What a collector that does not say (older ones) accepts in one message, and what a chunk's message adds to its
# records: the two length headers and the other fields (chunkbuf.py keeps FIELDS_ROOM for them).
DEFAULT_MESSAGE_BYTES = 16 << 20
MESSAGE_OVERHEAD = chunkbuf.PREFIX + chunkbuf.FIELDS_ROOM
# Record bytes per chunk at the least, whatever a collector declares (a chunk holds one record in any case).
MIN_CHUNK_RECORDS = 4096


class CaptureEngine:
    """Owns every capture stream on the node."""

    def __init__(self, sink: StreamSink, *, instance_id: str, settings: EngineSettings | None = None,
                 handles: HandleFactory = Handle) -> None:
        self._sink = sink
        self._handles = handles
        self._instance = instance_id
        self._cfg = settings or EngineSettings()
        self._lock = threading.Lock()
        self._streams: dict[tuple[CaptureId, PodUid], Stream] = {}
        self._by_fd: dict[int, Stream] = {}
        self._by_id: dict[str, Stream] = {}
        self._chunk_cap = self._cfg.chunk_bytes
        self._message_cap = DEFAULT_MESSAGE_BYTES - MESSAGE_OVERHEAD
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
        trigger: TriggerSpec | None = None,
    ) -> None:
        """Open a handle for the pod in the background; STARTED or FAILED is reported to the sink. Idempotent.
        ``trigger``: a packet trigger the handle evaluates in C (a recording's); its firings go to the sink."""
        key = (capture_id, pod.uid)
        with self._lock:
            if key in self._streams or key in self._opening:
                return
            self._opening.add(key)
            self._cancelled_opens.discard(key)
            self._counter += 1
            stream_id = f"{self._instance}-{self._counter}"
        self._pool.submit(self._open, key, stream_id, pod, network, settings, pods_on_node, trigger)

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

    def flush(self, capture_id: CaptureId, pod_uid: PodUid) -> threading.Event:
        """Read what the stream's kernel ring holds now and cut it into chunks (a recording about to be saved); the
        event is set once done (or when there is no such stream). Packets still in the kernel's current block are
        readable only once the block retires (``HandleOptions.timeout_ms``)."""
        done = threading.Event()

        def run() -> None:
            try:
                stream = self._streams.get((capture_id, pod_uid))
                if stream is not None and not stream.finish_at:
                    try:
                        self._pull(stream, rounds=64, budget=DRAIN_BYTES)
                    except PcapError:
                        pass  # the interface is gone: the next wakeup ends the stream
                    self._flush(stream)
            finally:
                done.set()

        self._submit(run)
        return done

    def stop_all(self, reason: str, *, state: common_pb2.PodCaptureState.ValueType = DONE) -> None:
        def run() -> None:
            for stream in list(self._streams.values()):
                self._finish_later(stream, reason, state)

        with self._lock:
            self._cancelled_opens.update(self._opening)
        self._submit(run)

    def _finish_later(self, stream: Stream, reason: str,
                      state: common_pb2.PodCaptureState.ValueType = DONE) -> None:
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
        read_kernel(stream, self._total(stream))
        stream.expect = stream.kernel.received - stream.kernel.dropped
        stream.finish_at = time.monotonic() + 2 * stream.handle_timeout + 0.1
        stream.finish_reason = reason
        stream.finish_state = state

    def close(self, reason: str = "agent shutting down; the node's next agent resumes the capture") -> None:
        """Stop every stream (flushing them) and end the loop thread. The streams end PENDING, not DONE: the agent
        going away (its pod deleted in a DaemonSet rollout or a node drain) does not end the captures, and the
        collector re-attaches the pods when the node's next agent connects (a gap in the capture, reported)."""
        self.stop_all(reason, state=PENDING)
        self._pool.shutdown(wait=True)
        self.stop_all(reason, state=PENDING)  # streams whose open finished while we waited
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

    def _total(self, stream: Stream) -> CaptureCounters:
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

    def _count(self, stream: Stream, cause: str, packets: int) -> None:
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
        trigger: TriggerSpec | None = None,
    ) -> None:
        capture_id, uid = key
        try:
            stream = open_stream(self._handles, key, stream_id, pod, network, settings, self._cfg,
                                 pods_on_node=pods_on_node, trigger=trigger)
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
        handle, interface = stream.handle, stream.interface

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
                    state=common_pb2.POD_CAPTURE_STATE_CAPTURING, interface=interface, started=True,
                    message=stream.handle.trigger_error,
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

    def _drain(self, stream: Stream, events: int) -> bool:
        """Move what the ring holds into the stream; True when the ring is filling fast (no nap)."""
        try:
            # Bounded, so one busy pod cannot starve the others: a few dispatches, and no more than a few chunks'
            # worth (64 KiB frames made 64 dispatches ~250 MB: one drain held the loop ~225 ms while the other
            # pods' rings filled).
            moved = self._pull(stream, rounds=64, budget=DRAIN_BYTES)
        except PcapError as e:
            # The interface went away (pod deleted, sandbox torn down) or the handle broke: end the stream.
            self._finish(stream, common_pb2.POD_CAPTURE_STATE_PENDING,
                         f"interface {stream.interface} is gone ({e}); waiting for the pod's sandbox")
            return False
        if stream.finish_at and stream.delivered >= stream.expect:
            self._finish(stream, stream.finish_state or DONE, stream.finish_reason)
            return False
        if events & (select.EPOLLERR | select.EPOLLHUP) and stream.pending_packets == 0:
            self._finish(stream, common_pb2.POD_CAPTURE_STATE_PENDING,
                         f"interface {stream.interface} is gone; waiting for the pod's sandbox")
            return False
        # Busy (no nap) when this drain moved a noticeable part of the ring: napping then could let it overflow.
        return moved >= min(self._cfg.busy_bytes, stream.ring_bytes // 16)

    def _pull(self, stream: Stream, *, rounds: int, budget: int = 0) -> int:
        """Up to ``rounds`` dispatches (-1: until the ring is empty), cutting chunks as they fill; returns the record
        bytes moved. Past ``max_packets`` packets are read all the same (so the ring drains and every packet is
        counted) and discarded as ``past_limit``; ``budget`` (bytes, 0 = none) ends it early. Raises PcapError.

        Chunks are cut by bytes whatever one dispatch brings: the C sink closes a chunk before a record would take
        it past the limit (``sink.ready()`` chunks wait to be cut); the fallback sink, which cannot split, is asked
        for no more packets than a chunk holds of snaplen-sized records. The packet count asked of a splitting sink
        (about a chunk's worth at the running average record size) only keeps its buffer near one chunk."""
        handle = stream.handle
        sink = handle.sink
        if sink is None:
            return 0
        limit = self._chunk_limit(stream)
        if limit != stream.sink_limit:
            sink.set_limit(limit)
            stream.sink_limit = limit
        largest = 16 + stream.fmt.snaplen  # the largest record libpcap can hand over on this handle
        full = limit if sink.splits else limit - largest
        before = sink.pending()
        moved = 0
        while rounds:
            rounds -= 1
            per_record = stream.avg_record if sink.splits else largest
            room = max(1, (limit - sink.pending()) // per_record)
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
            if stream.remaining > 0:
                stream.remaining -= n
                if stream.remaining == 0:
                    self._flush(stream)
                    before = 0
                    self._finish_later(stream, "max-packets reached")
                    continue
            while sink.ready():  # chunks the handler closed at the limit
                self._cut(stream)
            if sink.pending() >= full:
                self._cut(stream)
            before = sink.pending()
            if budget and moved >= budget:
                break
        return moved

    def _chunk_limit(self, stream: Stream) -> int:
        """Record bytes per chunk for this stream now: its capture's size, the share of the upload buffer, and what
        the collector accepts in one message (less the message's own framing and fields)."""
        return max(1, min(stream.chunk_bytes, self._chunk_cap, self._message_cap))

    def set_message_limit(self, max_message_bytes: int) -> None:
        """The largest message the collector accepts (``Registered.max_message_bytes``); any thread. Chunks cut from
        now on leave room for their framing and fields below it."""
        self._message_cap = max(MIN_CHUNK_RECORDS, max_message_bytes - MESSAGE_OVERHEAD)

    def _resize_chunks(self) -> None:
        """Recompute the chunk size cap for the number of streams (loop thread; see ``upload_buffer_bytes``)."""
        budget = self._cfg.upload_buffer_bytes
        if budget:
            share = budget // (4 * max(1, len(self._streams)))
            self._chunk_cap = max(self._cfg.min_chunk_bytes, min(self._cfg.chunk_bytes, share))

    def _cut(self, stream: Stream) -> bool:
        """Send the oldest chunk the stream holds: its records, with the losses not yet reported in-band; only the
        losses (a gap) when no record survived. False when there was nothing to send."""
        chunk = cut_chunk(stream, lambda cause, packets: self._count(stream, cause, packets))
        if chunk is None:
            return False
        self._total(stream).captured += chunk.packets
        self._sink.chunk(chunk)
        return True

    def _flush(self, stream: Stream) -> None:
        """Send everything the stream holds, as as many chunks as it takes."""
        sink = stream.handle.sink
        while self._cut(stream) and sink is not None and sink.pending():
            pass

    def _event(
        self, stream: Stream, state: common_pb2.PodCaptureState.ValueType, message: str = ""
    ) -> ingest_pb2.PodCaptureEvent:
        with self._lock:
            drops = stream.drops.copy()
        return event(stream, state, message, drops)

    def _housekeeping(self, now: float) -> None:
        for stream in list(self._streams.values()):
            if stream.finish_at and (now >= stream.finish_at or stream.delivered >= stream.expect):
                self._finish(stream, stream.finish_state or DONE, stream.finish_reason)
                continue
            if stream.pending_packets and now - stream.pending_since >= self._cfg.flush_interval:
                self._flush(stream)
            counter = stream.handle.trigger
            if counter is not None:
                state = counter.state()
                # At most one report per walk, however many matches or firings since.
                if (state.total, state.fired) != (stream.trigger_total, stream.trigger_fired):
                    stream.trigger_total, stream.trigger_fired = state.total, state.fired
                    self._sink.trigger(stream.key, state)
            if now >= stream.next_stats:
                stream.next_stats = now + self._cfg.stats_interval
                read_kernel(stream, self._total(stream))
                self._sink.event(self._event(stream, common_pb2.POD_CAPTURE_STATE_CAPTURING))

    def _finish(self, stream: Stream, state: common_pb2.PodCaptureState.ValueType, reason: str) -> None:
        """End of a stream: drain what the ring holds, flush the last chunk, account for every packet the kernel
        queued, send the final counters, close."""
        if self._streams.get(stream.key) is not stream:
            return
        handle = stream.handle
        vanished = False
        try:
            self._pull(stream, rounds=-1)
        except PcapError:
            vanished = True  # the interface is gone: what the ring still holds is counted below as unread
        self._flush(stream)
        read_kernel(stream, self._total(stream))
        residual = stream.kernel.received - stream.kernel.dropped - stream.delivered
        if residual > 0:
            if stream.finish_at and stream.libpcap_discards and not vanished and time.monotonic() >= stream.finish_at:
                # Frozen, given time for every block to retire, and drained: what is still missing was discarded by
                # libpcap itself, never handed over — packets queued while the filter was being set that do not
                # match it, and on the "any" device the outgoing copy of each loopback packet (libpcap keeps only
                # the incoming one). Not received, then; "unread" is for rings left with packets in them.
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
        try:
            self._closer.submit(handle.close)
        except RuntimeError:  # the closer is shut down (the agent is exiting): close here
            handle.close()
        # Report before the stream leaves the table, so nobody sees it inactive before its final event is queued.
        self._sink.event(self._event(stream, state, reason))
        with self._lock:
            del self._streams[stream.key]
            self._by_id.pop(stream.stream_id, None)
        self._resize_chunks()
        log.info("capture %s: pod %s/%s ended: %s", stream.key[0], stream.pod.namespace, stream.pod.name, reason)
