"""``CaptureManager``: a capture's lifecycle, and the one object the servicers talk to.

It starts a capture (validate, choose pods, persist, dispatch), stops it (the agents are told, the capture waits
while they keep delivering, ``STOP_GRACE_S`` of silence and ``STOP_MAX_S`` at most), ends it (every pod's stream
ended, duration or a limit reached) and, with a ticker, enforces duration, the stop grace and age-based retention.
Everything else is a component it wires together and delegates to:

- ``placement``: which agent captures which pod, agent and cluster events;
- ``events``: the agents' reports on their streams; ``held``: what they hold unacknowledged;
- ``chunks``: chunk ingest, stage by stage;
- ``committer``: durability and acknowledgements; ``recovery``: the captures found at startup; ``archiver``:
  closed segments to the second tier of tiered storage; ``lifecycle``: deleting captures, on request and by the
  policy for ended ones;
- ``retention``, ``reads`` (downloads and followers), over the storage interface (``podcap.collector.storage``)
  and the segment index (``segments``: closed segments live in the catalog, not in memory).

Concurrency: one lock per capture guards its pods and counters, and is never held across I/O: each pod's writer
does its I/O under the pod's own ``io_lock`` (taken first), so the pods of a capture that spans many nodes are
stored in parallel (``pods``); commits of a capture run one at a time under ``commit_lock``; the capture table's
lock guards only the id mapping. Agent
events arrive on each agent's reader thread, user requests on gRPC worker threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from podcap.collector.agents import AgentConnection, AgentRegistry
from podcap.collector.captures import reads, recovery, retention
from podcap.collector.captures.archiver import ARCHIVE_INTERVAL_S, Archiver
from podcap.collector.captures.backlog import Clock
from podcap.collector.captures.chunks import ChunkIngest
from podcap.collector.captures.committer import Committer
from podcap.collector.captures.events import PodEvents
from podcap.collector.captures.follow import Subscription
from podcap.collector.captures.held import HeldReports
from podcap.collector.captures.lifecycle import POLICY_INTERVAL_S, DiskUsage, Lifecycle, LifecyclePolicy
from podcap.collector.captures.model import ACTIVE, TERMINAL, Capture, PodState
from podcap.collector.captures.placement import Placement, new_pod_state
from podcap.collector.captures.pods import request_close, settle_closes
from podcap.collector.captures.requests import save_target, validate_request
from podcap.collector.captures.segments import SegmentIndex
from podcap.collector.captures.table import STOP_GRACE_S, CaptureTable, StorageHealth, grace_starts
from podcap.collector.captures.target_objects import ObjectTargets
from podcap.collector.kube.inventory import ClusterInventory
from podcap.collector.storage.base import CaptureStorage
from podcap.collector.storage.catalog import CaptureRow, CaptureStore
from podcap.collector.targets import TargetSpec
from podcap.formats.pcap import FileFormat
from podcap.names import NodeName, new_capture_id
from podcap.pods import PodRef
from podcap.v1 import common_pb2, control_pb2, ingest_pb2

log = logging.getLogger(__name__)


class CaptureManager:
    def __init__(self, storage: CaptureStorage, registry: AgentRegistry, store: CaptureStore, *,
                 cluster: ClusterInventory | None = None, local_cap_bytes: int = 0,
                 archive_interval_s: float = ARCHIVE_INTERVAL_S, clock: Clock = time.time,
                 policy: LifecyclePolicy | None = None, data_dir: str = "",
                 disk_usage: Callable[[], DiskUsage] | None = None,
                 policy_interval_s: float = POLICY_INTERVAL_S) -> None:
        self.storage = storage
        self.registry = registry
        self.store = store
        self.index = SegmentIndex(store, storage)
        self.table = CaptureTable()
        self.health = StorageHealth()
        self._closing = threading.Event()
        self.committer = Committer(self.table, store, self.health)
        # ``clock``: the wall clock of the archive backlog's ages (tests: a fake one)
        self.archiver = Archiver(self.table, self.index, self.committer, interval_s=archive_interval_s, clock=clock)
        self.lifecycle = Lifecycle(self.table, storage, store, self.health, stop=self._stop_now,
                                   exclusive=self.archiver.exclusive, policy=policy or LifecyclePolicy(),
                                   data_dir=data_dir,
                                   disk_usage=disk_usage, interval_s=policy_interval_s)
        self.health.full_hint = self.lifecycle.full_hint
        self._downloaded = 0  # pcap bytes sent by downloads (a metric)
        self._downloaded_lock = threading.Lock()
        self.placement = Placement(self.table, registry, cluster)
        # Workload, Service and node targets: what they stand for, and the Services' endpoint watches.
        self.objects = ObjectTargets(cluster.api if cluster is not None else None, registry)
        self.events = PodEvents(self.table, storage, on_terminal=self._maybe_finish)
        self.held = HeldReports(self.table)
        self.chunks = ChunkIngest(self.table, storage, self.index, self.health, wake_committer=self.committer.wake,
                                  begin_stop=self._begin_stop, closing=self._closing,
                                  local_room=lambda: self.archiver.local_room(local_cap_bytes),
                                  stored=self.archiver.note_stored)
        registry.subscribe(self.placement)
        if cluster is not None:
            cluster.subscribe(self.placement)
        for cap in recovery.load(self.index, adopt=self.archiver.adopt):
            self.table.add(cap)
            if cap.state == control_pb2.CAPTURE_STATE_RUNNING:
                self.objects.recover(cap, self.placement.reconsider)
        self._ticker = threading.Thread(target=self._tick_loop, name="capture-ticker", daemon=True)
        self._ticker.start()
        self.committer.start()
        self.archiver.start()
        self.lifecycle.start()

    @property
    def paused(self) -> str:
        """Why storing is paused ("" while it works)."""
        return self.health.paused

    @property
    def commit_seconds(self) -> Callable[[float], None]:
        return self.committer.observe

    @commit_seconds.setter
    def commit_seconds(self, observe: Callable[[float], None]) -> None:
        self.committer.observe = observe

    # ---- the control API ----

    def start(self, req: control_pb2.StartCaptureRequest) -> Capture:
        """Validate, resolve, persist and dispatch a capture. Raises the errors of ``validate_request`` and
        ``Placement.choose``."""
        spec = self.objects.resolve(req, validate_request(req))
        try:
            pods = (self.objects.node_pods(spec) if spec.object is not None and spec.object.is_node
                    else self.placement.choose(req, spec))
        except BaseException:
            self.objects.discard(spec)
            raise
        cap = self._create(req, spec, pods)
        log.info("capture %s started: %d pods, filter %r", cap.id, len(pods), req.settings.filter)
        self.placement.dispatch_starts(cap, list(cap.pods.values()))
        if spec.members is not None:  # a Service's endpoints: follow them (and catch a change since they were read)
            self.objects.follow(cap, self.placement.reconsider)
            self.placement.reconsider(cap)
        return cap

    def start_save(self, req: control_pb2.StartCaptureRequest, pods: list[PodRef]) -> Capture:
        """Create (and persist) a recorder's save: a capture of ``pods`` whose streams the recorder manager asks the
        agents for (``SavePodWindow``), so nothing is dispatched here; its pods wait as PENDING."""
        cap = self._create(req, save_target(req), pods)
        log.info("save %s of recorder %s created: %d pods", cap.id, req.save.recorder_id, len(pods))
        return cap

    def _create(self, req: control_pb2.StartCaptureRequest, spec: TargetSpec, pods: list[PodRef]) -> Capture:
        """A new capture of ``pods``, persisted (catalog row, first commit) and in the table: nothing dispatched."""
        cap = Capture(new_capture_id(), req, spec, time.time_ns())
        for pod in pods:
            cap.pods[pod.uid] = new_pod_state(cap, pod)
        self.archiver.adopt(cap)
        self.store.add_capture(CaptureRow(cap.id, req, cap.state, cap.created_ns, 0, ""))
        cap.recorded_state = (cap.state, 0, "")
        self.committer.commit(cap)
        self.table.add(cap)
        return cap

    def add_save_pods(self, cap: Capture, pods: list[PodRef]) -> None:
        """Pods that join a save still waiting for its window (they are committed with the capture)."""
        with cap.lock:
            for pod in pods:
                if pod.uid not in cap.pods:
                    cap.pods[pod.uid] = new_pod_state(cap, pod)
                    cap.request.target.pod_names.append(pod.name)
            cap.target = save_target(cap.request)
            cap.dirty = True
        self.committer.commit(cap)

    def capturable_pods(self) -> list[PodRef]:
        """Pods a capture started now could cover (every namespace; the servicer filters by permission)."""
        return self.placement.capturable()

    def get(self, capture_id: str) -> Capture:
        """Raises CaptureNotFoundError (saying when, by whom and why for a capture that was deleted)."""
        cap = self.table.find(capture_id)
        if cap is None:
            raise self.lifecycle.not_found(capture_id)
        return cap

    def delete(self, capture_id: str, *, by: str, force: bool = False) -> control_pb2.CaptureDeletion:
        """Delete a capture for a user (``lifecycle.Lifecycle.delete``)."""
        reason = "podcap delete --force" if force else "podcap delete"
        return self.lifecycle.delete(capture_id, by=by, reason=reason, force=force)

    def deleted(self) -> list[control_pb2.CaptureDeletion]:
        """Captures deleted recently, newest first."""
        return self.lifecycle.recent()

    def note_downloaded(self, nbytes: int) -> None:
        with self._downloaded_lock:
            self._downloaded += nbytes

    @property
    def downloaded_bytes(self) -> int:
        """Pcap bytes sent by downloads since the collector started."""
        return self._downloaded

    def all(self) -> list[Capture]:
        return self.table.all()

    def status(self, cap: Capture) -> control_pb2.CaptureStatus:
        st = cap.status(self.health.paused)
        if cap.request.HasField("save"):
            with cap.lock:
                st.save.CopyFrom(cap.request.save)
        st.archive_backlog_bytes, st.archive_oldest_seconds, st.archive_error = self.archiver.status(cap)
        agents: dict[str, str] = {}
        for p in st.pods:
            if p.pod.node not in agents:
                agents[p.pod.node] = self.registry.describe(NodeName(p.pod.node))
            p.agent = agents[p.pod.node]
        return st

    def stop(self, capture_id: str, reason: str = "stopped by user", *, wait: float = STOP_GRACE_S) -> Capture:
        cap = self.get(capture_id)
        self._begin_stop(cap, reason)
        cap.ended.wait(wait)
        return cap

    def follow(self, capture_id: str, selectors: list[str]) -> Subscription:
        """A live view of the capture's packets from now on (ended at once if the capture is over)."""
        cap = self.get(capture_id)
        return reads.follow(cap, selectors, self.status(cap))

    def unfollow(self, capture_id: str, sub: Subscription) -> None:
        reads.unfollow(self.get(capture_id), sub)

    def pod_files(
        self, cap: Capture, selectors: list[str], *, since_ns: int = 0, until_ns: int = 0
    ) -> Iterator[tuple[PodState, FileFormat, list[tuple[BinaryIO, int]]]]:
        return reads.pod_files(self.index, cap, selectors, since_ns=since_ns, until_ns=until_ns)

    # ---- from the agents ----

    def on_pod_event(self, conn: AgentConnection, ev: ingest_pb2.PodCaptureEvent) -> None:
        self.events.on_pod_event(conn, ev)

    def on_chunk(self, conn: AgentConnection, chunk: ingest_pb2.PcapChunk,
                 records: memoryview | None = None) -> ingest_pb2.ChunkAck | None:
        return self.chunks.on_chunk(conn, chunk, records)

    def on_oversized(self, conn: AgentConnection, chunk: ingest_pb2.PcapChunk, size: int,
                     limit: int) -> ingest_pb2.ChunkAck | None:
        """A chunk in a message of ``size`` bytes, over the declared ``limit``. Raises ChunkRejectedError (unless
        it is a copy of a chunk already written)."""
        return self.chunks.refuse_oversized(conn, chunk, size, limit)

    def on_held(self, conn: AgentConnection, report: Iterable[ingest_pb2.StreamHeld]) -> None:
        """The agent's complete report of what it holds unacknowledged (at registration, with each heartbeat)."""
        self.held.apply(conn.node, report)

    # ---- ending ----

    def _stop_now(self, cap: Capture) -> None:
        """End a running capture at once (it is about to be deleted: no stop grace for its agents' last chunks)."""
        self._begin_stop(cap, "stopped to be deleted (podcap delete --force)")
        self._maybe_finish(cap, force=True)

    def _begin_stop(self, cap: Capture, reason: str) -> None:
        with cap.lock:
            if cap.state != control_pb2.CAPTURE_STATE_RUNNING:
                return
            cap.state = control_pb2.CAPTURE_STATE_STOPPING
            cap.end_reason = reason
            grace_starts(cap)
            cap.dirty = True
            # A pod whose agent is away too: it may return within the grace and deliver what it holds.
            nodes: set[NodeName] = {ps.pod.node for ps in cap.pods.values()
                                    if ps.state in ACTIVE or ps.state == common_pb2.POD_CAPTURE_STATE_NO_AGENT}
        log.info("capture %s stopping: %s", cap.id, reason)
        self.placement.stop_on(cap, nodes)
        self._maybe_finish(cap)

    def _maybe_finish(self, cap: Capture, *, force: bool = False) -> None:
        """End the capture once every pod is terminal (or the stop grace expired)."""
        with cap.lock:
            if not cap.live:
                return
            pods = list(cap.pods.values())
            all_terminal = bool(pods) and all(p.state in TERMINAL for p in pods)
            if cap.state == control_pb2.CAPTURE_STATE_RUNNING:
                if not all_terminal or cap.target.dynamic:
                    return
                cap.end_reason = "every pod's stream ended"
            elif not all_terminal and not force:
                return
            for ps in pods:
                if ps.state not in TERMINAL:
                    ps.state = common_pb2.POD_CAPTURE_STATE_DONE
                    ps.message = ps.message or "no final report from the agent before the stop grace expired"
                ps.abandon_streams()
                request_close(ps)
                ps.dirty = True
            failed = [p for p in pods if p.state == common_pb2.POD_CAPTURE_STATE_FAILED]
            if pods and len(failed) == len(pods) and cap.packets_total == 0:
                cap.state = control_pb2.CAPTURE_STATE_FAILED
                cap.end_reason = "every pod failed: " + "; ".join(
                    sorted({f"{p.pod.display}: {p.message}" for p in failed})
                )[:2000]
            else:
                cap.state = control_pb2.CAPTURE_STATE_DONE
            cap.ended_ns = time.time_ns()
            cap.dirty = True
        settle_closes(cap)
        self.committer.commit(cap)
        cap.ended.set()
        self.objects.release(cap)
        with cap.lock:
            followers, cap.followers = cap.followers, []
        for sub in followers:
            sub.end(self.status(cap))
        log.info("capture %s ended (%s): %d packets, %d bytes", cap.id, cap.end_reason, cap.packets_total,
                 cap.bytes_total)

    # ---- background ----

    def _tick_loop(self) -> None:
        last_retention = 0.0
        while not self._closing.wait(0.2):
            self.registry.expire()  # nodes whose agent did not come back within its grace
            now_ns = time.time_ns()
            for cap in self.table.all():
                if cap.state == control_pb2.CAPTURE_STATE_RUNNING and cap.deadline_ns and now_ns >= cap.deadline_ns:
                    self._begin_stop(cap, "duration reached")
                elif cap.state == control_pb2.CAPTURE_STATE_STOPPING and time.monotonic() >= cap.stop_deadline:
                    self._maybe_finish(cap, force=True)
            if time.monotonic() - last_retention >= 1.0:
                last_retention = time.monotonic()
                for cap in self.table.live():
                    if cap.request.retention.keep_seconds:
                        retention.delete(retention.retire(self.index, cap, now_ns))

    def close(self) -> None:
        """Persist everything; running captures stay RUNNING in the database and resume at the next start."""
        self._closing.set()
        self._ticker.join(timeout=5)
        self.objects.close()
        self.lifecycle.stop()
        self.archiver.stop()
        self.committer.stop()
        for cap in self.table.all():
            with cap.lock:
                for ps in cap.pods.values():
                    if ps.writer is not None:
                        request_close(ps)
                        ps.dirty = True
            settle_closes(cap)
            try:
                self.committer.commit(cap)
            except Exception:
                log.exception("final commit of capture %s failed", cap.id)
