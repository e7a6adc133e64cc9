"""Capture metadata in SQLite next to the pcap files (``<data>/podcap.db``).

Holds what must outlive the collector process: each capture's request, state, times and end reason, and per-pod
state and counters. The pcap segments themselves are the source of truth for packets; counters here are what
``podcap status`` shows. Writes are small and rare (state changes, plus counters flushed about once a second by
the capture manager), so one connection behind a lock is enough. WAL mode keeps readers off writers' backs.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass

from podcap.v1 import common_pb2, control_pb2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS captures (
    id TEXT PRIMARY KEY,
    request BLOB NOT NULL,
    state INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    ended_ns INTEGER NOT NULL DEFAULT 0,
    end_reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS pods (
    capture_id TEXT NOT NULL REFERENCES captures(id),
    uid TEXT NOT NULL,
    pod BLOB NOT NULL,
    state INTEGER NOT NULL,
    packets INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    segments INTEGER NOT NULL DEFAULT 0,
    kernel_received INTEGER NOT NULL DEFAULT 0,
    kernel_dropped INTEGER NOT NULL DEFAULT 0,
    kernel_if_dropped INTEGER NOT NULL DEFAULT 0,
    agent_dropped INTEGER NOT NULL DEFAULT 0,
    interface TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    format BLOB,
    PRIMARY KEY (capture_id, uid)
);
"""


@dataclass(frozen=True)
class CaptureRow:
    id: str
    request: control_pb2.StartCaptureRequest
    state: int
    created_ns: int
    ended_ns: int
    end_reason: str


@dataclass(frozen=True)
class PodRow:
    capture_id: str
    status: control_pb2.PodStatus
    format: common_pb2.PcapFormat | None


class CaptureStore:
    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_capture(self, row: CaptureRow) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO captures (id, request, state, created_ns, ended_ns, end_reason) VALUES (?,?,?,?,?,?)",
                (row.id, row.request.SerializeToString(), row.state, row.created_ns, row.ended_ns, row.end_reason),
            )

    def update_capture(self, capture_id: str, *, state: int, ended_ns: int, end_reason: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE captures SET state=?, ended_ns=?, end_reason=? WHERE id=?",
                (state, ended_ns, end_reason, capture_id),
            )

    def save_pods(
        self, capture_id: str, pods: list[tuple[control_pb2.PodStatus, common_pb2.PcapFormat | None]]
    ) -> None:
        """Insert or update the rows of these pods in one transaction."""
        rows = [
            (
                capture_id, st.pod.uid, st.pod.SerializeToString(), st.state, st.packets, st.bytes, st.segments,
                st.kernel.received, st.kernel.dropped, st.kernel.if_dropped, st.agent_dropped_packets,
                st.interface, st.message, fmt.SerializeToString() if fmt is not None else None,
            )
            for st, fmt in pods
        ]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO pods (capture_id, uid, pod, state, packets, bytes, segments, kernel_received,"
                    " kernel_dropped, kernel_if_dropped, agent_dropped, interface, message, format)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT (capture_id, uid) DO UPDATE SET pod=excluded.pod, state=excluded.state,"
                    " packets=excluded.packets, bytes=excluded.bytes, segments=excluded.segments,"
                    " kernel_received=excluded.kernel_received, kernel_dropped=excluded.kernel_dropped,"
                    " kernel_if_dropped=excluded.kernel_if_dropped, agent_dropped=excluded.agent_dropped,"
                    " interface=excluded.interface, message=excluded.message, format=excluded.format",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def captures(self) -> list[CaptureRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, request, state, created_ns, ended_ns, end_reason FROM captures ORDER BY created_ns"
            ).fetchall()
        out = []
        for cid, req, state, created, ended, reason in rows:
            request = control_pb2.StartCaptureRequest()
            request.ParseFromString(req)
            out.append(CaptureRow(cid, request, state, created, ended, reason))
        return out

    def pods(self, capture_id: str) -> list[PodRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT pod, state, packets, bytes, segments, kernel_received, kernel_dropped, kernel_if_dropped,"
                " agent_dropped, interface, message, format FROM pods WHERE capture_id=? ORDER BY rowid",
                (capture_id,),
            ).fetchall()
        out = []
        for pod, state, packets, nbytes, segs, k_recv, k_drop, k_ifdrop, a_drop, iface, msg, fmt in rows:
            st = control_pb2.PodStatus(
                state=state, packets=packets, bytes=nbytes, segments=segs, agent_dropped_packets=a_drop,
                interface=iface, message=msg,
                kernel=common_pb2.KernelStats(received=k_recv, dropped=k_drop, if_dropped=k_ifdrop),
            )
            st.pod.ParseFromString(pod)
            pf = None
            if fmt is not None:
                pf = common_pb2.PcapFormat()
                pf.ParseFromString(fmt)
            out.append(PodRow(capture_id, st, pf))
        return out
