"""``RecorderManager``: recorders' lifecycle, their triggers and their saves; the one object the servicers use.

- **Start**: validate (``requests``), resolve the target exactly as a capture's (a workload's or Service's pods by
  ``ObjectTargets``, a Service's endpoints followed under the recorder's id until it stops; ``Placement.choose``:
  the API's watched cache or the agents' inventories, pods on nodes with an agent), persist, and send each pod's
  agent a ``StartPodRecording``. Pods that appear later and match a dynamic target join (the same pod events the capture
  manager attaches pods on). An agent that (re)registers is sent every wish again (it keeps its rings on disk, not
  our wishes), and every save of its pods not finished yet.
- **Triggers**: the pod watch's versions of a pod (``triggers.transitions``: restart, oomkilled, notready,
  deleted), the pod leaving the cache (deleted, evicted), the kubelet's ``Unhealthy`` Events (``unhealthy``), the
  agents' ``PacketTriggerFired``, and ``podcap trigger``. Each fired trigger joins a save still waiting for its
  window or, unless debounced, starts a new one (``windows``).
- **Saves** (``saves``): a save is a capture (``CaptureManager.start_save``: per-pod files, the same reads and
  accounting, out of retention since its request carries ``save``); it waits until its window has passed (so that
  later triggers can join it), then each pod's agent gets a ``SavePodWindow`` and uploads the window as the
  capture's ordinary stream. When the capture ends, each saved pod gets a ``PacketsSaved`` Event (``notify``).
- **Status**: the rings as the agents report them with every heartbeat (``on_rings``), kept in memory; the catalog
  keeps each recorder's request, pods and saves (``CaptureStore.put_recorder``), so recorders and their saves
  outlive a collector restart.

Locking: ``Recorder.lock`` guards one recorder; a capture's lock may be taken inside it, never the other way.
Agent messages arrive on agents' reader threads, pod events on the watch threads, user requests on gRPC workers,
and the ticker (dispatching due saves, announcing ended ones) runs on its own thread.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable

from podcap.collector.agents import AgentAbsence, AgentConnection, AgentListener, AgentRegistry
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.captures.placement import field_selector
from podcap.collector.kube.inventory import ClusterInventory, ClusterListener
from podcap.collector.kube.pods import PodHealth
from podcap.collector.kube.selectors import pod_fields
from podcap.collector.recorders import windows
from podcap.collector.recorders.model import Recorder, RingPod, from_status
from podcap.collector.recorders.notify import EventPoster, NoEvents
from podcap.collector.recorders.requests import validate_recorder
from podcap.collector.recorders.saves import Fire, SaveListener, Saves
from podcap.collector.recorders.triggers import Fired, transitions, trigger_word
from podcap.collector.recorders.unhealthy import UnhealthyWatch
from podcap.collector.storage.catalog import CaptureStore
from podcap.collector.targets import TargetSpec, parse_target
from podcap.errors import InvalidInputError, NotFoundError, PreconditionError
from podcap.names import NodeName, PodUid
from podcap.pods import PodRef
from podcap.v1 import control_pb2, ingest_pb2

log = logging.getLogger(__name__)

COLLECTOR = "podcap-collector"
RECORDER_PREFIX = "rec-"
# How long an agent keeps a ring after its pod left the node: a pod that is gone can still be saved meanwhile.
KEEP_GONE_MS = 3600_000
TICK_S = 0.2
# A trigger dated by the pod's status (a termination's finishedAt) is believed when at most this old.
EVENT_AGE_MAX_NS = 600 * 1_000_000_000
# Packet triggers are remembered this long (the agent re-sends one for 10 minutes after it fired).
FIRED_MEMORY_S = 15 * 60.0
MS = 1_000_000


class RecorderNotFoundError(NotFoundError):
    """No recorder with that id."""


class RecorderStoppedError(PreconditionError):
    """A trigger for a recorder that has been stopped."""


class PodNotInRecorderError(NotFoundError):
    """A trigger names a pod the recorder does not record."""


def new_recorder_id() -> str:
    """``rec-`` and 12 characters of [a-z0-9]: the agent's id syntax, never a capture id (those have no ``-``)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return RECORDER_PREFIX + "".join(secrets.choice(alphabet) for _ in range(12))


def is_recorder_id(text: str) -> bool:
    return text.startswith(RECORDER_PREFIX)


def _clock(ns: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ns / 1e9))


class RecorderManager(AgentListener, ClusterListener):
    def __init__(self, captures: CaptureManager, registry: AgentRegistry, store: CaptureStore, *,
                 cluster: ClusterInventory | None = None, events: EventPoster | None = None,
                 tick_s: float = TICK_S, watch_unhealthy: bool = False) -> None:
        self.captures = captures
        self.registry = registry
        self.store = store
        self.cluster = cluster
        self.events: EventPoster = events or NoEvents()
        self._lock = threading.Lock()  # the id mapping only
        self._recorders: dict[str, Recorder] = {}
        self._health: dict[PodUid, PodHealth] = {}
        self._health_lock = threading.Lock()
        self._stops_sent: set[tuple[str, str, str, str]] = set()  # (session, recorder, pod) told to go
        self._fired_seen: dict[tuple[str, str, int], float] = {}  # packet triggers had, for FIRED_MEMORY_S
        self.saves = Saves(captures, registry, self.events, self._persist)
        self._closing = threading.Event()
        self._load()
        if cluster is not None:
            for pod in cluster.pods():
                kp = cluster.get(pod.uid)
                if kp is not None:
                    self._health[pod.uid] = kp.health
        registry.subscribe(self)
        if cluster is not None:
            cluster.subscribe(self)
        # The kubelet's Unhealthy Events (needs `list`/`watch` on events; without it, that trigger never fires).
        self.unhealthy = UnhealthyWatch(cluster.api, self.on_unhealthy).start() \
            if cluster is not None and watch_unhealthy else None
        self._ticker = threading.Thread(target=self._tick_loop, args=(tick_s,), name="recorder-ticker", daemon=True)
        self._ticker.start()

    # ---- loading ----

    def _load(self) -> None:
        for st in sorted(self.store.recorders(), key=lambda s: s.created_unix_ns):
            try:
                spec = parse_target(st.request.target)
            except InvalidInputError:
                log.error("stored recorder %s has an invalid target; skipped", st.id)
                continue
            save_pods: dict[str, list[PodUid]] = {}
            for rs in st.saves:
                cap = self.captures.table.find(rs.capture_id)
                if cap is not None:
                    with cap.lock:
                        save_pods[rs.capture_id] = list(cap.pods)
                        cap.request.save.CopyFrom(rs.info)  # the catalog's capture row has the first version
            rec = from_status(st, spec, save_pods)
            self._recorders[rec.id] = rec
            if rec.recording:
                log.info("resuming recorder %s after a restart (%d pods)", rec.id, len(rec.pods))
                self._recover_target(rec)

    # ---- the control API ----

    def start(self, req: control_pb2.StartRecorderRequest, *, by: str) -> Recorder:
        """Validate, resolve, persist and dispatch a recorder. Raises the errors of ``validate_recorder`` and
        ``Placement.choose``."""
        full, spec = validate_recorder(req)
        # A workload or Service: resolved as a capture's (its selector stored in the request, a Service's endpoints
        # watched while the recorder records).
        as_capture = control_pb2.StartCaptureRequest(target=full.target, settings=full.settings)
        spec = self.captures.objects.resolve(as_capture, spec)
        try:
            pods = self.captures.placement.choose(as_capture, spec)
        except BaseException:
            self.captures.objects.discard(spec)
            raise
        full.target.CopyFrom(as_capture.target)
        rec = Recorder(new_recorder_id(), full, spec, time.time_ns(), by,
                       debounce=windows.Debounce(cooldown_ns=full.cooldown_seconds * 1_000_000_000,
                                                 per_hour=full.max_saves_per_hour))
        for pod in pods:
            rec.pods[pod.uid] = RingPod(pod)
        with rec.lock:
            self._persist(rec)
        with self._lock:
            self._recorders[rec.id] = rec
        log.info("recorder %s started: %d pods, keep %d bytes / %d s", rec.id, len(pods), full.keep_bytes,
                 full.keep_seconds)
        self._start_on(rec, list(rec.pods.values()))
        if spec.members is not None:  # a Service's endpoints: follow them (and catch a change since they were read)
            self.captures.objects.follow_key(rec.id, spec, lambda: self._reconsider(rec))
            self._reconsider(rec)
        return rec

    def get(self, recorder_id: str) -> Recorder:
        with self._lock:
            rec = self._recorders.get(recorder_id)
        if rec is None:
            raise RecorderNotFoundError(f"no recorder {recorder_id!r} (see `podcap list`)")
        return rec

    def all(self) -> list[Recorder]:
        with self._lock:
            return sorted(self._recorders.values(), key=lambda r: r.created_ns, reverse=True)

    def stop(self, recorder_id: str, *, reason: str = "stopped by user") -> Recorder:
        """End a recorder: saves still waiting are cut at now and sent, then the agents delete the rings (after
        finishing those saves)."""
        rec = self.get(recorder_id)
        with rec.lock:
            if not rec.recording:
                return rec
            now = time.time_ns()
            for save in rec.saves:
                if not save.info.dispatched:
                    w = save.window
                    w.to_ns = max(w.from_ns + 1, min(w.to_ns, now))
                    save.set_window(w)
            rec.state = control_pb2.RECORDER_STATE_STOPPED
            rec.ended_ns = now
            rec.end_reason = reason
            self._persist(rec)
            nodes = {rp.pod.node for rp in rec.pods.values()}
        self.captures.objects.release_key(rec.id)
        self.saves.dispatch_due(rec, force=True)
        for node in nodes:
            conn = self.registry.get(node)
            if conn is not None:
                conn.send(ingest_pb2.CollectorMessage(stop_recording=ingest_pb2.StopPodRecording(
                    recorder_id=rec.id, delete_ring=True, reason=reason)))
        log.info("recorder %s stopped: %s", rec.id, reason)
        return rec

    def trigger(self, recorder_id: str, selectors: list[str], reason: str, *, by: str) -> Fire:
        """A manual trigger (``podcap trigger``). Raises RecorderNotFoundError, RecorderStoppedError,
        PodNotInRecorderError."""
        rec = self.get(recorder_id)
        if len(reason.encode()) > 1024:
            raise InvalidInputError("--reason must be at most 1024 bytes")
        with rec.lock:
            if not rec.recording:
                raise RecorderStoppedError(
                    f"recorder {rec.id} was stopped at {_clock(rec.ended_ns)} ({rec.end_reason}): nothing to "
                    "trigger" + (f"; its saves: {', '.join(s.capture_id for s in rec.saves)}" if rec.saves else ""))
            pods = [rp.pod for rp in rec.pods.values()]
        named: list[PodRef] = []
        for sel in selectors:
            match = [p for p in pods if sel in (p.uid, p.name, p.display)]
            if not match:
                have = ", ".join(sorted(p.display for p in pods)) or "none"
                raise PodNotInRecorderError(f"recorder {rec.id} has no pod {sel!r} (its pods: {have})")
            named += [m for m in match if m not in named]
        chosen = named or pods
        st = control_pb2.SaveTrigger(recorder_id=rec.id, reason=control_pb2.RECORDER_TRIGGER_MANUAL,
                                     unix_ns=time.time_ns(), detail=reason or "podcap trigger", by=by)
        if len(chosen) == 1:
            st.pod.CopyFrom(chosen[0].to_proto())
        return self.saves.fire(rec, st, [p.uid for p in chosen], manual=True)

    def status(self, rec: Recorder) -> control_pb2.RecorderStatus:
        with rec.lock:
            st = rec.to_status()
            pods = list(rec.pods.values())
        del st.pods[:]
        agents: dict[NodeName, str] = {}
        for rp in pods:
            if rp.pod.node not in agents:
                agents[rp.pod.node] = self.registry.describe(rp.pod.node)
            st.pods.append(rp.status(agents[rp.pod.node]))
        for rs in st.saves:
            cap = self.captures.table.find(rs.capture_id)
            if cap is None:
                d = self.captures.lifecycle.deletion(rs.capture_id)
                rs.deleted = f"deleted by {d.by}: {d.reason}" if d is not None else "deleted"
                rs.state = control_pb2.CAPTURE_STATE_UNSPECIFIED
                continue
            with cap.lock:
                rs.state = cap.state
                rs.packets = cap.packets_total
                rs.bytes = cap.bytes_total
        return st

    # ---- from the agents ----

    def on_rings(self, conn: AgentConnection, rings: Iterable[ingest_pb2.RingStatus]) -> None:
        """The node's rings (at registration, with each heartbeat): every ring on its disk."""
        now = time.time_ns()
        for ring in rings:
            with self._lock:
                rec = self._recorders.get(ring.recorder_id)
            if rec is not None:
                with rec.lock:
                    rp = rec.pods.get(PodUid(ring.pod_uid))
                    if rp is not None and rp.pod.node == conn.node:
                        rp.ring = ring
                        rp.reported_ns = now
                    if rec.recording:
                        continue
                    busy = any(not s.ended_state for s in rec.saves if PodUid(ring.pod_uid) in s.pods)
                if busy:
                    continue  # the agent finishes asked-for saves first; told to delete after them
            key = (conn.session_id, ring.recorder_id, ring.pod_uid, "stop")
            if key in self._stops_sent:
                continue
            self._stops_sent.add(key)
            why = "recorder stopped" if rec is not None else "unknown recorder (not in the collector's catalog)"
            conn.send(ingest_pb2.CollectorMessage(stop_recording=ingest_pb2.StopPodRecording(
                recorder_id=ring.recorder_id[:64], pod_uid=ring.pod_uid[:64], delete_ring=True, reason=why)))

    def on_packet_trigger(self, conn: AgentConnection, msg: ingest_pb2.PacketTriggerFired) -> None:
        """An agent's packet trigger fired. The agent sends each firing again in new sessions for 10 minutes (it
        may have died with the session): the first of each (recorder, pod, fired_unix_ns) counts."""
        key = (msg.recorder_id, msg.pod_uid, msg.fired_unix_ns)
        now = time.monotonic()
        with self._lock:
            if key in self._fired_seen:
                return
            self._fired_seen[key] = now
            if len(self._fired_seen) > 1000 or next(iter(self._fired_seen.values())) < now - FIRED_MEMORY_S:
                self._fired_seen = {k: t for k, t in self._fired_seen.items() if t >= now - FIRED_MEMORY_S}
            rec = self._recorders.get(msg.recorder_id)
        if rec is None:
            log.warning("agent %s: packet trigger of unknown recorder %r ignored", conn.node, msg.recorder_id[:64])
            return
        with rec.lock:
            rp = rec.pods.get(PodUid(msg.pod_uid))
            if rp is None or not rec.recording or not rec.wants(control_pb2.RECORDER_TRIGGER_PACKETS):
                return
            pod = rp.pod
            t = rec.request.packet_trigger
        detail = (f"{msg.matches} packets matching {t.filter!r} within {t.window_ms / 1000:g}s "
                  f"({msg.total_matches} matches so far)")
        st = control_pb2.SaveTrigger(recorder_id=rec.id, reason=control_pb2.RECORDER_TRIGGER_PACKETS,
                                     unix_ns=msg.fired_unix_ns or time.time_ns(), pod=pod.to_proto(),
                                     detail=detail, by=COLLECTOR)
        self.saves.fire(rec, st, [pod.uid], manual=False)

    def agent_registered(self, conn: AgentConnection) -> None:
        for rec in self.all():
            with rec.lock:
                recording = rec.recording
                mine = [rp for rp in rec.pods.values() if rp.pod.node == conn.node and not rp.gone]
            if recording and mine:
                self._start_on(rec, mine)
            self.saves.send(rec, conn)
        self.agent_inventory(conn)

    def agent_inventory(self, conn: AgentConnection) -> None:
        if self.cluster is None:
            self._attach(conn.pods)

    def agent_gone(self, conn: AgentConnection) -> None:
        """Nothing to do: status shows the node's agent as away; its rings stay on its disk."""

    def agent_expired(self, absence: AgentAbsence) -> None:
        """Nothing to do: a save waits for the agent's return (its capture shows the pod waiting)."""

    # ---- from the cluster ----

    def pod_added(self, pod: PodRef) -> None:
        self.pod_changed(pod)

    def pod_changed(self, pod: PodRef) -> None:
        assert self.cluster is not None
        kp = self.cluster.get(pod.uid)
        if kp is None:
            return
        with self._health_lock:
            prev = self._health.get(pod.uid)
            self._health[pod.uid] = kp.health
        for fired in transitions(prev, kp.health):
            self._pod_fired(pod, fired)
        if self.cluster.running(pod):
            self._attach([pod])

    def pod_deleted(self, pod: PodRef) -> None:
        with self._health_lock:
            prev = self._health.pop(pod.uid, None)
        if prev is None or not prev.deleting:
            self._pod_fired(pod, Fired(control_pb2.RECORDER_TRIGGER_DELETED,
                                       "the pod was deleted, evicted or has finished"))
        for rec in self.all():
            with rec.lock:
                rp = rec.pods.get(pod.uid)
                if rp is not None and not rp.gone:
                    rp.gone = f"pod gone since {_clock(time.time_ns())}"
                    self._persist(rec)

    def on_unhealthy(self, namespace: str, name: str, uid: str, message: str) -> None:
        """A probe of a pod failed (the kubelet's Unhealthy Event)."""
        for rec in self.all():
            with rec.lock:
                rp = rec.pods.get(PodUid(uid)) if uid else next(
                    (r for r in rec.pods.values() if (r.pod.namespace, r.pod.name) == (namespace, name)), None)
            if rp is not None:
                self._pod_fired(rp.pod, Fired(control_pb2.RECORDER_TRIGGER_UNHEALTHY, message), only=rec)

    def _pod_fired(self, pod: PodRef, fired: Fired, *, only: Recorder | None = None) -> None:
        for rec in [only] if only is not None else self.all():
            with rec.lock:
                if pod.uid not in rec.pods or not rec.recording or not rec.wants(fired.trigger):
                    continue
            log.info("recorder %s: %s on pod %s: %s", rec.id, trigger_word(fired.trigger), pod.display,
                     fired.detail)
            now = time.time_ns()
            # A termination's own time when it is plausible (the kubelet reports within seconds), else now.
            at = fired.at_ns if now - EVENT_AGE_MAX_NS <= fired.at_ns <= now + EVENT_AGE_MAX_NS // 10 else now
            st = control_pb2.SaveTrigger(recorder_id=rec.id, reason=fired.trigger, unix_ns=at,
                                         pod=pod.to_proto(), detail=fired.detail, by=COLLECTOR)
            self.saves.fire(rec, st, [pod.uid], manual=False)

    def _recover_target(self, rec: Recorder) -> None:
        """A Service's endpoints are watched again after a restart (a workload's selector is in the request)."""
        def adopt(spec: TargetSpec) -> None:
            with rec.lock:
                rec.target = spec
        self.captures.objects.recover_key(rec.id, rec.target, lambda: self._reconsider(rec), adopt)

    def _reconsider(self, rec: Recorder) -> None:
        """Record the running pods that match the recorder now (its Service's endpoints changed)."""
        if self.cluster is None or not rec.recording:
            return
        with rec.lock:
            target, have = rec.target, set(rec.pods)
        self._attach([p for p in self.cluster.select(field_selector(""), running_only=True)
                      if p.uid not in have and target.matches(p)])

    def _attach(self, pods: list[PodRef]) -> None:
        for rec in self.all():
            new: list[RingPod] = []
            with rec.lock:
                if not rec.recording or not rec.target.dynamic:
                    continue
                fields = field_selector(rec.request.target.field_selector)
                for pod in pods:
                    if pod.uid in rec.pods or pod.host_network or not rec.target.matches(pod):
                        continue
                    if fields and not fields.matches(
                            self.cluster.fields(pod) if self.cluster is not None else pod_fields(pod)):
                        continue
                    rp = RingPod(pod)
                    rec.pods[pod.uid] = rp
                    new.append(rp)
                    log.info("recorder %s: recording new pod %s", rec.id, pod.display)
                if new:
                    self._persist(rec)
            if new:
                self._start_on(rec, new)

    def _start_on(self, rec: Recorder, pods: list[RingPod]) -> None:
        req = rec.request
        by_node: dict[NodeName, list[RingPod]] = {}
        for rp in pods:
            by_node.setdefault(rp.pod.node, []).append(rp)
        with rec.lock:
            counts = {n: sum(1 for rp in rec.pods.values() if rp.pod.node == n and not rp.gone) for n in by_node}
        trigger = None
        if rec.wants(control_pb2.RECORDER_TRIGGER_PACKETS) and req.packet_trigger.filter:
            trigger = ingest_pb2.PacketTrigger(filter=req.packet_trigger.filter, count=req.packet_trigger.count,
                                               window_ns=req.packet_trigger.window_ms * MS)
        for node, node_pods in by_node.items():
            conn = self.registry.get(node)
            if conn is None:
                continue  # sent when its agent registers
            for rp in node_pods:
                msg = ingest_pb2.StartPodRecording(
                    recorder_id=rec.id, pod=rp.pod.to_proto(), settings=req.settings,
                    keep=ingest_pb2.RingLimits(max_bytes=req.keep_bytes,
                                               max_duration_ns=req.keep_seconds * 1_000_000_000),
                    pods_on_node=counts[node], keep_gone_ms=KEEP_GONE_MS)
                if trigger is not None:
                    msg.trigger.CopyFrom(trigger)
                conn.send(ingest_pb2.CollectorMessage(start_recording=msg))

    # ---- background ----

    def _tick_loop(self, tick_s: float) -> None:
        while not self._closing.wait(tick_s):
            for rec in self.all():
                try:
                    self.saves.dispatch_due(rec)
                    self.saves.announce_ended(rec)
                except Exception:
                    log.exception("recorder %s: tick failed", rec.id)

    def _persist(self, rec: Recorder) -> None:
        """Caller holds the recorder's lock."""
        self.store.put_recorder(rec.to_status())

    @property
    def saves_total(self) -> dict[str, int]:
        """Saves started since the collector started, by the trigger that started them (a metric)."""
        return self.saves.saves_total

    @property
    def on_save(self) -> list[SaveListener]:
        """Called with each new save (the audit trail)."""
        return self.saves.on_save

    def close(self) -> None:
        self._closing.set()
        if self.unhealthy is not None:
            self.unhealthy.stop()
        self._ticker.join(timeout=5)
