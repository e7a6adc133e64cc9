"""A capture's age does not make the collector's work grow (issue 22): the same steps on a capture of 100 segments
and on one of 1,000,000 (10 pods each) cost the same, counted in SQL statements, rows written and SQLite VM steps
(the rows and index pages a statement visits): a commit writes what changed, a start loads each pod's newest
segment, ``status`` and ``list`` answer from memory without a query, a time window finds its segment through the
time index, retention finds the oldest through the primary key.

The old segments are bulk-loaded through the catalog's own commit (what an aged collector's data dir holds: rows,
and the files of each pod's oldest and newest segment); everything measured then goes through the real path: a
``CaptureManager`` recovers the capture, the agent comes back, chunks are ingested, committed and acknowledged.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from podcap.collector.agents import AgentConnection, AgentRegistry
from podcap.collector.captures import recovery, retention
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.captures.segments import HEAD_SEGMENTS, SegmentIndex
from podcap.collector.storage.catalog import CaptureRow, CaptureStore, PodCommit, PodRow, SegmentRow, StreamRow
from podcap.collector.storage.local import LocalStorage
from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat
from podcap.names import NodeName, PodUid, new_capture_id
from podcap.pods import PodRef
from podcap.v1 import common_pb2, control_pb2, ingest_pb2

NODE = NodeName("node-a")
PODS = 10
SMALL, BIG = 10, 100_000  # segments per pod: 100 and 1,000,000 in all
SPACING_S = 1000  # segment k of a pod covers [T0 + k*SPACING, T0 + k*SPACING + SPAN]
SPAN_S = 500
DUE = 8  # retention measured: the 8 oldest segments of each pod are due
FMT = common_pb2.PcapFormat(linktype=1, snaplen=262144, nanosecond=True)
RECORD = 60


def pod_ref(p: int) -> PodRef:
    return PodRef("shop", f"web-{p}", PodUid(f"uid-{p}"), NODE, {"app": "web"})


def records(start: int, n: int, ts_s: int = 10) -> bytes:
    return b"".join(struct.pack("<IIII", ts_s, i, RECORD, RECORD) + i.to_bytes(4, "big") * (RECORD // 4)
                    for i in range(start, start + n))


SEGMENT_BYTES = FILE_HEADER_LEN + len(records(0, 1))  # each old segment: one record


class SqlCounter:
    """Statements run, rows written and VM steps on the catalog's connection while in the ``with`` block."""

    def __init__(self, store: CaptureStore) -> None:
        self.db: sqlite3.Connection = store._db  # the test looks inside: what the connection did
        self.statements = self.steps = self.rows_written = 0

    def _step(self) -> int:
        self.steps += 1
        return 0

    def _statement(self, _sql: str) -> None:
        self.statements += 1

    def __enter__(self) -> SqlCounter:
        self.statements = self.steps = 0
        self._changes = self.db.total_changes
        self.db.set_trace_callback(self._statement)
        self.db.set_progress_handler(self._step, 1)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.db.set_trace_callback(None)
        self.db.set_progress_handler(None, 1)
        self.rows_written = self.db.total_changes - self._changes


@dataclass
class Figures:
    startup: SqlCounter | None = None
    commits: list[tuple[int, int]] = field(default_factory=list)  # (statements, rows written) per commit
    status_statements: int = -1
    list_statements: int = -1
    window_steps: int = 0
    window_segments: int = 0
    head_steps: float = 0.0  # per segment loaded
    retention_commit: tuple[int, int] = (0, 0)
    retired: int = 0
    in_memory: int = 0  # segment objects the pods hold, all of them


def age(data: str, store: CaptureStore, per_pod: int, t0_s: int) -> str:
    """A running capture of ``PODS`` pods that stored ``per_pod`` segments each before the collector stopped."""
    cid = new_capture_id()
    req = control_pb2.StartCaptureRequest(
        target=control_pb2.Target(namespace="shop", selector="app=web"),
        rotation=control_pb2.Rotation(segment_bytes=64 << 10),
        retention=control_pb2.Retention(keep_seconds=(BIG + 10) * SPACING_S))  # due only when the test says
    store.add_capture(CaptureRow(cid, req, control_pb2.CAPTURE_STATE_RUNNING, time.time_ns(), 0, ""))
    pods: dict[str, PodCommit] = {}
    for p in range(PODS):
        ref = pod_ref(p)
        rel = os.path.join("captures", cid, ref.namespace, ref.name)
        rows = [SegmentRow(k, SEGMENT_BYTES, 1, (t0_s + k * SPACING_S) * 10**9,
                           (t0_s + k * SPACING_S + SPAN_S) * 10**9) for k in range(1, per_pod + 1)]
        for k in {1, per_pod, per_pod // 2}:  # the files recovery and the window read look at
            os.makedirs(os.path.join(data, rel), exist_ok=True)
            with open(os.path.join(data, rel, f"{k:06d}.pcap"), "wb") as f:
                f.write(FileFormat(1, 262144, True).header() + records(k, 1, t0_s + k * SPACING_S))
        status = control_pb2.PodStatus(pod=ref.to_proto(), state=common_pb2.POD_CAPTURE_STATE_CAPTURING, path=rel,
                                       packets=per_pod, bytes=per_pod * SEGMENT_BYTES, segments=per_pod)
        stream = StreamRow(f"s-old-{p}", 1, FMT, per_pod, json.dumps({"stored": per_pod}))
        pods[str(ref.uid)] = PodCommit(PodRow(status, FMT, stream.stream_id, per_pod, per_pod,
                                              per_pod * SEGMENT_BYTES, per_pod, SPAN_S * 10**9, [stream]), rows)
    store.commit(cid, state=None, pods=pods)
    return cid


def chunk(cid: str, p: int, seq: int, data: bytes, n: int) -> ingest_pb2.PcapChunk:
    return ingest_pb2.PcapChunk(capture_id=cid, pod_uid=f"uid-{p}", stream_id=f"s-new-{p}", seq=seq, records=data,
                                packets=n)


def measure(data: str, per_pod: int) -> Figures:
    fig = Figures()
    t0_s = time.time_ns() // 10**9 - (per_pod + 1) * SPACING_S
    store = CaptureStore(os.path.join(data, "podcap.db"))
    cid = age(data, store, per_pod, t0_s)
    storage = LocalStorage(data)
    with SqlCounter(store) as fig.startup:
        recovery.load(SegmentIndex(store, storage))
    registry = AgentRegistry()
    mgr = CaptureManager(storage, registry, store)
    try:
        mgr.committer.stop()  # every commit measured is the test's own
        cap = mgr.get(cid)
        conn = AgentConnection(node=NODE, instance_id="back", version="t", pod_source="netns",
                               pods=[pod_ref(p) for p in range(PODS)])
        registry.register(conn)  # the agent comes back: the capture is sent to it again
        for p in range(PODS):
            mgr.on_pod_event(conn, ingest_pb2.PodCaptureEvent(
                capture_id=cid, pod_uid=f"uid-{p}", stream_id=f"s-new-{p}",
                state=common_pb2.POD_CAPTURE_STATE_CAPTURING, format=FMT, interface="veth"))
            mgr.on_chunk(conn, chunk(cid, p, 1, records(0, 10), 10))
        mgr.committer.commit(cap)
        # Chunks to two pods, a commit after each pair (every second chunk of a pod starts a segment).
        for seq in range(2, 8):
            for p in (0, 1):
                mgr.on_chunk(conn, chunk(cid, p, seq, records(seq * 500, 500), 500))
            with SqlCounter(store) as c:
                mgr.committer.commit(cap)
            fig.commits.append((c.statements, c.rows_written))
        acks = [a.seq for m in conn.queued() for a in ([m.ack] if m.WhichOneof("kind") == "ack" else m.acks.acks)
                if a.pod_uid == "uid-0"]
        assert max(acks) == 7  # acknowledged after each commit, as always
        with SqlCounter(store) as c:
            st = mgr.status(cap)
        fig.status_statements = c.statements
        assert sum(p.segments for p in st.pods) == PODS * per_pod + 6 + 6 + 8  # the old ones, and the new
        with SqlCounter(store) as c:
            [mgr.status(x) for x in mgr.all()]
        fig.list_statements = c.statements
        fig.in_memory = sum(len({id(s) for s in (*ps.unrecorded.values(), *ps.head, ps.last_segment,
                                                  ps.previous_segment) if s is not None})
                            for ps in cap.pods.values())
        k = per_pod // 2
        since, until = (t0_s + k * SPACING_S) * 10**9, (t0_s + k * SPACING_S + SPAN_S) * 10**9
        with SqlCounter(store) as c:
            pods = list(mgr.pod_files(cap, ["web-0"], since_ns=since, until_ns=until))
        fig.window_steps = c.steps
        ((_ps, _fmt, files),) = pods
        fig.window_segments = len(files)
        for f, _n in files:
            f.close()
        # Retention: the 8 oldest of each pod become due (a clock the test chooses).
        now = (t0_s + DUE * SPACING_S + SPAN_S + (BIG + 10) * SPACING_S) * 10**9 + 1
        retired = retention.retire(mgr.index, cap, now)
        retention.delete(retired)
        fig.retired = len(retired)
        with SqlCounter(store) as c:
            mgr.committer.commit(cap)
        fig.retention_commit = (c.statements, c.rows_written)
        for ps in cap.pods.values():  # what retention reads when a pod's head runs out
            ps.head.clear()
        with SqlCounter(store) as c:
            loaded = sum(mgr.index.load_head(cap, ps) for ps in cap.pods.values())
        fig.head_steps = c.steps / loaded
    finally:
        mgr.close()
        store.close()
    return fig


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield {"small": measure(str(tmp_path_factory.mktemp("small")), SMALL),
           "big": measure(str(tmp_path_factory.mktemp("big")), BIG)}


def test_a_commit_writes_what_changed_whatever_the_capture_holds(figures: dict[str, Figures]) -> None:
    small, big = figures["small"].commits, figures["big"].commits
    assert small == big
    assert all(rows <= 6 for _statements, rows in big)  # 2 pods, 2 streams, 1-2 segments each


def test_status_and_list_run_no_query(figures: dict[str, Figures]) -> None:
    for fig in figures.values():
        assert fig.status_statements == 0 and fig.list_statements == 0
    # Memory holds a few segments per pod, whatever the capture has: retention's next oldest, the newest, those
    # the next commit writes.
    assert figures["small"].in_memory <= figures["big"].in_memory <= PODS * (HEAD_SEGMENTS + 2)


def test_a_start_reads_each_pods_newest_not_its_history(figures: dict[str, Figures]) -> None:
    small, big = figures["small"].startup, figures["big"].startup
    assert small is not None and big is not None
    assert big.statements == small.statements
    assert big.steps < 1.5 * small.steps, (big.steps, small.steps)


def test_a_time_window_finds_its_segment_through_the_index(figures: dict[str, Figures]) -> None:
    small, big = figures["small"], figures["big"]
    assert small.window_segments == big.window_segments == 1
    assert big.window_steps < 1.5 * small.window_steps, (big.window_steps, small.window_steps)


def test_retention_reads_the_oldest_and_deletes_by_key(figures: dict[str, Figures]) -> None:
    small, big = figures["small"], figures["big"]
    assert small.retired == big.retired == PODS * DUE
    assert small.retention_commit == big.retention_commit
    assert big.retention_commit[1] == PODS * DUE + PODS  # the deleted rows and each pod's own
    assert big.head_steps < 1.5 * small.head_steps, (big.head_steps, small.head_steps)
