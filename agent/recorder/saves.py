"""Saves of ring windows (``SavePodWindow``): each on a thread of its own, uploaded as an ordinary capture stream.

A save waits for its window's end to pass (and the kernel's block to retire), has the engine flush the recording,
takes the window's segments (opened, so that the ring may go on evicting), and puts their records as chunks of the
save's capture into the upload log — the same acknowledged, spooled, re-sent path as a capture's chunks, paced by
the log's room so that a save of any size waits for a collector that is away instead of losing data. Between its
STARTED and its terminal event the stream is a capture stream in every respect; the DONE event accounts for every
packet of the window the ring knew of (``window``). Saves are idempotent by (capture, pod): a finished one sends its
terminal event again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from podcap.agent.capture.engine import CaptureEngine
from podcap.agent.recorder import window as windows
from podcap.agent.recorder.store import RingKey, RingStore
from podcap.agent.upload.encoded import EncodedChunk
from podcap.agent.upload.upload_log import UploadLog
from podcap.drops import Drops
from podcap.formats.pcap import MAX_SNAPLEN, FileFormat
from podcap.names import CaptureId, InvalidNameError, PodUid, check_capture_id, check_pod_uid
from podcap.v1 import common_pb2, ingest_pb2

log = logging.getLogger(__name__)

# A save waits this long past its window's end before reading the ring: packets are readable once their kernel
# block retires (the handle's block timeout, 0.5 s) and the engine's loop has read them.
SETTLE_S = 1.1


@dataclass
class _Save:
    cmd: ingest_pb2.SavePodWindow
    stream_id: str
    lost: dict[str, int] = field(default_factory=dict)
    started: bool = False
    final: ingest_pb2.AgentMessage | None = None


class SaveRunner:
    def __init__(self, store: RingStore, engine: CaptureEngine, out: UploadLog, *, node: str,
                 recording_format: Callable[[RingKey], FileFormat | None],
                 on_done: Callable[[RingKey], None]) -> None:
        """``recording_format``: the record format of a ring's live recording (None: not recording);
        ``on_done``: called with the ring's key when a save of it ends."""
        self.store = store
        self.engine = engine
        self.out = out
        self.node = node
        self._recording_format = recording_format
        self._on_done = on_done
        self._lock = threading.Lock()
        self._saves: dict[tuple[str, str], _Save] = {}
        self._save_streams: dict[str, _Save] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def waiting(self, key: RingKey) -> bool:
        """Whether a save of this ring has not ended yet."""
        with self._lock:
            return any((s.cmd.recorder_id, s.cmd.pod_uid) == key and s.final is None for s in self._saves.values())

    def save(self, cmd: ingest_pb2.SavePodWindow) -> None:
        """Start a save (idempotent by capture and pod: a finished one sends its terminal event again)."""
        key = (cmd.capture_id, cmd.pod_uid)
        try:
            check_capture_id(cmd.capture_id)
            check_capture_id(cmd.recorder_id)
            check_pod_uid(cmd.pod_uid)
        except InvalidNameError as e:
            log.warning("ignoring malformed save: %s", e)
            return
        with self._lock:
            known = self._saves.get(key)
            if known is None:
                stream_id = f"save-{cmd.capture_id}-{cmd.pod_uid}"
                known = self._saves[key] = _Save(cmd, stream_id)
                self._save_streams[stream_id] = known
                thread = threading.Thread(target=self._run_save, args=(known,), daemon=True,
                                          name=f"save-{cmd.capture_id}")
                self._threads.append(thread)
            else:
                thread = None
        if thread is not None:
            thread.start()
        elif known.final is not None:
            self.out.put(known.final)

    def record_loss(self, capture_id: str, stream_id: str, cause: str, packets: int) -> bool:
        """Packets of a save's chunk the upload log could not keep (a gap went in their place): True when
        ``stream_id`` is a save's."""
        with self._lock:
            s = self._save_streams.get(stream_id)
            if s is None:
                return False
            s.lost[cause] = s.lost.get(cause, 0) + packets
            return True

    def _run_save(self, s: _Save) -> None:
        cmd = s.cmd
        try:
            self._save_window(s)
        except Exception as e:  # a save must end with a terminal event, whatever happened
            log.exception("save %s of pod %s failed", cmd.capture_id, cmd.pod_uid)
            self._finish_save(s, common_pb2.POD_CAPTURE_STATE_FAILED, f"save failed: {e}", None, 0)
        finally:
            self._on_done((cmd.recorder_id, cmd.pod_uid))

    def _save_window(self, s: _Save) -> None:
        cmd = s.cmd
        key = (cmd.recorder_id, cmd.pod_uid)
        ring = self.store.get(key)
        if ring is None:
            self._finish_save(s, common_pb2.POD_CAPTURE_STATE_FAILED,
                              f"no ring of recorder {cmd.recorder_id} for pod {cmd.pod_uid} on node {self.node}",
                              None, 0)
            return
        fmt = self._recording_format(key)
        if fmt is None:
            fmt = ring.segments[-1].fmt if ring.segments else FileFormat(1, MAX_SNAPLEN, True)
        s.started = True
        self.out.put(ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
            capture_id=cmd.capture_id, pod_uid=cmd.pod_uid, stream_id=s.stream_id,
            state=common_pb2.POD_CAPTURE_STATE_CAPTURING, started=True,
            interface=f"ring of recorder {cmd.recorder_id}",
            format=common_pb2.PcapFormat(linktype=fmt.linktype, snaplen=fmt.snaplen, nanosecond=fmt.nanosecond))))
        # Wait for the window to pass (a save asked for at the trigger, its window reaching into the future).
        while not self._stop.is_set():
            rest = (cmd.to_unix_ns - time.time_ns()) / 1e9 + SETTLE_S
            if rest <= 0:
                break
            self._stop.wait(min(rest, 1.0))
        if self._stop.is_set():
            return  # the agent stops: the collector asks again after the next registration
        self.engine.flush(CaptureId(cmd.recorder_id), PodUid(cmd.pod_uid)).wait(5.0)
        snapshot = self.store.snapshot(key, cmd.from_unix_ns, cmd.to_unix_ns)
        if snapshot is None:
            self._finish_save(s, common_pb2.POD_CAPTURE_STATE_FAILED, f"ring of pod {cmd.pod_uid} was deleted",
                              None, 0)
            return
        try:
            account = windows.account_losses(snapshot)
            fmt = windows.window_format(snapshot) or fmt
            seq = 0
            limit = cmd.max_chunk_bytes or windows.DEFAULT_CHUNK_BYTES
            for wc in windows.cut_window(snapshot, cmd.from_unix_ns, cmd.to_unix_ns, fmt, account, chunk_bytes=limit):
                self._wait_for_room(len(wc.records))
                seq += 1
                meta = ingest_pb2.PcapChunk(capture_id=cmd.capture_id, pod_uid=cmd.pod_uid, stream_id=s.stream_id,
                                            seq=seq, packets=wc.packets, first_ts_ns=wc.first_ns,
                                            last_ts_ns=wc.last_ns)
                self.out.put_chunk(EncodedChunk.build(meta, wc.records))
        finally:
            windows.close_snapshot(snapshot)
        self._finish_save(s, common_pb2.POD_CAPTURE_STATE_DONE,
                          f"saved {account.stored} packets of ring {cmd.recorder_id}", account, seq)

    def _wait_for_room(self, size: int) -> None:
        """Pace a save by the upload log: wait while it holds more than half its memory (a collector that is away
        makes the save wait, not lose data)."""
        while not self._stop.is_set() and self.out.pending()[1] + size > self.out.memory_bytes // 2 \
                and self.out.pending()[1] > 0:
            self._stop.wait(0.05)

    def _finish_save(self, s: _Save, state: common_pb2.PodCaptureState.ValueType, message: str,
                     account: windows.WindowAccount | None, last_seq: int) -> None:
        cmd = s.cmd
        with self._lock:
            upload_lost = dict(s.lost)
        drops = common_pb2.PodcapDrops()
        received = dropped = 0
        if account is not None:
            lost = dict(account.lost)
            dropped = lost.pop("kernel_dropped", 0)
            for cause, n in list(lost.items()) + list(upload_lost.items()):
                setattr(drops, cause, getattr(drops, cause) + n)
            received = account.received
        event = ingest_pb2.PodCaptureEvent(
            capture_id=cmd.capture_id, pod_uid=cmd.pod_uid, stream_id=s.stream_id if s.started else "",
            state=state, message=message, last_seq=last_seq,
            kernel=common_pb2.KernelStats(received=received, dropped=dropped), delivered=received - dropped,
            drops=drops, agent_dropped_packets=Drops.from_proto(drops).agent_total())
        final = ingest_pb2.AgentMessage(pod_event=event)
        with self._lock:
            s.final = final
        self.out.put(final)
        log.info("save %s of pod %s (recorder %s): %s", cmd.capture_id, cmd.pod_uid, cmd.recorder_id, message)

    def close(self) -> None:
        """Stop waiting saves (the collector asks again after the next registration)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
