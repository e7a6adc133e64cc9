"""Durability: the group commit that makes stored chunks acknowledged.

A chunk is written to its segment at once but acknowledged only here: every ~50 ms while ingest asks (else every second)
the committer takes a snapshot (the capture's state if it changed, then per dirty pod under its ``io_lock``: its row,
its streams and segments that changed and the segments retired since the last commit, each stream's last written chunk,
the writer's pending flush), then without any lock runs the device flushes and records the snapshot in SQLite in one
transaction, and only then sends the acknowledgements that snapshot made true — one message per agent. A commit writes
what changed, never a pod's whole segment index: its cost does not grow with the capture's age. Commits of one capture
run one at a time (``Capture.commit_lock``), so the database never goes back to an older snapshot. A failed commit
records and acknowledges nothing, and every dirty pod stays dirty (and everything it had to write stays to be written);
storing pauses. Ended captures change rarely (a late report, a chunk refused after the end) and their ending was
committed by whoever ended them: the loop looks at them once a second (``ENDED_INTERVAL_S``), not at every interval, so
many ended captures cost the commit loop nothing in between.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from podcap.collector.agents import AgentConnection
from podcap.collector.captures.model import Capture, PodState
from podcap.collector.captures.pods import close_writer
from podcap.collector.captures.streams import StreamState
from podcap.collector.captures.table import CaptureTable, StorageHealth
from podcap.collector.storage.base import PendingSync, StorageError
from podcap.collector.storage.catalog import CaptureStore, PodCommit
from podcap.v1 import ingest_pb2

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 0.05
ENDED_INTERVAL_S = 1.0
BUSY_POD_WAIT_S = 0.25

_Owed = tuple[PodState, StreamState, int, AgentConnection]


class Committer:
    def __init__(self, table: CaptureTable, store: CaptureStore, health: StorageHealth) -> None:
        self.table = table
        self.store = store
        self.health = health
        self._closing = threading.Event()
        self._wanted = threading.Event()
        # Observer of commit latency (the metrics module plugs a histogram in).
        self.observe: Callable[[float], None] = lambda _s: None
        self._thread = threading.Thread(target=self._loop, name="committer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Something waits for an acknowledgement: commit at the next interval."""
        self._wanted.set()

    def stop(self) -> None:
        self._closing.set()
        self._wanted.set()
        self._thread.join(timeout=5)

    def commit(self, cap: Capture, *, wait: bool = True) -> None:
        """Sync, record and acknowledge what the capture holds now (see the module docstring). Without ``wait``,
        a pod whose append takes longer than ``BUSY_POD_WAIT_S`` (a slow disk) is left for the next commit instead
        of holding up the others."""
        started = time.monotonic()
        with cap.commit_lock:
            if cap.deleted:  # its rows are gone with it: nothing to record, no one to acknowledge
                return
            snap = self._snapshot(cap, wait)
            if snap is None:
                return
            syncs, rows, committed, dirty, state = snap
            try:
                for pending in syncs:
                    pending.run()
                self.store.commit(cap.id, state=state if state != cap.recorded_state else None,
                                  pods={str(ps.pod.uid): pc for ps, pc in rows})
            except BaseException:
                for pending in syncs:
                    pending.close()
                with cap.lock:
                    for ps in dirty:
                        ps.dirty = True
                    cap.dirty = True
                raise
            with cap.lock:
                cap.recorded_state = state
                for ps, pc in rows:
                    ps.committed(pc)
            owed = self._settle(cap, committed)
        if committed:
            self.observe(time.monotonic() - started)
        self._acknowledge(cap, owed)

    def _snapshot(self, cap: Capture, wait: bool) -> tuple[list[PendingSync], list[tuple[PodState, PodCommit]],
                                                list[tuple[PodState, StreamState, int, AgentConnection | None]],
                                                list[PodState], tuple[int, int, str]] | None:
        """What this commit records. The capture's state first, then each dirty pod under its ``io_lock`` (no
        append in between): its writer's pending flush (the last partial block published: the only I/O here, not
        under the capture's lock), its row and its streams' positions. Rows are never older than the state."""
        with cap.lock:
            dirty = [ps for ps in cap.pods.values() if ps.dirty]
            if not cap.dirty and not dirty:
                return None
            state = (cap.state, cap.ended_ns, cap.end_reason)
            cap.dirty = False
        syncs: list[PendingSync] = []
        rows: list[tuple[PodState, PodCommit]] = []
        committed: list[tuple[PodState, StreamState, int, AgentConnection | None]] = []
        taken: list[PodState] = []
        try:
            for ps in dirty:
                if not ps.io_lock.acquire(timeout=-1 if wait else BUSY_POD_WAIT_S):
                    continue  # stuck in an append (a slow disk, say): it stays dirty for the next commit
                try:
                    if ps.writer is not None and ps.close_pending:
                        ps.writer.sync()  # rare (a close failed), and fatal to this commit if it fails again
                        close_writer(cap, ps)
                    pending = ps.writer.sync_later() if ps.writer is not None else None
                    if pending is not None:
                        syncs.append(pending)
                    with cap.lock:
                        rows.append((ps, ps.to_commit()))
                        for st in ps.streams.values():
                            if st.last_seq > st.committed_seq:
                                committed.append((ps, st, st.last_seq, st.ack_conn))
                        ps.dirty = False
                        taken.append(ps)
                finally:
                    ps.io_lock.release()
        except BaseException:
            for pending in syncs:
                pending.close()
            with cap.lock:  # nothing of this commit is recorded or acknowledged; every dirty pod stays dirty
                for ps in taken:
                    ps.dirty = True
                cap.dirty = True
            raise
        return syncs, rows, committed, taken, state

    @staticmethod
    def _settle(cap: Capture, committed: list[tuple[PodState, StreamState, int, AgentConnection | None]]
                ) -> list[_Owed]:
        owed: list[_Owed] = []
        with cap.lock:
            for ps, st, seq, conn in committed:
                st.committed_seq = max(st.committed_seq, seq)
                # The connection that wrote the chunk, and the one that sent it again meanwhile (an agent that
                # reconnected during the flush: it waits for this acknowledgement too).
                for to in {id(c): c for c in (conn, st.ack_conn) if c is not None}.values():
                    owed.append((ps, st, seq, to))
        return owed

    @staticmethod
    def _acknowledge(cap: Capture, owed: list[_Owed]) -> None:
        by_conn: dict[int, tuple[AgentConnection, list[ingest_pb2.ChunkAck]]] = {}
        for ps, st, seq, conn in owed:
            by_conn.setdefault(id(conn), (conn, []))[1].append(ingest_pb2.ChunkAck(
                capture_id=cap.id, pod_uid=ps.pod.uid, stream_id=st.id, seq=seq))
        for conn, acks in by_conn.values():  # one message per agent and commit, however many streams it covers
            if len(acks) == 1:
                conn.send(ingest_pb2.CollectorMessage(ack=acks[0]))
            else:
                conn.send(ingest_pb2.CollectorMessage(acks=ingest_pb2.AckBatch(acks=acks)))

    def _loop(self) -> None:
        ended_visited = 0.0
        while not self._closing.is_set():
            self._wanted.wait(1.0)
            if self._closing.wait(COMMIT_INTERVAL_S):
                break
            self._wanted.clear()
            now = time.monotonic()
            visit_ended = now - ended_visited >= ENDED_INTERVAL_S
            if visit_ended:
                ended_visited = now
            for cap in self.table.all():
                if not visit_ended and not cap.live:  # (read without its lock: a capture ending now is seen next)
                    continue
                try:
                    self.commit(cap, wait=False)
                except StorageError as e:
                    self.health.pause(f"cannot sync: {e}")
                except Exception:
                    log.exception("committing capture %s failed", cap.id)
