"""Chunk ingest: every chunk an agent sends, stored in its stream's order, as a chain of small stages.

``route`` finds the chunk's capture, pod and stream (a chunk of a capture or pod the collector does not have is
refused; one of a stream the pod never started is refused and its packets counted), ``dedupe`` answers chunks
seen before (acknowledged now if durable, with the next commit if only written), ``admit`` decides what the
capture still takes (nothing after its end or a reached limit), ``cut`` walks the records in C and cuts them at
the capture's packet, byte and time limits, ``write`` appends them to the pod's segment and offers them to
followers, ``account`` counts what the chunk carried and lost and marks the chunk for the next commit.

A pod's chunks are stored one at a time under its ``io_lock``; the capture's lock is held only for the
bookkeeping between the stages, never across the append, so the pods of a capture are stored in parallel.

Nothing about one chunk stops its stream: a missing sequence number is logged, a malformed chunk or one past a
limit is counted under its cause (``podcap.drops``) and acknowledged like the others. A storage error leaves
everything as it was and ``on_chunk`` retries the whole chunk until storage works again (pausing: the agent's
stream is not read meanwhile, so HTTP/2 flow control pushes back and the agent spools).

A chunk the collector will never store is refused in-band (a rejected ``ChunkAck`` with the reason), never by
ending the session: one of a capture, pod or stream it does not have, or one in a message larger than the limit it
declared to the agents (``refuse_oversized``: the agent cuts its chunks below that limit, so this is an agent that
did not, and gRPC's own receive limit sits above it so that the collector gets to answer). The agent drops a
refused chunk and sends nothing in its place; the collector counts its packets (and the losses it carried) as
the pod's: ``rejected`` for a stream it knows, with the chunk's sequence number taken (a copy that comes again is
a duplicate, not a second loss), with the pod's orphans for a stream it never saw start. A chunk the agent itself
found too large travels as a gap counting ``rejected`` and is counted like any gap.
"""

from __future__ import annotations

import collections
import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from podcap.collector.agents import AgentConnection
from podcap.collector.captures import retention
from podcap.collector.captures.model import Capture, PodState
from podcap.collector.captures.pods import Gap, file_format, note_closed, note_gaps, open_writer
from podcap.collector.captures.segments import SegmentIndex
from podcap.collector.captures.streams import StreamState
from podcap.collector.captures.table import CaptureTable, StorageHealth, heard_from
from podcap.collector.storage.base import CaptureStorage, StorageError
from podcap.drops import Drops
from podcap.errors import PodcapError
from podcap.formats.pcap import FileFormat, PcapFormatError, first_timestamp_ns, scan_records
from podcap.names import PodUid
from podcap.v1 import ingest_pb2

log = logging.getLogger(__name__)

STORAGE_RETRY_S = 1.0


class ChunkRejectedError(PodcapError):
    """An agent sent a chunk that can never be stored (of a capture, pod or stream the collector does not have)."""


def oversized_reason(size: int, limit: int) -> str:
    return f"chunk of {size} bytes exceeds the collector's limit of {limit} bytes"


class LocalTierFullError(StorageError):
    """What waits for the bucket in the data dir reached ``--local-cap-bytes``."""


@dataclass
class _Outcome:
    """What became of one chunk's packets."""

    stored: int = 0
    lost: Drops | None = None  # in-band: what the agent lost right before these records
    extra: Drops | None = None  # what the collector does not keep of this chunk, by cause
    limit_hit: str = ""


class _LimitStops:
    """Stops of captures whose limit a chunk reached, begun off the agent's stream (stopping talks to the agents,
    whose chunks this thread may be storing): one thread at a time drains them, started when the first waits and
    ending when none does."""

    def __init__(self, begin_stop: Callable[[Capture, str], None]) -> None:
        self.begin_stop = begin_stop
        self._lock = threading.Lock()
        self._waiting: collections.deque[tuple[Capture, str]] = collections.deque()
        self._running = False

    def request(self, cap: Capture, reason: str) -> None:
        with self._lock:
            self._waiting.append((cap, reason))
            if self._running:
                return
            self._running = True
        threading.Thread(target=self._drain, name="limit-stops", daemon=True).start()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    self._running = False
                    return
                cap, reason = self._waiting.popleft()
            try:
                self.begin_stop(cap, reason)
            except Exception:
                log.exception("capture %s: stopping (%s) failed", cap.id, reason)


class ChunkIngest:
    def __init__(self, table: CaptureTable, storage: CaptureStorage, index: SegmentIndex, health: StorageHealth, *,
                 wake_committer: Callable[[], None], begin_stop: Callable[[Capture, str], None],
                 closing: threading.Event, local_room: Callable[[], str] = lambda: "",
                 stored: Callable[[int], None] = lambda _n: None) -> None:
        self.table = table
        self.storage = storage
        self.index = index
        self.health = health
        self.wake_committer = wake_committer
        self.begin_stop = begin_stop
        self._limit_stops = _LimitStops(begin_stop)
        self.closing = closing
        # "" while the local tier may take more; else why not (tiered storage whose bucket is behind)
        self.local_room = local_room
        self.stored = stored  # told the bytes of each append (what the local tier now holds more)

    def on_chunk(self, conn: AgentConnection, chunk: ingest_pb2.PcapChunk,
                 records: memoryview | None = None) -> ingest_pb2.ChunkAck | None:
        """Store a chunk (its records are ``records`` when given, else ``chunk.records``). Returns an
        acknowledgement to send now (a duplicate of something committed) or None (the committer acknowledges it
        once durable). Raises ChunkRejectedError; blocks while storage is failing."""
        while True:
            try:
                return self._store(conn, chunk, chunk.records if records is None else records)
            except StorageError as e:
                if isinstance(e, LocalTierFullError):
                    self.health.pause(f"data dir full: {e}")
                elif e.disk_full:
                    self.health.pause(f"data dir full: {e}{self.health.full_hint()}", disk_full=True)
                else:
                    self.health.pause(f"storage failing: {e}")
                if self.closing.wait(STORAGE_RETRY_S):
                    raise ChunkRejectedError("collector shutting down") from e

    def refuse_oversized(self, conn: AgentConnection, chunk: ingest_pb2.PcapChunk, size: int,
                         limit: int) -> ingest_pb2.ChunkAck | None:
        """A chunk in a message of ``size`` bytes, over the declared ``limit``: counted (see the module docstring)
        and refused (raises ChunkRejectedError); a copy of a chunk already handled is answered as a duplicate."""
        reason = oversized_reason(size, limit)
        cap = self.table.find(chunk.capture_id)
        if cap is None:
            raise ChunkRejectedError(f"{reason} (and capture {chunk.capture_id!r} is unknown)")
        try:
            ps, st = self._route(cap, conn, chunk)
        except ChunkRejectedError as e:
            raise ChunkRejectedError(f"{reason} (and {e})") from e
        gaps: list[Gap] = []
        with ps.io_lock:
            with cap.lock:
                seen, ack = _dedupe(cap, ps, st, conn, chunk)
                if seen:
                    return ack
                out = _Outcome(lost=Drops.from_proto(chunk.lost), extra=Drops(rejected=chunk.packets))
                self._account(cap, ps, st, conn, chunk, out, gaps)
            note_gaps(self.storage, cap, gaps)
        raise ChunkRejectedError(reason)

    def _store(self, conn: AgentConnection, chunk: ingest_pb2.PcapChunk,
               records: bytes | memoryview) -> ingest_pb2.ChunkAck | None:
        cap = self.table.find(chunk.capture_id)
        if cap is None:
            raise ChunkRejectedError(f"chunk for unknown capture {chunk.capture_id!r}")
        ps, st = self._route(cap, conn, chunk)
        gaps: list[Gap] = []
        retired: retention.Retired = []
        # One chunk of a pod at a time (de-duplication and order hold across the agent's sessions); other pods of
        # the capture go on meanwhile: the capture's lock is taken only between this chunk's I/O.
        with ps.io_lock:
            with cap.lock:
                seen, ack = _dedupe(cap, ps, st, conn, chunk)
                if seen:
                    return ack
                if chunk.seq != st.last_seq + 1:
                    log.error("capture %s: pod %s: chunks %d..%d of stream %s never came; storing on", cap.id,
                              ps.pod.display, st.last_seq + 1, chunk.seq - 1, st.id)
                out = _Outcome(lost=Drops.from_proto(chunk.lost), extra=_admit(cap, chunk, records))
            if out.extra is None:
                out.extra = Drops()
                self._write(cap, ps, st, chunk, records, out)
                retired = retention.retire(self.index, cap, time.time_ns(), only=ps)
            with cap.lock:
                self._account(cap, ps, st, conn, chunk, out, gaps)
            note_gaps(self.storage, cap, gaps)
        retention.delete(retired)
        if out.limit_hit and out.limit_hit != "duration reached":
            self._limit_stops.request(cap, out.limit_hit)
        return None

    def _route(self, cap: Capture, conn: AgentConnection,
               chunk: ingest_pb2.PcapChunk) -> tuple[PodState, StreamState]:
        """The chunk's pod and stream; a chunk of neither is refused (ChunkRejectedError), an unknown stream's
        packets noted as a gap first."""
        gaps: list[Gap] = []
        try:
            with cap.lock:
                ps = cap.pods.get(PodUid(chunk.pod_uid))
                if ps is None or ps.pod.node != conn.node:
                    raise ChunkRejectedError(f"chunk for pod {chunk.pod_uid!r}, which capture {cap.id} does not "
                                             f"have on node {conn.node}")
                st = ps.streams.get(chunk.stream_id)
                if st is None:
                    _orphan(cap, ps, chunk, gaps)
                    raise ChunkRejectedError(f"chunk of stream {chunk.stream_id!r}, which pod {ps.pod.display} "
                                             f"never started in capture {cap.id}")
                return ps, st
        finally:
            note_gaps(self.storage, cap, gaps)

    def _write(self, cap: Capture, ps: PodState, st: StreamState, chunk: ingest_pb2.PcapChunk,
               data: bytes | memoryview, out: _Outcome) -> None:
        """Append what the capture's limits let through of a chunk's records to the pod's segment and offer it to
        the capture's followers. Caller holds ``ps.io_lock`` only. The records are cut and their packets and bytes
        reserved against the capture's limits under the capture's lock, appended without it. Raises StorageError
        (nothing is counted then)."""
        assert out.extra is not None
        if full := self.local_room():
            raise LocalTierFullError(errno.ENOSPC, full)  # paused as on a full disk: the agents keep their data
        fmt = file_format(st.fmt)
        writer = open_writer(self.storage, cap, ps, fmt)
        now = time.time()
        with cap.lock:
            late = _admit(cap, chunk, data)  # the capture may have ended, or reached a limit, meanwhile
            if late is not None:
                out.extra.add(late)
                return
            cost = writer.header_cost(len(data), now)
            cut = _cut(cap, ps, st, chunk, data, fmt, cost, out)
            if cut is None:
                return
            data, packets, last_ts_ns = cut
            cap.packets_total += packets
            cap.bytes_total += len(data) + cost
        first = first_timestamp_ns(data, fmt)
        added, appended = 0, False
        try:
            added, _started = writer.append(data, packets=packets, first_ts_ns=first, last_ts_ns=last_ts_ns, now=now)
            appended = True
        finally:
            with cap.lock:
                if not appended:  # failed: the reservation goes back (the caller retries the whole chunk)
                    cap.packets_total -= packets
                    cap.bytes_total -= len(data) + cost
                else:
                    cap.bytes_total += added - (len(data) + cost)
                # A segment opened by a write that then failed (disk full) is still the pod's segment.
                if writer.current is not None:
                    ps.segment_written(writer.current)
                note_closed(cap, ps)  # a rotation closed the previous segment (also when the write then failed)
        with cap.lock:
            if cap.followers:
                pod_pb, block = ps.pod.to_proto(), bytes(data)
                for sub in cap.followers:
                    if sub.wants(pod_pb):
                        sub.offer(pod_pb, st.fmt, block, packets)
            out.stored = packets
            ps.packets_total += packets
            ps.bytes_total += added
        self.stored(added)

    def _account(self, cap: Capture, ps: PodState, st: StreamState, conn: AgentConnection,
                 chunk: ingest_pb2.PcapChunk, out: _Outcome, gaps: list[Gap]) -> None:
        """Count the chunk (only now that it is done with: a storage error above retries it from the start), list
        its losses for the gap log and mark it for the next commit."""
        assert out.lost is not None and out.extra is not None
        first_ns = chunk.first_ts_ns
        for cause, n in out.lost.nonzero().items():
            gaps.append(Gap(ps, st.id, cause, n, first_ns if not out.stored else st.last_ts_ns,
                            chunk.last_ts_ns if not out.stored else first_ns))
        for cause, n in out.extra.nonzero().items():
            gaps.append(Gap(ps, st.id, cause, n, first_ns, chunk.last_ts_ns))
        st.inband.add(out.lost)
        st.local.add(out.extra)
        st.stored += out.stored
        st.last_ts_ns = max(st.last_ts_ns, chunk.last_ts_ns)
        st.last_seq = chunk.seq
        st.ack_conn = conn
        ps.dirty = True
        self.wake_committer()
        self.health.resume()
        if out.limit_hit and out.limit_hit != "duration reached":
            cap.limit_reached = out.limit_hit


def _orphan(cap: Capture, ps: PodState, chunk: ingest_pb2.PcapChunk, gaps: list[Gap]) -> None:
    """A chunk of a stream the pod never started: refused, and its packets counted."""
    lost = Drops.from_proto(chunk.lost)
    lost.rejected += chunk.packets
    for cause, n in lost.nonzero().items():
        gaps.append(Gap(ps, "", cause, n, chunk.first_ts_ns, chunk.last_ts_ns))
    ps.orphan.add(lost)
    ps.dirty = True
    cap.dirty = True


def _dedupe(cap: Capture, ps: PodState, st: StreamState, conn: AgentConnection,
            chunk: ingest_pb2.PcapChunk) -> tuple[bool, ingest_pb2.ChunkAck | None]:
    """Whether the chunk was seen before, and then its acknowledgement to send now (durable) or None (written:
    acknowledged with the next commit). A chunk not seen before is word from its agent (``heard_from``)."""
    if chunk.seq <= st.committed_seq:
        return True, ingest_pb2.ChunkAck(capture_id=cap.id, pod_uid=ps.pod.uid, stream_id=st.id,
                                         seq=st.committed_seq)
    if chunk.seq <= st.last_seq:
        st.ack_conn = conn
        return True, None
    heard_from(cap)
    return False, None


def _admit(cap: Capture, chunk: ingest_pb2.PcapChunk, records: bytes | memoryview) -> Drops | None:
    """None when the capture takes the chunk's records; else what it does not keep of them, and why."""
    if not (chunk.packets or len(records)):
        return Drops()  # a gap: nothing to store
    if not cap.live:
        return Drops(late=chunk.packets)
    if cap.limit_reached:
        return Drops(past_limit=chunk.packets)
    return None


def _cut(cap: Capture, ps: PodState, st: StreamState, chunk: ingest_pb2.PcapChunk, data: bytes | memoryview,
         fmt: FileFormat, header_cost: int, out: _Outcome) -> tuple[bytes | memoryview, int, int] | None:
    """The records the capture's limits let through, their count and last timestamp; None when none are stored
    (counted in ``out``)."""
    assert out.extra is not None
    limits = cap.request.limits
    max_packets = limits.max_packets - cap.packets_total if limits.max_packets else None
    max_bytes = limits.max_bytes - cap.bytes_total - header_cost if limits.max_bytes else None
    until = cap.deadline_ns or None
    try:
        scan = scan_records(data, fmt, max_packets=max_packets, max_bytes=max_bytes, until_ns=until)
    except PcapFormatError as e:
        log.error("capture %s: pod %s: malformed chunk %d of stream %s not stored: %s", cap.id, ps.pod.display,
                  chunk.seq, st.id, e)
        out.extra.rejected = chunk.packets
        return None
    if scan.length < len(data):
        out.limit_hit = _cut_reason(data, scan.length, fmt, scan.packets, max_packets, until)
        out.extra.past_limit = max(0, chunk.packets - scan.packets)
        data = data[: scan.length]
    elif chunk.packets and scan.packets != chunk.packets:
        log.error("capture %s: pod %s: chunk %d of stream %s says %d packets, holds %d; not stored", cap.id,
                  ps.pod.display, chunk.seq, st.id, chunk.packets, scan.packets)
        out.extra.rejected = chunk.packets
        return None
    if not scan.packets:
        return None
    return data, scan.packets, scan.last_ts_ns


def _cut_reason(data: bytes | memoryview, cut: int, fmt: FileFormat, packets: int, max_packets: int | None,
                until: int | None) -> str:
    """Which limit stopped ``scan_records`` before the record at ``cut``."""
    if max_packets is not None and packets >= max_packets:
        return "max-packets reached"
    if until is not None and first_timestamp_ns(memoryview(data)[cut:], fmt) > until:
        return "duration reached"
    return "max-bytes reached"
