"""Deleting captures and the collector's policy for ended ones, through the real chunk path and storage (no
sockets): a deletion takes the files, every catalog row and leaves a record saying when, by whom and why (also
after a restart); a running capture needs force; ``--keep-ended`` and the data dir's budget delete ended captures,
the one that ended first first, and never a running one; a full data dir deletes to make room, and with nothing
left to delete the pause says so."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from podcap.collector.agents import AgentConnection, AgentRegistry
from podcap.collector.captures.chunks import ChunkRejectedError
from podcap.collector.captures.lifecycle import (
    COLLECTOR,
    CaptureDeletedError,
    CaptureRunningError,
    DiskUsage,
    LifecyclePolicy,
)
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.captures.table import CaptureNotFoundError
from podcap.collector.storage.base import SegmentInfo, StorageError
from podcap.collector.storage.catalog import CaptureStore
from podcap.collector.storage.local import LocalPodLocation, LocalStorage, PodWriter
from podcap.formats.pcap import FileFormat
from podcap.names import PodUid
from podcap.v1 import control_pb2
from tests.unit.collector.captures.test_capture_manager import PODS, chunk, records, sent, start

S = 1_000_000_000
T0 = 1_800_000_000 * S


class Disk(LocalStorage):
    """The data dir, which can be made full: appends fail with ENOSPC until a capture is removed."""

    full = False

    def pod(self, capture_id: str, namespace: str, pod_dir_name: str) -> LocalPodLocation:
        disk = self

        class Location(LocalPodLocation):
            def writer(self, fmt: FileFormat, *, segment_bytes: int, segment_seconds: int,
                       next_index: int) -> PodWriter:
                class Writer(PodWriter):
                    def append(self, records: bytes | memoryview, **kw: Any) -> tuple[int, SegmentInfo | None]:
                        if disk.full:
                            raise StorageError(errno.ENOSPC, "No space left on device")
                        return super().append(records, **kw)

                return Writer(self.directory, fmt, segment_bytes=segment_bytes, segment_seconds=segment_seconds,
                              next_index=next_index)

        return Location(super().pod(capture_id, namespace, pod_dir_name).directory)

    def remove(self, capture_id: str) -> None:
        super().remove(capture_id)
        self.full = False  # space came back


class Env:
    def __init__(self, data: str, policy: LifecyclePolicy | None = None) -> None:
        self.data = data
        self.registry = AgentRegistry()
        self.conn = AgentConnection(node=PODS[0].node, instance_id="inst", version="t", pod_source="netns",
                                    pods=list(PODS))
        self.registry.register(self.conn)
        self.store = CaptureStore(os.path.join(data, "podcap.db"))
        self.disk = Disk(data)
        self.used = 0  # what the filesystem holds besides the captures (for --max-data-percent)
        self.mgr = self.open(policy or LifecyclePolicy())

    def open(self, policy: LifecyclePolicy) -> CaptureManager:
        return CaptureManager(self.disk, self.registry, self.store, policy=policy, data_dir=self.data,
                              policy_interval_s=0, disk_usage=self.usage)

    def usage(self) -> DiskUsage:
        return DiskUsage(self.used + self.mgr.lifecycle.data_bytes(), 10 << 20)

    def capture(self, chunks: int, *, ended_ns: int = 0, seq: int = 1) -> str:
        """A capture of both pods holding ``chunks`` chunks of 100 records each per pod; ended at ``ended_ns`` if
        given (else running)."""
        cid = start(self.mgr, self.conn)
        for k in range(chunks):
            for p in PODS:
                self.mgr.on_chunk(self.conn, chunk(cid, p.uid, seq + k, records(k * 100, 100), 100))
        self.mgr.committer.commit(self.mgr.get(cid))
        if ended_ns:
            cap = self.mgr.get(cid)
            self.mgr.lifecycle.stop_capture(cap)
            assert cap.ended.is_set()
            cap.ended_ns = ended_ns
        return cid

    def dir(self, cid: str) -> str:
        return os.path.join(self.data, "captures", cid)

    def rows(self, cid: str) -> dict[str, int]:
        """Rows of the capture in every table of the catalog."""
        db = sqlite3.connect(os.path.join(self.data, "podcap.db"))
        try:
            out = {}
            for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"):
                column = "id" if name == "captures" else "capture_id"
                if column in {r[1] for r in db.execute(f"PRAGMA table_info({name})")}:
                    out[name] = db.execute(f"SELECT COUNT(*) FROM {name} WHERE {column}=?", (cid,)).fetchone()[0]
            return out
        finally:
            db.close()

    def close(self) -> None:
        self.mgr.close()
        self.store.close()


@pytest.fixture
def env(tmp_path: str) -> Iterator[Env]:
    e = Env(str(tmp_path))
    yield e
    e.close()


def test_delete_takes_files_and_rows_and_says_what_became_of_the_capture(env: Env, tmp_path: str) -> None:
    cid = env.capture(3, ended_ns=T0)
    other = env.capture(2, ended_ns=T0)
    env.store.add_audit(control_pb2.AuditRecord(user="alice", action="stop", capture_id=cid, result="allowed"))
    held = env.mgr.status(env.mgr.get(cid)).bytes
    assert os.path.isdir(env.dir(cid)) and env.rows(cid)["segments"] == 2 and held > 0

    d = env.mgr.delete(cid, by="alice")
    assert (d.capture_id, d.by, d.reason, d.bytes, d.local_bytes, d.pending) == \
        (cid, "alice", "podcap delete", held, held, "")
    assert not os.path.exists(env.dir(cid))
    rows = env.rows(cid)
    assert rows.pop("audit") == 1 and rows.pop("deletions") == 1  # its history stays
    assert set(rows.values()) == {0}, rows  # every row describing it is gone
    assert os.path.isdir(env.dir(other)) and env.rows(other)["segments"] == 2  # the other capture is untouched
    with pytest.raises(CaptureDeletedError, match=f"capture {cid} was deleted .* UTC by alice: podcap delete"):
        env.mgr.get(cid)
    assert [x.capture_id for x in env.mgr.deleted()] == [cid]
    with pytest.raises(CaptureDeletedError):  # deleting it again: what became of it, not a crash
        env.mgr.delete(cid, by="bob")
    with pytest.raises(CaptureNotFoundError, match="no capture 'nope12345678'"):
        env.mgr.delete("nope12345678", by="alice")

    # A restarted collector knows neither its rows nor its files, and still says what became of it.
    env.mgr.close()
    env.mgr = env.open(LifecyclePolicy())
    assert [c.id for c in env.mgr.all()] == [other]
    with pytest.raises(CaptureDeletedError, match="by alice"):
        env.mgr.get(cid)


def test_a_running_capture_is_deleted_only_with_force_which_stops_it_first(env: Env) -> None:
    cid = env.capture(2)
    with pytest.raises(CaptureRunningError, match=f"capture {cid} is running: stop it first.*--force"):
        env.mgr.delete(cid, by="alice")
    assert env.mgr.get(cid).live and os.path.isdir(env.dir(cid))
    sent(env.conn)
    d = env.mgr.delete(cid, by="alice", force=True)
    assert d.reason == "podcap delete --force (stopped it first)" and d.ended_unix_ns > 0
    assert {m.stop.capture_id for m in sent(env.conn) if m.WhichOneof("kind") == "stop"} == {cid}
    assert not os.path.exists(env.dir(cid)) and set(env.rows(cid).values()) <= {0, 1}
    # Its agents' late chunks are refused as of an unknown capture (rejected: the agent drops them).
    with pytest.raises(Exception, match="unknown capture"):
        env.mgr.chunks._store(env.conn, chunk(cid, PODS[0].uid, 9, records(0, 5), 5), records(0, 5))


def test_keep_ended_deletes_captures_the_one_that_ended_first_first_never_a_running_one(tmp_path: str) -> None:
    env = Env(str(tmp_path), LifecyclePolicy(keep_ended_s=100))
    try:
        running = env.capture(1)
        env.mgr.get(running).created_ns = T0 - 10_000 * S  # old, but running
        second = env.capture(1, ended_ns=T0 + 20 * S)
        first = env.capture(1, ended_ns=T0 + 10 * S)  # created after `second`, ended before it
        third = env.capture(1, ended_ns=T0 + 30 * S)
        assert env.mgr.lifecycle.run_once(now_ns=T0 + 105 * S) == []
        done = env.mgr.lifecycle.run_once(now_ns=T0 + 115 * S)
        assert [(d.capture_id, d.by, d.reason) for d in done] == \
            [(first, COLLECTOR, "ended 1m45s ago (--keep-ended 1m40s)")]
        assert [d.capture_id for d in env.mgr.lifecycle.run_once(now_ns=T0 + 10_000 * S)] == [second, third]
        assert [c.id for c in env.mgr.all()] == [running]
        assert all(not os.path.exists(env.dir(c)) for c in (first, second, third))
        audit = env.store.audit(limit=10, capture_id=first)
        assert [(a.user, a.action, a.result) for a in audit] == [(COLLECTOR, "delete", "allowed")]
        assert "--keep-ended" in audit[0].detail
        assert env.mgr.lifecycle.deleted_count["keep_ended"] == 3
    finally:
        env.close()


def test_the_byte_budget_deletes_ended_captures_until_under_and_never_a_running_one(env: Env) -> None:
    running = env.capture(6)
    b = env.capture(2, ended_ns=T0 + 1 * S)
    a = env.capture(2, ended_ns=T0 + 2 * S)
    c = env.capture(3, ended_ns=T0 + 3 * S)
    size = {cid: env.mgr.status(env.mgr.get(cid)).bytes for cid in (running, a, b, c)}
    total = sum(size.values())
    assert env.mgr.lifecycle.data_bytes() == total

    env.mgr.lifecycle.policy = LifecyclePolicy(max_data_bytes=total - size[b] + 1)  # deleting b is enough
    done = env.mgr.lifecycle.run_once()
    assert [d.capture_id for d in done] == [b]
    assert done[0].reason == f"the data dir is over its budget: {total / 1e3:.1f} kB of " \
        f"{(total - size[b] + 1) / 1e3:.1f} kB (--max-data-bytes)"
    assert env.mgr.lifecycle.run_once() == []  # under budget now

    env.mgr.lifecycle.policy = LifecyclePolicy(max_data_bytes=size[running] - 1)  # more than the ended ones hold
    assert [d.capture_id for d in env.mgr.lifecycle.run_once()] == [a, c]
    assert [x.id for x in env.mgr.all()] == [running] and os.path.isdir(env.dir(running))
    assert "over its budget" in env.mgr.lifecycle.nothing_left  # and nothing left to delete: said, not done
    assert env.mgr.lifecycle.full_hint() == "; nothing left to delete: every capture with data in the data dir " \
        "is running"
    assert env.mgr.lifecycle.deleted_count["disk_budget"] == 3
    assert env.mgr.lifecycle.deleted_bytes["disk_budget"] == size[a] + size[b] + size[c]


def test_the_percent_budget_counts_the_filesystem(env: Env) -> None:
    running = env.capture(2)
    old = env.capture(2, ended_ns=T0 + 1 * S)
    new = env.capture(2, ended_ns=T0 + 2 * S)
    env.used = 9 << 20  # the filesystem is mostly other things: 90 % + the captures
    env.mgr.lifecycle.policy = LifecyclePolicy(max_data_percent=90.0 + 100 * (
        env.mgr.lifecycle.data_bytes() - env.mgr.status(env.mgr.get(old)).bytes) / (10 << 20) - 0.01)
    done = env.mgr.lifecycle.run_once()
    assert [d.capture_id for d in done] == [old, new]  # the one that ended first, then still over: the next
    assert "% used, over" in done[0].reason and "(--max-data-percent)" in done[0].reason
    assert [x.id for x in env.mgr.all()] == [running]


def test_a_full_data_dir_deletes_to_make_room_and_else_says_nothing_is_left(tmp_path: str) -> None:
    env = Env(str(tmp_path), LifecyclePolicy(max_data_bytes=1 << 40))
    try:
        running = env.capture(1)
        ended = env.capture(1, ended_ns=T0)
        env.disk.full = True
        stuck = threading.Thread(target=env.mgr.on_chunk,
                                 args=(env.conn, chunk(running, PODS[0].uid, 2, records(100, 100), 100)))
        stuck.start()
        wait_for(lambda: env.mgr.paused.startswith("data dir full"))
        assert env.mgr.paused.endswith("; deleting the oldest ended captures to make room (disk budget)")
        assert env.mgr.status(env.mgr.get(running)).paused == env.mgr.paused
        (d,) = env.mgr.lifecycle.run_once()  # over any budget while full
        assert (d.capture_id, d.reason) == (ended, "the data dir is full")
        stuck.join(timeout=5)  # space came back: the chunk is stored, storing resumed
        assert not stuck.is_alive() and env.mgr.paused == ""

        env.disk.full = True  # full again, and only the running capture holds data

        def store_until_shutdown() -> None:
            with pytest.raises(ChunkRejectedError, match="shutting down"):
                env.mgr.on_chunk(env.conn, chunk(running, PODS[0].uid, 3, records(200, 100), 100))

        stuck = threading.Thread(target=store_until_shutdown)
        stuck.start()
        wait_for(lambda: env.mgr.paused.startswith("data dir full"))
        assert env.mgr.lifecycle.run_once() == []
        assert env.mgr.paused.endswith("; nothing left to delete: every capture with data in the data dir is "
                                       "running")
        assert [c.id for c in env.mgr.all()] == [running]
    finally:
        env.close()  # ends the chunk's retries
    stuck.join(timeout=5)


def test_without_a_budget_a_full_data_dir_says_how_to_make_room(env: Env) -> None:
    running = env.capture(1)
    env.capture(1, ended_ns=T0)
    env.disk.full = True
    stuck = threading.Thread(target=env.mgr.on_chunk,
                             args=(env.conn, chunk(running, PODS[0].uid, 2, records(100, 100), 100)))
    stuck.start()
    try:
        wait_for(lambda: env.mgr.paused.startswith("data dir full"))
        assert "no ended capture is deleted by the collector" in env.mgr.paused and "podcap delete" in env.mgr.paused
        assert env.mgr.lifecycle.run_once() == []  # no budget: nothing is deleted
        assert len(env.mgr.all()) == 2
    finally:
        env.disk.full = False
        stuck.join(timeout=5)
    assert env.mgr.get(running).pods[PodUid(PODS[0].uid)].packets_total == 200


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
