"""Everything the agent sends to the collector, in order, with captured data kept until it is acknowledged.

The capture loop never waits for the network: it appends to this log and moves on. Chunks stay here after they
are sent, until the collector acknowledges them (which it does only once they are durable), so a broken session
or a collector restart loses nothing: ``new_session`` queues every unacknowledged chunk again, preceded by the
STARTED event of its stream so the collector knows the stream's format, and followed by the final events of
streams that ended lately (the old session may have died with them on the wire). Events are tiny and never
refused; heartbeats and inventories are not kept across sessions (registration re-sends the inventory). Chunks
arrive serialized (``EncodedChunk``) and leave as the same bytes (a spool file holds the PcapChunk's bytes; small
chunks are joined into one ChunkBatch message byte-wise), so their records are never copied into a message.

**Bounded and fair.** Chunks live in memory up to ``memory_bytes``, then as files under ``spool_dir`` up to
``disk_bytes``. A chunk that does not fit is still let in if its stream holds less than an equal share of the
whole (capacity ÷ streams holding data): room is made by turning the newest not-yet-sent chunks of the streams
holding the most beyond their share into gaps. Otherwise the chunk itself becomes a gap. So when the collector
does not keep up, each busy pod keeps an equal share and loses what exceeds it, and a quiet pod loses nothing to
a busy one. A gap keeps the chunk's place in its stream without its records (``EncodedChunk.gap``): the collector
records the loss where it happened and stores what follows; ``on_lost`` tells the capture engine, which reports
it per pod. Chunks already sent once are never turned into gaps (the collector may hold them).

Spool files are written, read and deleted outside the lock, so neither the capture loop, nor the sender, nor
acknowledgements ever wait for the disk while holding it.

One class on purpose (a little over 400 lines): the queue, the per-stream accounting, the eviction and the session
replay share one lock and one invariant (every chunk is queued, held, spooled or a gap exactly once), and splitting
them would spread that invariant over modules.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from podcap.agent.upload.encoded import EncodedChunk, batch, gap_chunk
from podcap.stream_events import starts_stream
from podcap.v1 import common_pb2, ingest_pb2

log = logging.getLogger(__name__)

_CLOSE = object()
# Chunks up to this size queued back to back travel as one ChunkBatch message of at most these limits.
BATCH_SMALL = 256 << 10
BATCH_MAX_BYTES = 1 << 20
BATCH_MAX_CHUNKS = 500
BATCH_LINGER_S = 0.02
# A stream's last report (final counters) is sent again in each new session for this long after it ended.
FINAL_EVENT_KEEP_S = 600.0
FINAL_EVENTS_MAX = 4096

# Spool files written by the writer thread at once (their chunks wait in memory meanwhile); past this the capture
# loop writes the next one itself, so a disk slower than the capture slows the loop instead of growing memory.
SPOOL_WRITES_IN_FLIGHT = 4
# What a collector that does not declare its limit accepts in one message (older collectors: 16 MiB).
DEFAULT_MAX_MESSAGE = 16 << 20

# (capture id, stream id, cause, packets): packets of a stream that will never be sent.
LostCallback = Callable[[str, str, str, int], None]


@dataclass(eq=False)
class _Item:
    """A chunk waiting for its acknowledgement: in memory (``chunk``), on disk (``path``), or a gap (``chunk``
    without records, ``size`` 0)."""

    meta: ingest_pb2.PcapChunk  # the chunk's fields but its records: what a gap is made of
    chunk: EncodedChunk | None
    path: str | None = None
    size: int = 0  # bytes counted against the memory or disk cap
    sent: bool = False  # handed to a session at least once: never turned into a gap after that

    @property
    def key(self) -> tuple[str, int]:
        return self.meta.stream_id, self.meta.seq


class UploadLog:
    def __init__(self, *, memory_bytes: int, disk_bytes: int = 0, spool_dir: str | None = None,
                 on_lost: LostCallback | None = None) -> None:
        self.memory_bytes = memory_bytes
        self.disk_bytes = disk_bytes if spool_dir else 0
        self.spool_dir = spool_dir
        self.on_lost: LostCallback = on_lost or (lambda _c, _s, _cause, _n: None)
        self._cond = threading.Condition()
        self._queue: collections.deque[object] = collections.deque()
        self._unacked: dict[tuple[str, int], _Item] = {}
        self._stream_seqs: dict[str, collections.deque[int]] = {}  # unacknowledged seqs per stream, ascending
        self._held: dict[str, int] = {}  # bytes each stream holds (memory + disk), streams holding any
        self._starts: dict[str, ingest_pb2.AgentMessage] = {}
        self._finals: collections.OrderedDict[str, tuple[float, ingest_pb2.AgentMessage]] = collections.OrderedDict()
        self._finished: set[str] = set()
        self._refused: list[tuple[str, str, int]] = []
        self._writes: collections.deque[_Item] = collections.deque()  # spool files the writer thread is to write
        self._writer: threading.Thread | None = None  # (capture, stream, packets) refused, to report after the lock
        self._mem = 0
        self._disk = 0
        self._epoch = 0
        self.rejected_packets = 0
        # The largest message the collector accepts (Registered.max_message_bytes); larger chunks go as gaps.
        self.max_message = DEFAULT_MAX_MESSAGE
        self._acked_in_session = False
        if spool_dir:
            os.makedirs(spool_dir, mode=0o700, exist_ok=True)
            for name in os.listdir(spool_dir):  # leftovers of a previous agent process belong to dead streams
                if name.endswith(".chunk"):
                    os.unlink(os.path.join(spool_dir, name))

    # ---- producers (capture loop, session) ----

    def put_chunk(self, chunk: EncodedChunk) -> bool:
        """Queue a chunk until acknowledged. Its place in the stream is always kept; False when its records could
        not be (a gap went in their place, reported through ``on_lost``)."""
        size = chunk.size
        lost: list[tuple[ingest_pb2.PcapChunk, str, int]] = []
        unlink: list[str] = []
        kept = True
        background = False
        with self._cond:
            where = self._make_room(chunk.stream_id, size, lost, unlink) if size else "memory"
            if where is None:
                item = _Item(chunk.meta, chunk.gap("buffer_full"))
                lost.append((chunk.meta, "buffer_full", chunk.packets))
                kept = False
            elif where == "disk":
                assert self.spool_dir is not None
                # Reserved on disk now; written outside the lock — by the spool writer while it has room for more
                # (the capture loop must not wait for the disk during a burst), else right here. Until it is
                # written the chunk stays in memory and can be sent from there.
                item = _Item(chunk.meta, chunk, os.path.join(self.spool_dir, f"{chunk.stream_id}-{chunk.seq}.chunk"),
                             size)
                self._take(item)
                if len(self._writes) < SPOOL_WRITES_IN_FLIGHT:
                    self._writes.append(item)
                    self._start_writer()
                    background = True
            else:
                item = _Item(chunk.meta, chunk, None, size)
                self._take(item)
            if item.path is not None:
                self._unacked[item.key] = item  # before the writer may look at it
        _unlink(unlink)
        if item.path is not None and not background:
            self._spool(item, chunk, lost)
            kept = item.chunk is None or item.path is not None or item.sent
        with self._cond:
            self._unacked[item.key] = item
            self._stream_seqs.setdefault(chunk.stream_id, collections.deque()).append(chunk.seq)
            self._queue.append(item)
            self._cond.notify_all()
        for meta, cause, packets in lost:
            self.on_lost(meta.capture_id, meta.stream_id, cause, packets)
        return kept

    def _spool(self, item: _Item, chunk: EncodedChunk, lost: list[tuple[ingest_pb2.PcapChunk, str, int]]) -> None:
        """Write ``item``'s spool file (no lock held), then let its memory go; a failed write becomes a gap in its
        place (or, when it was sent from memory meanwhile, stays in memory: sent chunks are never given up)."""
        path = item.path
        assert path is not None
        try:
            with open(path, "wb") as f:
                f.write(chunk.body())
        except OSError as e:
            with self._cond:
                live = self._live(item) and item.path == path
                if live and item.sent:
                    self._free(item)
                    item.path = None
                    item.chunk = chunk
                    item.size = chunk.size
                    self._take(item)  # now counted in memory
                elif live:
                    self._free(item)
                    item.path = None
                    item.chunk = chunk.gap("spool_error")
                    lost.append((chunk.meta, "spool_error", chunk.packets))
                    log.warning("spool write failed (%s): chunk %d of stream %s lost", e, chunk.seq,
                                chunk.stream_id)
            _unlink([path])  # whatever part of it was written
            return
        with self._cond:
            if self._live(item) and item.path == path:
                item.chunk = None  # on disk now: its memory goes
                return
        _unlink([path])  # acknowledged or given up while it was being written

    def _start_writer(self) -> None:
        """The spool writer thread, started with the first chunk it has to write (caller holds the lock)."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_spool, name="spool-writer", daemon=True)
            self._writer.start()
        self._cond.notify_all()

    def _write_spool(self) -> None:
        while True:
            with self._cond:
                while not self._writes:
                    self._cond.wait()
                item = self._writes[0]
                chunk = item.chunk
            lost: list[tuple[ingest_pb2.PcapChunk, str, int]] = []
            if chunk is not None and item.path is not None:
                self._spool(item, chunk, lost)
            with self._cond:
                self._writes.popleft()
                self._cond.notify_all()
            for meta, cause, packets in lost:
                self.on_lost(meta.capture_id, meta.stream_id, cause, packets)

    def wait_spooled(self, timeout: float = 10.0) -> bool:
        """Wait until every spool write handed to the writer is done (tests, shutdown); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._writes, timeout)

    def _make_room(self, stream: str, size: int, lost: list[tuple[ingest_pb2.PcapChunk, str, int]],
                   unlink: list[str]) -> str | None:
        """Where a chunk of ``size`` bytes of ``stream`` goes ("memory" or "disk"), making room by turning other
        streams' unsent chunks into gaps if ``stream`` holds less than its share; None when it does not fit
        (caller holds the lock)."""
        where = self._fits(size)
        if where is not None:
            return where
        holders = len(self._held) + (0 if stream in self._held else 1)
        share = (self.memory_bytes + self.disk_bytes) // holders
        if self._held.get(stream, 0) + size > share:
            return None  # this stream holds its share already: its own newest data is what goes
        victims = self._victims(stream, share, size)
        if victims is None:
            return None  # not enough can give way: evicting some would only add losses
        for victim in victims:
            path = victim.path
            self._free(victim)
            if path is not None:
                unlink.append(path)
            victim.path = None
            victim.chunk = gap_chunk(victim.meta, "buffer_full", victim.meta.packets)
            lost.append((victim.meta, "buffer_full", victim.meta.packets))
        return self._fits(size)

    def _fits(self, size: int) -> str | None:
        if self._mem + size <= self.memory_bytes:
            return "memory"
        if self.spool_dir is not None and self._disk + size <= self.disk_bytes:
            return "disk"
        return None

    def _victims(self, stream: str, share: int, size: int) -> list[_Item] | None:
        """The unsent chunks whose places become gaps so that ``size`` bytes of ``stream`` fit: each time the newest
        unsent chunk of the stream holding the most beyond its share. None when even all of those would not make
        room (then nothing is given up)."""
        held = {s: b for s, b in self._held.items() if s != stream and b > share}
        taken: set[int] = set()
        victims: list[_Item] = []
        mem, disk = self._mem, self._disk
        while not (mem + size <= self.memory_bytes
                   or (self.spool_dir is not None and disk + size <= self.disk_bytes)):
            found = None
            for other, _ in sorted(held.items(), key=lambda kv: -kv[1]):
                for seq in reversed(self._stream_seqs.get(other, ())):
                    item = self._unacked[(other, seq)]
                    if not item.sent and item.size and id(item) not in taken:
                        found = item
                        break
                if found is not None:
                    break
            if found is None:
                return None
            taken.add(id(found))
            victims.append(found)
            if found.path is not None:
                disk -= found.size
            else:
                mem -= found.size
            left = held[found.meta.stream_id] - found.size
            if left > share:
                held[found.meta.stream_id] = left
            else:
                del held[found.meta.stream_id]
        return victims

    def _take(self, item: _Item) -> None:
        """Count a kept chunk against its cap (caller holds the lock)."""
        if not item.size:
            return
        if item.path is not None:
            self._disk += item.size
        else:
            self._mem += item.size
        self._held[item.meta.stream_id] = self._held.get(item.meta.stream_id, 0) + item.size

    def _free(self, item: _Item) -> None:
        """Give a chunk's bytes back (caller holds the lock; the caller deletes its spool file, if any, after)."""
        if item.size:
            if item.path is not None:
                self._disk -= item.size
            else:
                self._mem -= item.size
            stream = item.meta.stream_id
            left = self._held.get(stream, 0) - item.size
            if left > 0:
                self._held[stream] = left
            else:
                self._held.pop(stream, None)
        item.chunk = None
        item.size = 0

    def put(self, msg: ingest_pb2.AgentMessage) -> None:
        with self._cond:
            if msg.WhichOneof("kind") == "pod_event":
                ev = msg.pod_event
                if starts_stream(ev):
                    self._starts[ev.stream_id] = msg
                elif ev.stream_id and ev.state != common_pb2.POD_CAPTURE_STATE_CAPTURING:
                    self._finished.add(ev.stream_id)
                    self._finals[ev.stream_id] = (time.monotonic(), msg)
                    self._finals.move_to_end(ev.stream_id)
                    while len(self._finals) > FINAL_EVENTS_MAX:
                        self._finals.popitem(last=False)
                    self._forget_if_done(ev.stream_id)
            self._queue.append(msg)
            self._cond.notify()

    # ---- the collector's answers ----

    def ack(self, *acks: ingest_pb2.ChunkAck) -> None:
        """The collector's acknowledgements (an AckBatch at once: one lock, one wake-up)."""
        unlink: list[str] = []
        with self._cond:
            for ack in acks:
                self._ack_one(ack, unlink)
            refused, self._refused = self._refused, []
            self._acked_in_session = True
            self._cond.notify_all()
        _unlink(unlink)
        for capture, stream, packets in refused:
            self.on_lost(capture, stream, "rejected", packets)

    def _ack_one(self, ack: ingest_pb2.ChunkAck, unlink: list[str]) -> None:
        seqs = self._stream_seqs.get(ack.stream_id)
        if ack.rejected:
            item = self._unacked.pop((ack.stream_id, ack.seq), None)
            if item is not None:
                if seqs is not None:
                    seqs.remove(ack.seq)
                packets = item.meta.packets if item.size else 0  # a gap's packets are counted lost already
                self._release(item, unlink)
                self.rejected_packets += packets
                # Refused for good (the collector counts the refused chunk's packets itself when it knows the
                # pod): never sent again, so it cannot hold the stream, or the session, up.
                log.warning("collector refused chunk %d of stream %s for good (%d packets dropped, not sent "
                            "again): %s", ack.seq, ack.stream_id, packets, ack.reason)
                if packets:
                    self._refused.append((item.meta.capture_id, item.meta.stream_id, packets))
        else:
            while seqs and seqs[0] <= ack.seq:  # an ack covers every earlier chunk of its stream
                self._release(self._unacked.pop((ack.stream_id, seqs.popleft())), unlink)
        self._forget_if_done(ack.stream_id)

    def _release(self, item: _Item, unlink: list[str]) -> None:
        if item.path is not None:
            unlink.append(item.path)
        self._free(item)
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
        the final events of streams that ended lately, then the events that were never sent. Heartbeats and
        inventories of the old session are dropped."""
        with self._cond:
            starts = {id(m) for m in self._starts.values()}
            events = [m for m in self._queue if isinstance(m, ingest_pb2.AgentMessage)
                      and m.WhichOneof("kind") == "pod_event" and id(m) not in starts]
            unsent = {id(m) for m in events}
            now = time.monotonic()
            finals = [m for t, m in self._finals.values() if now - t < FINAL_EVENT_KEEP_S and id(m) not in unsent]
            self._acked_in_session = False
            self._queue = collections.deque()
            self._queue.extend(self._starts.values())
            self._queue.extend(self._unacked.values())
            self._queue.extend(finals)
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
        session's messages. Chunks come out as their serialized bytes (see
        ``podcap.agent.upload.encoded.serialize``)."""
        with self._cond:
            epoch = self._epoch
        return self._messages(first, epoch)

    def _messages(self, first: ingest_pb2.AgentMessage, epoch: int) -> Iterator[ingest_pb2.AgentMessage | bytes]:
        yield first
        while True:
            items: list[_Item] = []
            with self._cond:
                while not self._queue and self._epoch == epoch:
                    self._cond.wait()
                if self._epoch != epoch:
                    return
                head = self._queue.popleft()
                if head is _CLOSE:
                    return
                if isinstance(head, _Item):
                    if not self._live(head):
                        continue  # acknowledged (or refused) while it waited to be sent
                    head.sent = True
                    items.append(head)
                    if head.size <= BATCH_SMALL:
                        self._take_batch(items)
                else:
                    assert isinstance(head, ingest_pb2.AgentMessage)
                    msg: ingest_pb2.AgentMessage | bytes = head
            if items:  # spool files are read here, outside the lock
                chunks = [self._fit(it, c) for it, c in ((it, self._load(it)) for it in items) if c is not None]
                if not chunks:
                    continue
                msg = chunks[0].wire if len(chunks) == 1 else batch(chunks)
            yield msg

    def _fit(self, item: _Item, chunk: EncodedChunk) -> EncodedChunk:
        """``chunk`` if its message fits what the collector accepts, else a gap in its place (no lock held): a
        message past the collector's limit would end the session, and again after every reconnect."""
        limit = self.max_message
        if chunk.wire_len <= limit:
            return chunk
        gap = gap_chunk(item.meta, "rejected", item.meta.packets)
        with self._cond:
            if self._live(item):
                self._free(item)
                item.path = None
                item.chunk = gap
        log.error("chunk %d of stream %s is %d bytes, more than the collector accepts (%d): sent as a gap of %d "
                  "packets (rejected)", item.meta.seq, item.meta.stream_id, chunk.wire_len, limit, item.meta.packets)
        self.on_lost(item.meta.capture_id, item.meta.stream_id, "rejected", item.meta.packets)
        return gap

    def quarantine(self) -> tuple[int, int] | None:
        """After the collector ended sessions for a message it will never take (RESOURCE_EXHAUSTED,
        INVALID_ARGUMENT) while nothing was acknowledged: the largest chunk sent and not acknowledged becomes a gap
        (``rejected``), so that each such failure removes one suspect and no message is re-sent for ever. Returns
        (its sequence number, its message size), or None when no sent chunk holds records."""
        with self._cond:
            suspects = [it for it in self._unacked.values() if it.sent and it.size]
            if not suspects:
                return None
            item = max(suspects, key=lambda it: it.size)
            path, size = item.path, item.size
            self._free(item)
            item.path = None
            item.chunk = gap_chunk(item.meta, "rejected", item.meta.packets)
        if path is not None:
            _unlink([path])
        log.error("chunk %d of stream %s (%d packets) is taken for the message the collector refuses: it goes as a "
                  "gap (rejected) from now on", item.meta.seq, item.meta.stream_id, item.meta.packets)
        self.on_lost(item.meta.capture_id, item.meta.stream_id, "rejected", item.meta.packets)
        return item.meta.seq, size

    def acked_in_session(self) -> bool:
        """Whether the current session got any acknowledgement (it made progress)."""
        with self._cond:
            return self._acked_in_session

    def _live(self, item: _Item) -> bool:
        return self._unacked.get(item.key) is item

    def _take_batch(self, items: list[_Item]) -> None:
        """Take the small chunks queued right behind the first of ``items`` along, to travel as one message (caller
        holds the lock): many quiet pods cost one message per flush, not one each."""
        size = items[0].size
        deadline = time.monotonic() + BATCH_LINGER_S
        while len(items) < BATCH_MAX_CHUNKS:
            if not self._queue:
                # The capture loop cuts quiet pods' chunks one after another: linger a moment to take them along.
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left) or not self._queue:
                    break
            nxt = self._queue[0]
            if (not isinstance(nxt, _Item) or nxt.size > BATCH_SMALL
                    or size + nxt.size > min(BATCH_MAX_BYTES, self.max_message // 2)):
                break
            self._queue.popleft()
            if self._live(nxt):
                nxt.sent = True
                items.append(nxt)
                size += nxt.size

    def _load(self, item: _Item) -> EncodedChunk | None:
        """The chunk to send for ``item`` (no lock held): from memory, from its spool file, or — when that file
        cannot be read — a gap in its place. None when it was acknowledged meanwhile."""
        chunk, path = item.chunk, item.path
        if chunk is not None or path is None:
            return chunk
        try:
            with open(path, "rb") as f:
                return EncodedChunk.from_body(f.read())
        except (OSError, DecodeError) as e:
            with self._cond:
                if not self._live(item) or item.path != path:
                    return item.chunk  # acknowledged meanwhile (its file went with it)
                self._free(item)
                item.path = None
                item.chunk = gap_chunk(item.meta, "spool_error", item.meta.packets)
                gap = item.chunk
            log.error("spooled chunk %s unreadable (%s): %d packets lost", path, e, item.meta.packets)
            _unlink([path])
            self.on_lost(item.meta.capture_id, item.meta.stream_id, "spool_error", item.meta.packets)
            return gap

    # ---- introspection ----

    def pending(self) -> tuple[int, int]:
        """(unacknowledged chunks, bytes they hold)."""
        with self._cond:
            return len(self._unacked), self._mem + self._disk

    def held_by_stream(self) -> list[ingest_pb2.StreamHeld]:
        """What is held unacknowledged, per stream holding any (for heartbeats and registration): O(chunks held),
        which the buffer's caps bound, not the capture's age."""
        out: dict[str, ingest_pb2.StreamHeld] = {}
        with self._cond:
            for item in self._unacked.values():
                meta = item.meta
                entry = out.get(meta.stream_id)
                if entry is None:
                    entry = out[meta.stream_id] = ingest_pb2.StreamHeld(
                        capture_id=meta.capture_id, pod_uid=meta.pod_uid, stream_id=meta.stream_id)
                entry.held.chunks += 1
                if item.size:  # a gap holds no packets: they are counted lost
                    entry.held.bytes += item.size
                    entry.held.packets += meta.packets
        return list(out.values())

    def held(self) -> dict[str, int]:
        """Bytes each stream holds (streams holding any)."""
        with self._cond:
            return dict(self._held)

    def wait_drained(self, timeout: float) -> bool:
        """Wait until every chunk is acknowledged; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._unacked, timeout)


def _unlink(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
