"""The node's flight recorders: which pods record into which ring, their packet triggers, and saves of windows.

A recording is a capture-engine stream like a capture's (the same libpcap handle, the same C chunk cutter), keyed by
the recorder's id where a capture's id would be; the session routes that stream's chunks and events here instead of
to the collector (``owns``). Chunks go into the pod's ring on disk (``RingStore``), events update the ring's counters,
and the handle's packet trigger (evaluated in C, read once per loop wakeup) becomes a ``PacketTriggerFired``
message. While nothing triggers only ``RingStatus`` counters travel, in the session's heartbeats.

Saves (``SavePodWindow``) are run by ``saves.SaveRunner``; a ring whose deletion is asked for while a save waits for
its window is deleted when the save ends.

The manager re-attaches recordings whose pod's sandbox came back (as the session does for captures), marks rings of
pods that left the node as kept, and deletes them when their keep duration passes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from podcap.agent.capture.chunkbuf import TriggerState
from podcap.agent.capture.engine import CaptureEngine
from podcap.agent.capture.libpcap import TriggerSpec
from podcap.agent.pods.source import PodNetwork, PodSource, PodSourceError
from podcap.agent.recorder.ring import RingError
from podcap.agent.recorder.saves import SaveRunner
from podcap.agent.recorder.store import RingKey, RingStore
from podcap.agent.upload.encoded import EncodedChunk
from podcap.agent.upload.upload_log import UploadLog
from podcap.formats.pcap import FileFormat
from podcap.names import CaptureId, InvalidNameError, PodUid, check_capture_id, check_pod_uid
from podcap.pods import PodRef
from podcap.v1 import common_pb2, ingest_pb2

log = logging.getLogger(__name__)

POD_GONE_AFTER_S = 5.0
# A firing is sent again in each new session for this long (the session may have died with it on the wire); the
# collector keeps the first of each (recorder, pod, fired_unix_ns).
TRIGGER_RESEND_S = 600.0
# Chunk records as the collector's native framing lays them out (native/chunks.c): 12 bytes of prefix, then the records.
_NATIVE_PREFIX = 12
_CHUNK_TAG, _RECORDS_TAG = 0x22, 0x22
MAX_KEEP_GONE_NS = 7 * 24 * 3600 * 10**9


@dataclass
class _Recording:
    cmd: ingest_pb2.StartPodRecording
    state: ingest_pb2.RingState.ValueType = ingest_pb2.RING_STATE_PENDING
    message: str = ""
    fingerprint: tuple[str, str, int] = ("", "", 0)
    missing_since: float = 0.0
    stream_id: str = ""
    fmt: FileFormat | None = None
    stopped: bool = False


def chunk_records(chunk: EncodedChunk) -> memoryview | bytes:
    """A chunk's record bytes: a slice of its wire when ``native/chunks.c`` laid it out (records right behind the
    prefix), else parsed out of the message (the fallback path)."""
    wire = chunk.wire
    if len(wire) >= _NATIVE_PREFIX and wire[0] == _CHUNK_TAG and wire[6] == _RECORDS_TAG:
        n = 0
        for i in range(5):
            n |= (wire[7 + i] & 0x7F) << (7 * i)
        if n == chunk.size:
            return memoryview(wire)[_NATIVE_PREFIX:_NATIVE_PREFIX + n]
    return chunk.message().records


class RecorderManager:
    def __init__(self, store: RingStore, engine: CaptureEngine, out: UploadLog, source: PodSource, *,
                 fingerprint: Callable[[PodNetwork], tuple[str, str, int]], node: str) -> None:
        self.store = store
        self.engine = engine
        self.out = out
        self.source = source
        self.node = node
        self._fingerprint = fingerprint
        self._lock = threading.Lock()
        self._recordings: dict[RingKey, _Recording] = {}
        self._recorders: set[str] = {k[0] for k in store.keys()}
        self._delete_after_saves: set[RingKey] = set()
        self._changed = threading.Event()
        self.saves = SaveRunner(store, engine, out, node=node, recording_format=self._recording_format,
                                on_done=self._save_done)
        # Per ring: (stream id, its trigger matches and firings counted so far).
        self._trigger_totals: dict[RingKey, tuple[str, int, int]] = {}
        self._firings: list[tuple[float, ingest_pb2.AgentMessage]] = []  # recent ones, re-sent after a reconnect

    # ---- routing (the session's sink) ----

    def owns(self, capture_id: str) -> bool:
        """Whether a stream of this id is a recording (recorder ids never equal capture ids)."""
        with self._lock:
            return capture_id in self._recorders

    def chunk(self, chunk: EncodedChunk) -> bool:
        """A recording's chunk (capture loop): its records into the pod's ring."""
        meta = chunk.meta
        key = (meta.capture_id, meta.pod_uid)
        with self._lock:
            rec = self._recordings.get(key)
            fmt = rec.fmt if rec is not None else None
        if not chunk.size or fmt is None:
            return True  # a gap: its losses reach the ring through the stream's counters
        return self.store.write(key, chunk_records(chunk), meta.packets, fmt, meta.first_ts_ns, meta.last_ts_ns)

    def event(self, event: ingest_pb2.PodCaptureEvent) -> None:
        """A recording stream's event (capture loop, or an open pool thread)."""
        key = (event.capture_id, event.pod_uid)
        if event.stream_id:
            self.store.observe(key, event.stream_id, received=event.kernel.received, dropped=event.kernel.dropped,
                               if_dropped=event.kernel.if_dropped, out_of_memory=event.drops.out_of_memory,
                               unread=event.drops.unread)
        with self._lock:
            rec = self._recordings.get(key)
            if rec is None:
                return
            state, message = rec.state, rec.message
            if event.started:
                rec.stream_id = event.stream_id
                rec.fmt = FileFormat(event.format.linktype, event.format.snaplen, event.format.nanosecond)
                rec.state, rec.message = ingest_pb2.RING_STATE_RECORDING, event.message
            elif event.state == common_pb2.POD_CAPTURE_STATE_FAILED:
                rec.state, rec.message = ingest_pb2.RING_STATE_FAILED, event.message
            elif event.state in (common_pb2.POD_CAPTURE_STATE_PENDING, common_pb2.POD_CAPTURE_STATE_DONE):
                rec.state = ingest_pb2.RING_STATE_KEPT if rec.stopped else ingest_pb2.RING_STATE_PENDING
                rec.message = event.message
            changed = (state, message) != (rec.state, rec.message)
        if event.state != common_pb2.POD_CAPTURE_STATE_CAPTURING:
            self.store.close_segment(key)
        if changed:
            self._changed.set()

    def trigger(self, key: tuple[str, str], state: TriggerState) -> None:
        """The recording's packet trigger matched or fired (capture loop, at most once per loop walk): counted in
        the ring; a firing is sent to the collector."""
        with self._lock:
            rec = self._recordings.get(key)
            count = rec.cmd.trigger.count if rec is not None else 0
            stream_id = rec.stream_id if rec is not None else ""
            last_stream, last_total, last_fired = self._trigger_totals.get(key, ("", 0, 0))
            if last_stream != stream_id:  # a new handle: its counters start at zero
                last_total = last_fired = 0
            self._trigger_totals[key] = (stream_id, state.total, state.fired)
        fired = state.fired - last_fired
        self.store.count_trigger(key, matches=state.total - last_total, fired=max(0, fired))
        if fired <= 0:
            return
        log.info("recorder %s: pod %s: packet trigger fired (%d matches, total %d)", key[0], key[1], count,
                 state.total)
        msg = ingest_pb2.AgentMessage(packet_trigger=ingest_pb2.PacketTriggerFired(
            recorder_id=key[0], pod_uid=key[1], fired_unix_ns=state.fired_ts_ns,
            first_match_unix_ns=state.first_ts_ns, matches=count, total_matches=state.total))
        now = time.monotonic()
        with self._lock:
            self._firings = [(t, m) for t, m in self._firings if now - t < TRIGGER_RESEND_S][-1000:]
            self._firings.append((now, msg))
        self.out.put(msg)

    def recent_firings(self) -> list[ingest_pb2.AgentMessage]:
        """Trigger firings of the last ``TRIGGER_RESEND_S`` seconds, for a new session to send again."""
        now = time.monotonic()
        with self._lock:
            return [m for t, m in self._firings if now - t < TRIGGER_RESEND_S]

    # ---- commands ----

    def start(self, cmd: ingest_pb2.StartPodRecording, pod: PodRef | None) -> None:
        try:
            rid = check_capture_id(cmd.recorder_id)
            uid = check_pod_uid(cmd.pod.uid)
        except InvalidNameError as e:
            log.warning("ignoring malformed recording start: %s", e)
            return
        key = (str(rid), str(uid))
        with self._lock:
            self._recorders.add(key[0])
            rec = self._recordings.get(key)
            if rec is not None and not rec.stopped and key in self.engine.active():
                return  # idempotent
            rec = self._recordings[key] = _Recording(cmd)
        self._changed.set()
        try:
            self.store.ensure(key, pod={"namespace": cmd.pod.namespace, "name": cmd.pod.name, "uid": cmd.pod.uid},
                              max_bytes=cmd.keep.max_bytes, max_duration_ns=cmd.keep.max_duration_ns,
                              keep_gone_ns=min(cmd.keep_gone_ms * 1_000_000, MAX_KEEP_GONE_NS))
        except RingError as e:
            log.warning("recorder %s: pod %s: %s", key[0], key[1], e)
            with self._lock:
                rec.state, rec.message = ingest_pb2.RING_STATE_FAILED, str(e)
            return
        if pod is None:
            # Not in the inventory (yet: a start may come before the agent's next look at the node): re-attached
            # when it appears, kept (as a pod that left) when it does not within POD_GONE_AFTER_S.
            with self._lock:
                rec.state = ingest_pb2.RING_STATE_PENDING
                rec.message = f"pod {cmd.pod.namespace}/{cmd.pod.name} (uid {uid}) is not on node {self.node}"
            return
        self._open(key, rec, pod)

    def _open(self, key: RingKey, rec: _Recording, pod: PodRef) -> None:
        try:
            network = self.source.locate(PodUid(key[1]))
        except PodSourceError as e:
            with self._lock:
                rec.state, rec.message = ingest_pb2.RING_STATE_PENDING, f"cannot locate the pod: {e}"
            self._changed.set()
            return
        rec.fingerprint = self._fingerprint(network)
        cmd = rec.cmd
        settings = common_pb2.CaptureSettings()
        settings.CopyFrom(cmd.settings)
        settings.max_packets = 0
        # Chunks of at most half a segment (and 1 MiB), so that a full ring keeps close to its limit.
        ring = self.store.get(key)
        segment = ring.segment_bytes() if ring is not None else 1 << 20
        settings.max_chunk_bytes = max(64 << 10, min(1 << 20, segment // 2))
        trigger = None
        if cmd.HasField("trigger") and cmd.trigger.filter and cmd.trigger.count:
            trigger = TriggerSpec(cmd.trigger.filter, min(cmd.trigger.count, 65536), cmd.trigger.window_ns or 1)
        self.engine.start(CaptureId(key[0]), pod, network, settings, pods_on_node=cmd.pods_on_node or 1,
                          trigger=trigger)

    def stop(self, cmd: ingest_pb2.StopPodRecording) -> None:
        rid = cmd.recorder_id
        with self._lock:
            keys = [k for k in set(self._recordings) | set(self.store.keys())
                    if k[0] == rid and (not cmd.pod_uid or k[1] == cmd.pod_uid)]
            for key in keys:
                rec = self._recordings.get(key)
                if rec is not None:
                    rec.stopped = True
                    rec.state = ingest_pb2.RING_STATE_KEPT
                    rec.message = cmd.reason or "recording stopped"
        self.engine.stop(CaptureId(rid), PodUid(cmd.pod_uid) if cmd.pod_uid else None,
                         cmd.reason[:200] or "recording stopped")
        if not cmd.delete_ring:
            for key in keys:  # kept for saves; its keep duration runs from now
                self.store.mark_gone(key, True)
        else:
            # Off the session's thread: the stream's graceful stop takes about a second.
            def delete() -> None:
                for key in keys:
                    self._delete_when_idle(key)

            thread = threading.Thread(target=delete, daemon=True, name=f"delete-{rid}")
            thread.start()
        self._changed.set()

    def _delete_when_idle(self, key: RingKey) -> None:
        """Delete a ring once no save of it is waiting for its window (saves that took their snapshot keep reading
        the files they opened)."""
        waiting = self.saves.waiting(key)
        with self._lock:
            if waiting:
                self._delete_after_saves.add(key)
                return
            self._delete_after_saves.discard(key)
            self._recordings.pop(key, None)
        self._stop_wait(key)
        self.store.delete(key)
        log.info("recorder %s: ring of pod %s deleted", key[0], key[1])
        self._changed.set()

    def _stop_wait(self, key: RingKey, timeout: float = 5.0) -> None:
        """Wait (briefly) for the recording's stream to end so nothing writes into a ring being deleted."""
        deadline = time.monotonic() + timeout
        while key in self.engine.active() and time.monotonic() < deadline:
            time.sleep(0.05)

    # ---- housekeeping (the session's side loop, once a second) ----

    def reconcile(self, pods: dict[PodUid, PodRef]) -> None:
        """Re-attach recordings whose pod's sandbox came back; mark rings of pods that left the node as kept;
        delete rings kept past their keep duration."""
        active = set(self.engine.active())
        now = time.monotonic()
        with self._lock:
            waiting = [(k, r) for k, r in self._recordings.items() if k not in active and not r.stopped]
        for key, rec in waiting:
            pod = pods.get(PodUid(key[1]))
            if pod is None:
                if not rec.missing_since:
                    rec.missing_since = now
                if now - rec.missing_since >= POD_GONE_AFTER_S and rec.state != ingest_pb2.RING_STATE_KEPT:
                    with self._lock:
                        rec.state, rec.message = ingest_pb2.RING_STATE_KEPT, "pod left the node; its ring is kept"
                    self.store.mark_gone(key, True)
                    self._changed.set()
                continue
            rec.missing_since = 0.0
            if rec.state == ingest_pb2.RING_STATE_FAILED:
                continue
            try:
                network = self.source.locate(PodUid(key[1]))
            except PodSourceError:
                continue
            fingerprint = self._fingerprint(network)
            if (fingerprint == rec.fingerprint and rec.state == ingest_pb2.RING_STATE_RECORDING) or fingerprint[2] < 0:
                continue
            if fingerprint == rec.fingerprint and rec.stream_id:
                continue  # the same (broken) incarnation
            log.info("recorder %s: (re-)attaching %s/%s", key[0], pod.namespace, pod.name)
            if rec.state == ingest_pb2.RING_STATE_KEPT:
                self.store.mark_gone(key, False)  # back on the node: no longer expiring
            self._open(key, rec, pod)
        for key in self.store.expired_gone(time.time_ns()):
            self._delete_when_idle(key)
        with self._lock:
            pending = list(self._delete_after_saves)
        for key in pending:
            self._delete_when_idle(key)
        self.store.flush_meta()

    def take_changed(self) -> bool:
        """Whether a ring's state changed since the last call (the session then sends a heartbeat at once)."""
        changed = self._changed.is_set()
        self._changed.clear()
        return changed

    def statuses(self) -> list[ingest_pb2.RingStatus]:
        """Every ring on the node's disk, for heartbeats and registration."""
        out = []
        with self._lock:
            recs = {k: (r.state, r.message) for k, r in self._recordings.items()}
        for key in self.store.keys():
            ring = self.store.get(key)
            if ring is None:
                continue
            state, message = recs.get(key, (ingest_pb2.RING_STATE_KEPT, "ring found on the node's disk"))
            c = ring.counters
            out.append(ingest_pb2.RingStatus(
                recorder_id=key[0], pod_uid=key[1], state=state, message=message, bytes=ring.held_bytes,
                packets=ring.held_packets, oldest_unix_ns=ring.oldest_ns, newest_unix_ns=ring.newest_ns,
                kernel=common_pb2.KernelStats(received=c.received, dropped=c.kernel_dropped, if_dropped=c.if_dropped),
                written=c.written, drops=common_pb2.PodcapDrops(
                    ring_evicted=c.ring_evicted, ring_unwritten=c.ring_unwritten, out_of_memory=c.out_of_memory,
                    unread=c.unread),
                trigger_matches=c.trigger_matches, trigger_fired=c.trigger_fired, limit_bytes=ring.limit_bytes))
        return out

    # ---- saves ----

    def save(self, cmd: ingest_pb2.SavePodWindow) -> None:
        self.saves.save(cmd)

    def record_loss(self, capture_id: str, stream_id: str, cause: str, packets: int) -> bool:
        return self.saves.record_loss(capture_id, stream_id, cause, packets)

    def _recording_format(self, key: RingKey) -> FileFormat | None:
        with self._lock:
            rec = self._recordings.get(key)
            return rec.fmt if rec is not None else None

    def _save_done(self, key: RingKey) -> None:
        """A save of the ring ended: delete the ring now if a stop asked for it meanwhile."""
        with self._lock:
            pending = key in self._delete_after_saves
        if pending:
            self._delete_when_idle(key)

    def close(self) -> None:
        """Stop waiting saves (the collector asks again after the next registration) and close every ring."""
        self.saves.close()
        self.store.close()
