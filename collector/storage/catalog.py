"""Capture metadata in SQLite next to the pcap files (``<data>/podcap.db``).

Holds what must outlive the collector process: each capture's request, state, times and end reason; per pod its
state and counters; per stream of a pod its format, last acknowledged chunk and accounting (``streams``); and the
segment index (file, bytes, packets, first/last timestamp) that says exactly which bytes of which file were
acknowledged. The capture manager writes a capture's rows in one transaction *after* syncing the pcap files and
*before* sending acknowledgements, so after a crash the database never claims more than the disk holds, and the
disk's surplus (never acknowledged, so the agents still hold it) is cut back on startup. WAL mode with
``synchronous=FULL`` makes each commit durable.

**The segment index is the home of closed segments** (the collector keeps only a pod's newest segment and those not
yet recorded in memory), so every write and read here costs what it touches, never what the capture has
accumulated: a commit inserts or updates only the segment rows that are new or changed and deletes the retired
ones by key (``PodCommit``); a pod's own row carries the running figures that answers need without counting rows
(``segments``, ``max_span_ns``); reads go through indexes: by position (the primary key: the oldest for retention,
a pod's whole list for a download), by time (``segments_by_time``: a window finds its segments between
``since - max_span`` and ``until``), and the partial index of segments not yet archived (the archiver's queue).

The schema has a version (``schema_version``) and a list of migrations, each run once in its own transaction, so a
data dir of any older collector opens.

A deleted capture's rows go in one transaction with its record in ``deletions`` (who, why, what was still to be
deleted in storage), which outlives it for a while so that ``list`` and ``status`` can say what became of it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from podcap.drops import CAUSES, Drops
from podcap.v1 import common_pb2, control_pb2

_SCHEMA_V1 = """
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


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


def _v1(db: sqlite3.Connection) -> None:
    """The tables as the first collectors made them, and the columns later ones added in place (a data dir from
    before the schema had a version may have any of them)."""
    for statement in _SCHEMA_V1.split(";"):
        if statement.strip():
            db.execute(statement)  # not executescript: it would commit the migration's transaction first
    if "orphan" not in _columns(db, "pods"):
        db.execute("ALTER TABLE pods ADD COLUMN orphan TEXT NOT NULL DEFAULT ''")
    if "archived" not in _columns(db, "segments"):
        db.execute("ALTER TABLE segments ADD COLUMN archived TEXT NOT NULL DEFAULT ''")


def _v2(db: sqlite3.Connection) -> None:
    """Closed segments live here only: a pod's running figures, and indexes by time and of what awaits archiving."""
    db.execute("ALTER TABLE pods ADD COLUMN segments INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE pods ADD COLUMN max_span_ns INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE pods SET segments = (SELECT COUNT(*) FROM segments s WHERE s.capture_id = pods.capture_id"
               " AND s.uid = pods.uid), max_span_ns = COALESCE((SELECT MAX(last_ts_ns - first_ts_ns) FROM segments s"
               " WHERE s.capture_id = pods.capture_id AND s.uid = pods.uid AND first_ts_ns > 0), 0)")
    db.execute("CREATE INDEX segments_by_time ON segments (capture_id, uid, first_ts_ns)")
    db.execute("CREATE INDEX segments_unarchived ON segments (capture_id, uid, idx) WHERE archived = ''")


def _v3(db: sqlite3.Connection) -> None:
    """Flight recorders (issue 24): one row per recorder, its ``RecorderStatus`` as the manager persists it."""
    db.execute("CREATE TABLE recorders (id TEXT PRIMARY KEY, status BLOB NOT NULL)")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2, _v3)


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
    """Everything persisted about one pod of a capture but its segments (``SegmentRow``, read by query)."""

    status: control_pb2.PodStatus
    format: common_pb2.PcapFormat | None
    stream_id: str
    last_seq: int
    # Cumulative packets/bytes ever stored (retention deletes do not lower them): limits count these.
    packets_total: int
    bytes_total: int
    segments: int = 0  # segments kept (retention's deletes lower it)
    max_span_ns: int = 0  # the longest time range of any segment the pod had (window reads search by it)
    # Loaded: every stream of the pod. Committed: only the streams whose row changed.
    streams: list[StreamRow] = field(default_factory=list)
    # Drops of chunks of streams never seen starting.
    orphan: Drops = field(default_factory=Drops)


@dataclass(frozen=True)
class PodCommit:
    """What one commit writes of a pod: its row, and only its segment rows that are new or changed and the indices
    of those retired — never the pod's whole index."""

    row: PodRow
    segments: list[SegmentRow] = field(default_factory=list)
    retired: list[int] = field(default_factory=list)


_SEGMENT_COLUMNS = "idx, bytes, packets, first_ts_ns, last_ts_ns, archived"


def _segment(r: tuple[int, int, int, int, int, str]) -> SegmentRow:
    return SegmentRow(*r)


class CaptureStore:
    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()

    def _migrate(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row is not None else 0
        if row is None:
            self._db.execute("INSERT INTO schema_version (version) VALUES (0)")
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.execute("BEGIN")
            try:
                step(self._db)
                self._db.execute("UPDATE schema_version SET version=?", (number,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_capture(self, row: CaptureRow) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO captures (id, request, state, created_ns, ended_ns, end_reason) VALUES (?,?,?,?,?,?)",
                (row.id, row.request.SerializeToString(), row.state, row.created_ns, row.ended_ns, row.end_reason),
            )

    def commit(self, capture_id: str, *, state: tuple[int, int, str] | None, pods: dict[str, PodCommit]) -> None:
        """Write, in one durable transaction, the capture's (state, ended_ns, end_reason) unless None (unchanged),
        and what changed of these pods (``PodCommit``)."""
        segments = [(capture_id, uid, s.index, s.bytes, s.packets, s.first_ts_ns, s.last_ts_ns, s.archived)
                    for uid, pc in pods.items() for s in pc.segments]
        retired = [(capture_id, uid, index) for uid, pc in pods.items() for index in pc.retired]
        streams = [(capture_id, uid, s.stream_id, s.ordinal,
                    s.format.SerializeToString() if s.format is not None else None, s.last_seq, s.counters)
                   for uid, pc in pods.items() for s in pc.row.streams]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                if state is not None:
                    self._db.execute("UPDATE captures SET state=?, ended_ns=?, end_reason=? WHERE id=?",
                                     (*state, capture_id))
                if pods:
                    self._db.executemany(
                        "INSERT INTO pods (capture_id, uid, status, format, stream_id, last_seq, packets_total,"
                        " bytes_total, orphan, segments, max_span_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                        " ON CONFLICT (capture_id, uid) DO UPDATE SET status=excluded.status,"
                        " format=excluded.format, stream_id=excluded.stream_id, last_seq=excluded.last_seq,"
                        " packets_total=excluded.packets_total, bytes_total=excluded.bytes_total,"
                        " orphan=excluded.orphan, segments=excluded.segments, max_span_ns=excluded.max_span_ns",
                        [(capture_id, uid, r.status.SerializeToString(),
                          r.format.SerializeToString() if r.format is not None else None, r.stream_id, r.last_seq,
                          r.packets_total, r.bytes_total, json.dumps(r.orphan.nonzero()), r.segments,
                          r.max_span_ns) for uid, r in ((uid, pc.row) for uid, pc in pods.items())],
                    )
                if streams:
                    self._db.executemany(
                        "INSERT INTO streams (capture_id, uid, stream_id, ordinal, format, last_seq, counters)"
                        " VALUES (?,?,?,?,?,?,?) ON CONFLICT (capture_id, uid, stream_id) DO UPDATE SET"
                        " ordinal=excluded.ordinal, format=excluded.format, last_seq=excluded.last_seq,"
                        " counters=excluded.counters", streams)
                if retired:
                    self._db.executemany("DELETE FROM segments WHERE capture_id=? AND uid=? AND idx=?", retired)
                if segments:
                    self._db.executemany(
                        "INSERT INTO segments (capture_id, uid, idx, bytes, packets, first_ts_ns, last_ts_ns,"
                        " archived) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (capture_id, uid, idx) DO UPDATE SET"
                        " bytes=excluded.bytes, packets=excluded.packets, first_ts_ns=excluded.first_ts_ns,"
                        " last_ts_ns=excluded.last_ts_ns, archived=excluded.archived", segments)
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

    # ---- flight recorders (issue 24; podcap.collector.recorders) ----

    def put_recorder(self, status: control_pb2.RecorderStatus) -> None:
        """Insert or replace a recorder's row (its whole status: request, state, pods, saves)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO recorders (id, status) VALUES (?,?)",
                             (status.id, status.SerializeToString()))

    def recorders(self) -> list[control_pb2.RecorderStatus]:
        with self._lock:
            rows = self._db.execute("SELECT status FROM recorders ORDER BY rowid").fetchall()
        out = []
        for (blob,) in rows:
            st = control_pb2.RecorderStatus()
            st.ParseFromString(blob)
            out.append(st)
        return out

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
        """Every pod of the capture with its streams (its segments are read by the queries below)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT uid, status, format, stream_id, last_seq, packets_total, bytes_total, orphan, segments,"
                " max_span_ns FROM pods WHERE capture_id=? ORDER BY rowid", (capture_id,),
            ).fetchall()
            stream_rows = self._db.execute(
                "SELECT uid, stream_id, ordinal, format, last_seq, counters FROM streams WHERE capture_id=?"
                " ORDER BY uid, ordinal", (capture_id,),
            ).fetchall()
        streams: dict[str, list[StreamRow]] = {}
        for uid, stream_id, ordinal, fmt, last_seq, counters in stream_rows:
            streams.setdefault(uid, []).append(StreamRow(stream_id, ordinal, _format(fmt), last_seq, counters))
        out = []
        for uid, status, fmt, stream_id, last_seq, packets_total, bytes_total, orphan, nsegs, span in rows:
            st = control_pb2.PodStatus()
            st.ParseFromString(status)
            lost = {c: int(n) for c, n in json.loads(orphan or "{}").items() if c in CAUSES}
            out.append(PodRow(st, _format(fmt), stream_id, last_seq, packets_total, bytes_total, nsegs, span,
                              streams.get(uid, []), Drops(**lost)))
        return out

    # ---- a pod's segments, by index (each costs what it returns, whatever the pod's size) ----

    def _segments(self, query: str, args: tuple[object, ...]) -> list[SegmentRow]:
        with self._lock:
            return [_segment(r) for r in self._db.execute(
                f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE capture_id=? AND uid=? {query}", args)]

    def segments(self, capture_id: str, uid: str, *, after: int = 0, limit: int = -1) -> list[SegmentRow]:
        """The pod's segments after index ``after``, oldest first (``limit``: at most that many)."""
        return self._segments("AND idx > ? ORDER BY idx LIMIT ?", (capture_id, uid, after, limit))

    def newest_segment(self, capture_id: str, uid: str, *, before: int = 1 << 62) -> SegmentRow | None:
        """The pod's newest segment (of those before index ``before``)."""
        rows = self._segments("AND idx < ? ORDER BY idx DESC LIMIT 1", (capture_id, uid, before))
        return rows[0] if rows else None

    def oldest_index(self, capture_id: str, uid: str) -> int:
        """The index of the pod's oldest segment (0 when it has none)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(idx) FROM segments WHERE capture_id=? AND uid=?",
                                   (capture_id, uid)).fetchone()
        return int(row[0] or 0)

    def segments_overlapping(self, capture_id: str, uid: str, since_ns: int, until_ns: int,
                             max_span_ns: int) -> list[SegmentRow]:
        """The pod's segments whose time range overlaps [since, until] (0: unbounded), and those with no packets,
        in index order. A segment overlapping the window starts within ``max_span_ns`` (the longest range any of
        the pod's segments has) before ``since``, so the time index bounds the search on both sides."""
        lo = max(1, since_ns - max_span_ns) if since_ns else 1
        hi = until_ns if until_ns else (1 << 63) - 1
        rows = self._segments("AND first_ts_ns BETWEEN ? AND ? AND last_ts_ns >= ?",
                              (capture_id, uid, lo, hi, since_ns))
        rows += self._segments("AND first_ts_ns = 0", (capture_id, uid))
        return sorted(rows, key=lambda r: r.index)

    def unarchived_segments(self, capture_id: str, uid: str) -> list[SegmentRow]:
        """The pod's segments only the local tier holds, oldest first (the partial index: what awaits the bucket)."""
        return self._segments("AND archived = '' ORDER BY idx", (capture_id, uid))

    def archived_segments(self, capture_id: str, uid: str, first: int, end: int) -> list[SegmentRow]:
        """The pod's archived segments with ``first <= index < end``, in order."""
        return self._segments("AND idx >= ? AND idx < ? AND archived != '' ORDER BY idx",
                              (capture_id, uid, first, end))

    def archived_among(self, capture_id: str, uid: str, indices: Iterable[int]) -> list[SegmentRow]:
        """Of these segments of the pod, the archived ones (each found by its key)."""
        out = []
        for index in indices:
            out += self._segments("AND idx = ? AND archived != ''", (capture_id, uid, index))
        return out

    def archived_groups(self, capture_id: str, uid: str, width: int) -> set[int]:
        """``index // width`` of the pod's archived segments (which groups of ``width`` consecutive indices hold any:
        the bucket's pages). A scan of the pod's rows: for the second tier's description once after a start, not per
        round."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT idx / ? FROM segments WHERE capture_id=? AND uid=? AND"
                                    " archived != ''", (width, capture_id, uid)).fetchall()
        return {int(r[0]) for r in rows}


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
