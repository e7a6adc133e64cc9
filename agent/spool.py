"""Everything the agent sends to the collector, in order, with captured data kept until it is acknowledged.

The capture loop never waits for the network: it appends to this log and moves on. Chunks stay here after they
are sent, until the collector acknowledges them (which it does only once they are durable), so a broken session
or a collector restart loses nothing: ``new_session`` queues every unacknowledged chunk again, preceded by the
STARTED event of its stream so the collector knows the stream's format. Chunks live in memory up to
``memory_bytes`` and then as files under ``spool_dir`` up to ``disk_bytes``; when both are full, **new** chunks are
refused (the newest data is dropped, so what is stored stays contiguous from the start) and the capture engine
counts their packets as agent drops, which the collector shows per pod and records as a gap. Events are tiny and
never refused; heartbeats and inventories are not kept across sessions (registration re-sends the inventory).
Chunks arrive serialized (``EncodedChunk``) and leave as the same bytes (a spool file holds the PcapChunk's bytes;
small chunks are joined into one ChunkBatch message byte-wise), so their records are never copied into a message.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from podcap.agent.encoded import EncodedChunk, batch
from podcap.v1 import common_pb2, ingest_pb2

log = logging.getLogger(__name__)

_CLOSE = object()
# Chunks up to this size queued back to back travel as one ChunkBatch message of at most these limits.
BATCH_SMALL = 256 << 10
BATCH_MAX_BYTES = 1 << 20
BATCH_MAX_CHUNKS = 500
BATCH_LINGER_S = 0.02


@dataclass
class _Spooled:
    """A chunk waiting for its acknowledgement, in memory (``chunk``) or on disk (``path``)."""

    stream_id: str
    seq: int
    size: int
    packets: int
    chunk: EncodedChunk | None
    path: str | None = None


class UploadLog:
    def __init__(self, *, memory_bytes: int, disk_bytes: int = 0, spool_dir: str | None = None) -> None:
        self.memory_bytes = memory_bytes
        self.disk_bytes = disk_bytes if spool_dir else 0
        self.spool_dir = spool_dir
        self._cond = threading.Condition()
        self._queue: collections.deque[object] = collections.deque()
        self._unacked: dict[tuple[str, int], _Spooled] = {}
        self._stream_seqs: dict[str, collections.deque[int]] = {}  # unacknowledged seqs per stream, ascending
        self._starts: dict[str, ingest_pb2.AgentMessage] = {}
        self._finished: set[str] = set()
        self._mem = 0
        self._disk = 0
        self._epoch = 0
        self.rejected_packets = 0
        if spool_dir:
            os.makedirs(spool_dir, mode=0o700, exist_ok=True)
            for name in os.listdir(spool_dir):  # leftovers of a previous agent process belong to dead streams
                if name.endswith(".chunk"):
                    os.unlink(os.path.join(spool_dir, name))

    # ---- producers (capture loop, session) ----

    def put_chunk(self, chunk: EncodedChunk) -> bool:
        """Keep a chunk until acknowledged; False when there is no room."""
        size = chunk.size
        with self._cond:
            item = _Spooled(chunk.stream_id, chunk.seq, size, chunk.packets, chunk)
            if self._mem + size > self.memory_bytes:
                if self._disk + size > self.disk_bytes or self.spool_dir is None:
                    return False
                path = os.path.join(self.spool_dir, f"{chunk.stream_id}-{chunk.seq}.chunk")
                try:
                    with open(path, "wb") as f:
                        f.write(chunk.body())
                except OSError as e:
                    log.warning("spool write failed (%s): chunk dropped", e)
                    return False
                item.chunk = None
                item.path = path
                self._disk += size
            else:
                self._mem += size
            self._unacked[(chunk.stream_id, chunk.seq)] = item
            self._stream_seqs.setdefault(chunk.stream_id, collections.deque()).append(chunk.seq)
            self._queue.append(item)
            self._cond.notify()
        return True

    def put(self, msg: ingest_pb2.AgentMessage) -> None:
        with self._cond:
            if msg.WhichOneof("kind") == "pod_event":
                ev = msg.pod_event
                if ev.state == common_pb2.POD_CAPTURE_STATE_CAPTURING and ev.HasField("format"):
                    self._starts[ev.stream_id] = msg
                elif ev.stream_id and ev.state != common_pb2.POD_CAPTURE_STATE_CAPTURING:
                    self._finished.add(ev.stream_id)
                    self._forget_if_done(ev.stream_id)
            self._queue.append(msg)
            self._cond.notify()

    # ---- the collector's answers ----

    def ack(self, *acks: ingest_pb2.ChunkAck) -> None:
        """The collector's acknowledgements (an AckBatch at once: one lock, one wake-up)."""
        with self._cond:
            for ack in acks:
                self._ack_one(ack)
            self._cond.notify_all()

    def _ack_one(self, ack: ingest_pb2.ChunkAck) -> None:
        seqs = self._stream_seqs.get(ack.stream_id)
        if ack.rejected:
            item = self._unacked.pop((ack.stream_id, ack.seq), None)
            if item is not None:
                if seqs is not None:
                    seqs.remove(ack.seq)
                self._release(item)
                self.rejected_packets += item.packets
                log.warning("collector refused chunk %d of stream %s: %s", ack.seq, ack.stream_id, ack.reason)
        else:
            while seqs and seqs[0] <= ack.seq:  # an ack covers every earlier chunk of its stream
                self._release(self._unacked.pop((ack.stream_id, seqs.popleft())))
        self._forget_if_done(ack.stream_id)

    def _release(self, item: _Spooled) -> None:
        if item.path is not None:
            self._disk -= item.size
            try:
                os.unlink(item.path)
            except FileNotFoundError:
                pass
        else:
            self._mem -= item.size
        item.chunk = None
        item.path = None

    def _forget_if_done(self, stream_id: str) -> None:
        if not self._stream_seqs.get(stream_id, True):
            del self._stream_seqs[stream_id]
        if stream_id in self._finished and stream_id not in self._stream_seqs:
            self._finished.discard(stream_id)
            self._starts.pop(stream_id, None)

    # ---- sessions ----

    def new_session(self) -> None:
        """Queue for a fresh session: each stream's STARTED event, then every unacknowledged chunk in order, then
        the events that were never sent. Heartbeats and inventories of the old session are dropped."""
        with self._cond:
            starts = {id(m) for m in self._starts.values()}
            events = [m for m in self._queue if isinstance(m, ingest_pb2.AgentMessage)
                      and m.WhichOneof("kind") == "pod_event" and id(m) not in starts]
            self._queue = collections.deque()
            self._queue.extend(self._starts.values())
            self._queue.extend(item for item in self._unacked.values())
            self._queue.extend(events)

    def end_session(self) -> None:
        """Make the current session's iterator return (now if it is waiting, or at its next item)."""
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()

    def close_after_queued(self) -> None:
        """Let the current iterator send what is queued, then return (graceful shutdown)."""
        with self._cond:
            self._queue.append(_CLOSE)
            self._cond.notify_all()

    def iterate(self, first: ingest_pb2.AgentMessage) -> Iterator[ingest_pb2.AgentMessage | bytes]:
        """The messages of the session that starts now. The session is fixed here, not at the first ``next()``:
        gRPC may start consuming after the call already failed, and a stale iterator must not eat the next
        session's messages. Chunks come out as their serialized bytes (see ``podcap.agent.encoded.serialize``)."""
        with self._cond:
            epoch = self._epoch
        return self._messages(first, epoch)

    def _messages(self, first: ingest_pb2.AgentMessage, epoch: int) -> Iterator[ingest_pb2.AgentMessage | bytes]:
        yield first
        while True:
            with self._cond:
                while not self._queue and self._epoch == epoch:
                    self._cond.wait()
                if self._epoch != epoch:
                    return
                item = self._queue.popleft()
                if item is _CLOSE:
                    return
                msg: ingest_pb2.AgentMessage | bytes
                if isinstance(item, _Spooled):
                    if (item.stream_id, item.seq) not in self._unacked:
                        continue  # acknowledged (or refused) while it waited to be re-sent
                    chunk = self._load(item)
                    if chunk is None:
                        continue
                    msg = self._batch(chunk) if item.size <= BATCH_SMALL else chunk.wire
                else:
                    assert isinstance(item, ingest_pb2.AgentMessage)
                    msg = item
            yield msg

    def _batch(self, first: EncodedChunk) -> bytes:
        """Join the small chunks queued right behind ``first`` into one message (caller holds the lock): many
        quiet pods cost one message per flush, not one each."""
        chunks = [first]
        size = first.size
        deadline = time.monotonic() + BATCH_LINGER_S
        while len(chunks) < BATCH_MAX_CHUNKS:
            if not self._queue:
                # The capture loop cuts quiet pods' chunks one after another: linger a moment to take them along.
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left) or not self._queue:
                    break
            nxt = self._queue[0]
            if not isinstance(nxt, _Spooled) or nxt.size > BATCH_SMALL or size + nxt.size > BATCH_MAX_BYTES:
                break
            self._queue.popleft()
            if (nxt.stream_id, nxt.seq) not in self._unacked:
                continue
            loaded = self._load(nxt)
            if loaded is not None:
                chunks.append(loaded)
                size += nxt.size
        if len(chunks) == 1:
            return first.wire
        return batch(chunks)

    def _load(self, item: _Spooled) -> EncodedChunk | None:
        if item.chunk is not None:
            return item.chunk
        if item.path is None:
            return None
        try:
            with open(item.path, "rb") as f:
                return EncodedChunk.from_body(f.read())
        except (OSError, DecodeError) as e:
            log.error("spooled chunk %s unreadable: %s", item.path, e)
            return None

    # ---- introspection ----

    def pending(self) -> tuple[int, int]:
        """(unacknowledged chunks, bytes they hold)."""
        with self._cond:
            return len(self._unacked), self._mem + self._disk

    def wait_drained(self, timeout: float) -> bool:
        """Wait until every chunk is acknowledged; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._unacked, timeout)
