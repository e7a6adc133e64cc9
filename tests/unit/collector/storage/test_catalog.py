"""The catalog's schema: a data dir of any older collector opens (migrations run once, in order, each in its own
transaction), and a commit writes only what it is given."""

from __future__ import annotations

import os
import sqlite3

import pytest

from podcap.collector.storage.catalog import MIGRATIONS, CaptureRow, CaptureStore, PodCommit, PodRow, SegmentRow
from podcap.v1 import common_pb2, control_pb2

# The tables as collectors wrote them before the schema had a version (the first ones: no ``orphan``, no
# ``archived``; later ones added those in place).
LEGACY = """
CREATE TABLE captures (id TEXT PRIMARY KEY, request BLOB NOT NULL, state INTEGER NOT NULL, created_ns INTEGER NOT NULL,
    ended_ns INTEGER NOT NULL DEFAULT 0, end_reason TEXT NOT NULL DEFAULT '');
CREATE TABLE pods (capture_id TEXT NOT NULL REFERENCES captures(id), uid TEXT NOT NULL, status BLOB NOT NULL,
    format BLOB, stream_id TEXT NOT NULL DEFAULT '', last_seq INTEGER NOT NULL DEFAULT 0,
    packets_total INTEGER NOT NULL DEFAULT 0, bytes_total INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (capture_id, uid));
CREATE TABLE audit (unix_ns INTEGER NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL, capture_id TEXT NOT NULL,
    target TEXT NOT NULL, filter TEXT NOT NULL, result TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE streams (capture_id TEXT NOT NULL, uid TEXT NOT NULL, stream_id TEXT NOT NULL, ordinal INTEGER NOT NULL,
    format BLOB, last_seq INTEGER NOT NULL, counters TEXT NOT NULL, PRIMARY KEY (capture_id, uid, stream_id));
CREATE TABLE segments (capture_id TEXT NOT NULL, uid TEXT NOT NULL, idx INTEGER NOT NULL, bytes INTEGER NOT NULL,
    packets INTEGER NOT NULL, first_ts_ns INTEGER NOT NULL, last_ts_ns INTEGER NOT NULL,
    PRIMARY KEY (capture_id, uid, idx));
"""


def legacy_dir(path: str, *, archived_column: bool) -> None:
    db = sqlite3.connect(path)
    db.executescript(LEGACY)
    if archived_column:
        db.execute("ALTER TABLE pods ADD COLUMN orphan TEXT NOT NULL DEFAULT ''")
        db.execute("ALTER TABLE segments ADD COLUMN archived TEXT NOT NULL DEFAULT ''")
    req = control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="shop"))
    db.execute("INSERT INTO captures VALUES ('c1', ?, 3, 1, 2, 'done')", (req.SerializeToString(),))
    status = control_pb2.PodStatus(pod=common_pb2.Pod(namespace="shop", name="web", uid="u1"))
    db.execute("INSERT INTO pods (capture_id, uid, status, packets_total, bytes_total) VALUES ('c1', 'u1', ?, 9, 900)",
               (status.SerializeToString(),))
    db.executemany("INSERT INTO segments (capture_id, uid, idx, bytes, packets, first_ts_ns, last_ts_ns)"
                   " VALUES ('c1', 'u1', ?, 300, 3, ?, ?)", [(1, 100, 150), (2, 200, 290), (3, 0, 0)])
    db.commit()
    db.close()


@pytest.mark.parametrize("archived_column", [False, True])
def test_an_older_data_dir_opens_with_its_running_figures_computed_once(tmp_path: str, archived_column: bool) -> None:
    path = os.path.join(tmp_path, "podcap.db")
    legacy_dir(path, archived_column=archived_column)
    store = CaptureStore(path)
    try:
        (pod,) = store.pods("c1")
        assert (pod.segments, pod.max_span_ns, pod.packets_total) == (3, 90, 9)
        assert [s.index for s in store.segments("c1", "u1")] == [1, 2, 3]
        assert [s.index for s in store.segments_overlapping("c1", "u1", 160, 210, pod.max_span_ns)] == [2, 3]
        assert [s.index for s in store.unarchived_segments("c1", "u1")] == [1, 2, 3]
    finally:
        store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]
        plan = " ".join(r[3] for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT idx FROM segments WHERE capture_id='c1' AND uid='u1' AND first_ts_ns"
            " BETWEEN 1 AND 2"))
        assert "segments_by_time" in plan
    finally:
        db.close()
    CaptureStore(path).close()  # opened again: nothing left to migrate, nothing fails


def test_a_commit_writes_only_the_rows_it_is_given(tmp_path: str) -> None:
    store = CaptureStore(os.path.join(tmp_path, "podcap.db"))
    try:
        store.add_capture(CaptureRow("c1", control_pb2.StartCaptureRequest(), 1, 1, 0, ""))
        status = control_pb2.PodStatus(pod=common_pb2.Pod(namespace="shop", name="web", uid="u1"))
        row = PodRow(status, None, "", 0, 0, 0, segments=3, max_span_ns=10)
        store.commit("c1", state=None, pods={"u1": PodCommit(row, [SegmentRow(i, 100, 1, i, i + 10)
                                                                  for i in (1, 2, 3)])})
        # The open segment grew, the oldest was retired: one update, one delete, the others untouched.
        store.commit("c1", state=(3, 5, "done"), pods={"u1": PodCommit(row, [SegmentRow(3, 200, 2, 3, 20)], [1])})
        assert [(s.index, s.bytes) for s in store.segments("c1", "u1")] == [(2, 100), (3, 200)]
        assert store.newest_segment("c1", "u1") == SegmentRow(3, 200, 2, 3, 20)
        assert store.oldest_index("c1", "u1") == 2
        assert [(c.state, c.ended_ns, c.end_reason) for c in store.captures()] == [(3, 5, "done")]
    finally:
        store.close()
