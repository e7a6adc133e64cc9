"""Capture metadata in SQLite next to the pcap files (``<data>/podcap.db``).

Holds what must outlive the collector process: each capture's request, state, times and end reason; per pod its
state and counters; per stream of a pod its format, last acknowledged chunk and accounting (``streams``); and the
segment index (file, bytes, packets, first/last timestamp) that says exactly which bytes of which file were
acknowledged. The capture manager writes a
capture's rows in one transaction *after* syncing the pcap files and *before* sending acknowledgements, so after a
crash the database never claims more than the disk holds, and the disk's surplus (never acknowledged, so the
agents still hold it) is cut back on startup. WAL mode with ``synchronous=FULL`` makes each commit durable.

A deleted capture's rows go in one transaction with its record in ``deletions`` (who, why, what was still to be
deleted in storage), which outlives it for a while so that ``list`` and ``status`` can say what became of it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field

from podcap.drops import CAUSES, Drops
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
    status BLOB NOT NULL,
    format BLOB,
    stream_id TEXT NOT NULL DEFAULT '',
    last_seq INTEGER NOT NULL DEFAULT 0,
    packets_total INTEGER NOT NULL DEFAULT 0,
    bytes_total INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (capture_id, uid)
);
CREATE TABLE IF NOT EXISTS audit (
    unix_ns INTEGER NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,
    capture_id TEXT NOT NULL,
    target TEXT NOT NULL,
    filter TEXT NOT NULL,
    result TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS streams (
    capture_id TEXT NOT NULL,
    uid TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    format BLOB,
    last_seq INTEGER NOT NULL,
    counters TEXT NOT NULL,
    PRIMARY KEY (capture_id, uid, stream_id)
);
CREATE TABLE IF NOT EXISTS segments (
    capture_id TEXT NOT NULL,
    uid TEXT NOT NULL,
    idx INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    packets INTEGER NOT NULL,
    first_ts_ns INTEGER NOT NULL,
    last_ts_ns INTEGER NOT NULL,
    archived TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (capture_id, uid, idx)
);
CREATE TABLE IF NOT EXISTS deletions (
    capture_id TEXT PRIMARY KEY,
    deleted_ns INTEGER NOT NULL,
    record BLOB NOT NULL
);
"""

# Tables whose rows describe a capture's content rather than its history: every one with a capture_id column but
# these is emptied of a deleted capture's rows.
_KEPT_AFTER_DELETION = ("audit", "deletions")


@dataclass(frozen=True)
class CaptureRow:
    id: str
    request: control_pb2.StartCaptureRequest
    state: int
    created_ns: int
    ended_ns: int
    end_reason: str


@dataclass(frozen=True)
class SegmentRow:
    index: int
    bytes: int
    packets: int
    first_ts_ns: int
    last_ts_ns: int
    archived: str = ""  # where the second tier holds it ("" while only the local tier does)


@dataclass(frozen=True)
class StreamRow:
    """One stream of a pod: its format, the last chunk acknowledged, its accounting (``StreamState`` JSON)."""

    stream_id: str
    ordinal: int
    format: common_pb2.PcapFormat | None
    last_seq: int
    counters: str


@dataclass(frozen=True)
class PodRow:
    """Everything persisted about one pod of a capture."""

    status: control_pb2.PodStatus
    format: common_pb2.PcapFormat | None
    stream_id: str
    last_seq: int
    # Cumulative packets/bytes ever stored (retention deletes do not lower them): limits count these.
    packets_total: int
    bytes_total: int
    segments: list[SegmentRow] = field(default_factory=list)
    streams: list[StreamRow] = field(default_factory=list)
    # Drops of chunks of streams never seen starting.
    orphan: Drops = field(default_factory=Drops)


class CaptureStore:
    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(pods)")}
            if "orphan" not in columns:  # a data dir of an older collector
                self._db.execute("ALTER TABLE pods ADD COLUMN orphan TEXT NOT NULL DEFAULT ''")
            if "archived" not in {r[1] for r in self._db.execute("PRAGMA table_info(segments)")}:
                self._db.execute("ALTER TABLE segments ADD COLUMN archived TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_capture(self, row: CaptureRow) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO captures (id, request, state, created_ns, ended_ns, end_reason) VALUES (?,?,?,?,?,?)",
                (row.id, row.request.SerializeToString(), row.state, row.created_ns, row.ended_ns, row.end_reason),
            )

    def commit(self, capture_id: str, *, state: int, ended_ns: int, end_reason: str,
               pods: dict[str, PodRow]) -> None:
        """Write the capture's state and these pods' rows (segment index included) in one durable transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute("UPDATE captures SET state=?, ended_ns=?, end_reason=? WHERE id=?",
                                 (state, ended_ns, end_reason, capture_id))
                for uid, row in pods.items():
                    self._db.execute(
                        "INSERT INTO pods (capture_id, uid, status, format, stream_id, last_seq, packets_total,"
                        " bytes_total, orphan) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (capture_id, uid) DO UPDATE"
                        " SET status=excluded.status, format=excluded.format, stream_id=excluded.stream_id,"
                        " last_seq=excluded.last_seq, packets_total=excluded.packets_total,"
                        " bytes_total=excluded.bytes_total, orphan=excluded.orphan",
                        (capture_id, uid, row.status.SerializeToString(),
                         row.format.SerializeToString() if row.format is not None else None,
                         row.stream_id, row.last_seq, row.packets_total, row.bytes_total,
                         json.dumps(row.orphan.nonzero())),
                    )
                    self._db.executemany(
                        "INSERT INTO streams (capture_id, uid, stream_id, ordinal, format, last_seq, counters)"
                        " VALUES (?,?,?,?,?,?,?) ON CONFLICT (capture_id, uid, stream_id) DO UPDATE SET"
                        " ordinal=excluded.ordinal, format=excluded.format, last_seq=excluded.last_seq,"
                        " counters=excluded.counters",
                        [(capture_id, uid, s.stream_id, s.ordinal,
                          s.format.SerializeToString() if s.format is not None else None, s.last_seq, s.counters)
                         for s in row.streams],
                    )
                    self._db.execute("DELETE FROM segments WHERE capture_id=? AND uid=?", (capture_id, uid))
                    self._db.executemany(
                        "INSERT INTO segments (capture_id, uid, idx, bytes, packets, first_ts_ns, last_ts_ns,"
                        " archived) VALUES (?,?,?,?,?,?,?,?)",
                        [(capture_id, uid, s.index, s.bytes, s.packets, s.first_ts_ns, s.last_ts_ns, s.archived)
                         for s in row.segments],
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def delete_capture(self, capture_id: str, record: control_pb2.CaptureDeletion) -> None:
        """Remove every row of the capture (but its audit trail) and keep ``record`` of its deletion, in one durable
        transaction."""
        with self._lock:
            tables = [name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                      if name not in _KEPT_AFTER_DELETION
                      and "capture_id" in {r[1] for r in self._db.execute(f"PRAGMA table_info({name})")}]
            self._db.execute("BEGIN")
            try:
                for name in tables:
                    self._db.execute(f"DELETE FROM {name} WHERE capture_id=?", (capture_id,))  # noqa: S608
                self._db.execute("DELETE FROM captures WHERE id=?", (capture_id,))
                self._db.execute("INSERT OR REPLACE INTO deletions (capture_id, deleted_ns, record) VALUES (?,?,?)",
                                 (capture_id, record.deleted_unix_ns, record.SerializeToString()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def update_deletion(self, record: control_pb2.CaptureDeletion) -> None:
        with self._lock:
            self._db.execute("UPDATE deletions SET record=? WHERE capture_id=?",
                             (record.SerializeToString(), record.capture_id))

    def deletion(self, capture_id: str) -> control_pb2.CaptureDeletion | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM deletions WHERE capture_id=?", (capture_id,)).fetchone()
        return _deletion(row[0]) if row is not None else None

    def deletions(self, *, since_ns: int = 0, limit: int = 100, pending: bool = False,
                  ) -> list[control_pb2.CaptureDeletion]:
        """Deletions since ``since_ns``, newest first (``pending``: only those with storage still to delete)."""
        with self._lock:
            rows = self._db.execute("SELECT record FROM deletions WHERE deleted_ns >= ? ORDER BY deleted_ns DESC",
                                    (since_ns,)).fetchall()
        out = [_deletion(r[0]) for r in rows]
        return [d for d in out if d.pending][:limit] if pending else out[:limit]

    def forget_deletions(self, *, before_ns: int) -> None:
        """Forget deletions older than ``before_ns`` whose storage is gone (a pending one is kept until done)."""
        with self._lock:
            rows = self._db.execute("SELECT capture_id, record FROM deletions WHERE deleted_ns < ?",
                                    (before_ns,)).fetchall()
            done = [(cid,) for cid, blob in rows if not _deletion(blob).pending]
            self._db.executemany("DELETE FROM deletions WHERE capture_id=?", done)

    def add_audit(self, rec: control_pb2.AuditRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO audit (unix_ns, user, action, capture_id, target, filter, result, detail)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (rec.unix_ns, rec.user, rec.action, rec.capture_id, rec.target, rec.filter, rec.result, rec.detail),
            )

    def audit(self, *, limit: int, capture_id: str = "") -> list[control_pb2.AuditRecord]:
        query = "SELECT unix_ns, user, action, capture_id, target, filter, result, detail FROM audit"
        args: tuple[object, ...] = ()
        if capture_id:
            query += " WHERE capture_id=?"
            args = (capture_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY rowid DESC LIMIT ?", (*args, limit)).fetchall()
        return [control_pb2.AuditRecord(unix_ns=r[0], user=r[1], action=r[2], capture_id=r[3], target=r[4],
                                        filter=r[5], result=r[6], detail=r[7]) for r in rows]

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
                "SELECT uid, status, format, stream_id, last_seq, packets_total, bytes_total, orphan FROM pods"
                " WHERE capture_id=? ORDER BY rowid", (capture_id,),
            ).fetchall()
            stream_rows = self._db.execute(
                "SELECT uid, stream_id, ordinal, format, last_seq, counters FROM streams WHERE capture_id=?"
                " ORDER BY uid, ordinal", (capture_id,),
            ).fetchall()
            segs = self._db.execute(
                "SELECT uid, idx, bytes, packets, first_ts_ns, last_ts_ns, archived FROM segments WHERE capture_id=?"
                " ORDER BY uid, idx", (capture_id,),
            ).fetchall()
        by_uid: dict[str, list[SegmentRow]] = {}
        for uid, idx, nbytes, packets, first, last, archived in segs:
            by_uid.setdefault(uid, []).append(SegmentRow(idx, nbytes, packets, first, last, archived))
        streams: dict[str, list[StreamRow]] = {}
        for uid, stream_id, ordinal, fmt, last_seq, counters in stream_rows:
            streams.setdefault(uid, []).append(StreamRow(stream_id, ordinal, _format(fmt), last_seq, counters))
        out = []
        for uid, status, fmt, stream_id, last_seq, packets_total, bytes_total, orphan in rows:
            st = control_pb2.PodStatus()
            st.ParseFromString(status)
            lost = {c: int(n) for c, n in json.loads(orphan or "{}").items() if c in CAUSES}
            out.append(PodRow(st, _format(fmt), stream_id, last_seq, packets_total, bytes_total,
                              by_uid.get(uid, []), streams.get(uid, []), Drops(**lost)))
        return out


def _deletion(blob: bytes) -> control_pb2.CaptureDeletion:
    record = control_pb2.CaptureDeletion()
    record.ParseFromString(blob)
    return record


def _format(blob: bytes | None) -> common_pb2.PcapFormat | None:
    if blob is None:
        return None
    pf = common_pb2.PcapFormat()
    pf.ParseFromString(blob)
    return pf
