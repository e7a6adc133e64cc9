"""The collector's in-memory model of recorders: pure data, guarded by ``Recorder.lock``.

A ``Recorder`` is its validated request, the pods it records (``RingPod``: the pod and what its agent last
reported of its ring), its saves (``Save``: the capture that holds the window, the window, whether the agents were
asked yet and whether its end was announced; what each pod's saves hold follows from their windows), and the
debounce of automatic triggers. ``to_status`` is what the catalog keeps and what ``status``
builds on; ``from_status`` rebuilds a recorder from it at start-up.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from podcap.collector.recorders.windows import Debounce, Window
from podcap.collector.targets import TargetSpec
from podcap.names import CaptureId, PodUid
from podcap.pods import PodRef
from podcap.v1 import control_pb2, ingest_pb2

RING_STATES = {
    ingest_pb2.RING_STATE_RECORDING: "recording",
    ingest_pb2.RING_STATE_PENDING: "pending",
    ingest_pb2.RING_STATE_KEPT: "kept",
    ingest_pb2.RING_STATE_FAILED: "failed",
}


@dataclass
class RingPod:
    """A pod of a recorder and its ring as its agent last reported it."""

    pod: PodRef
    ring: ingest_pb2.RingStatus | None = None
    reported_ns: int = 0
    # Why the pod is no longer recorded ("" while it is): it left the cluster. Its ring may still be saved.
    gone: str = ""

    def status(self, agent: str) -> control_pb2.RecorderPodStatus:
        st = control_pb2.RecorderPodStatus(pod=self.pod.to_proto(), reported_unix_ns=self.reported_ns)
        r = self.ring
        if r is not None:
            st.state = RING_STATES.get(r.state, "pending")
            st.message = r.message
            st.bytes, st.packets = r.bytes, r.packets
            st.oldest_unix_ns, st.newest_unix_ns = r.oldest_unix_ns, r.newest_unix_ns
            st.kernel.CopyFrom(r.kernel)
            st.written = r.written
            st.drops.CopyFrom(r.drops)
            st.trigger_matches, st.trigger_fired, st.limit_bytes = r.trigger_matches, r.trigger_fired, r.limit_bytes
        else:
            st.state = "pending"
            st.message = "no report from its agent yet"
        if agent != "connected" and not agent.startswith("connected,"):
            st.state = "no agent"
            st.message = f"agent {agent}" + (f"; last report: {st.message}" if r is not None and st.message else "")
        if self.gone:
            st.message = "; ".join(filter(None, [self.gone, st.message]))
        return st


@dataclass
class Save:
    """One save of a recorder: the capture holding it and its window."""

    capture_id: CaptureId
    info: control_pb2.RecorderSaveInfo
    pods: list[PodUid]
    automatic: bool
    # Its end was announced (Event, metric): the state the catalog keeps for it, UNSPECIFIED until then.
    ended_state: control_pb2.CaptureState.ValueType = control_pb2.CAPTURE_STATE_UNSPECIFIED

    @property
    def window(self) -> Window:
        return Window(self.info.from_unix_ns, self.info.to_unix_ns,
                      {PodUid(k): v for k, v in self.info.pod_from_unix_ns.items()})

    def set_window(self, w: Window) -> None:
        self.info.from_unix_ns, self.info.to_unix_ns = w.from_ns, w.to_ns
        self.info.pod_from_unix_ns.clear()
        self.info.pod_from_unix_ns.update({str(k): v for k, v in w.pod_from.items()})


@dataclass
class Recorder:
    id: str
    request: control_pb2.StartRecorderRequest
    target: TargetSpec
    created_ns: int
    by: str
    state: control_pb2.RecorderState.ValueType = control_pb2.RECORDER_STATE_RECORDING
    ended_ns: int = 0
    end_reason: str = ""
    pods: dict[PodUid, RingPod] = field(default_factory=dict)
    saves: list[Save] = field(default_factory=list)  # oldest first
    debounce: Debounce = field(default_factory=lambda: Debounce(cooldown_ns=0, per_hour=0))
    suppressed: int = 0
    last_suppressed: str = ""
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def recording(self) -> bool:
        return self.state == control_pb2.RECORDER_STATE_RECORDING

    def wants(self, trigger: int) -> bool:
        return trigger in self.request.on

    def to_status(self) -> control_pb2.RecorderStatus:
        """What the catalog keeps (caller holds the lock): pods with their last ring report, saves with their
        windows and, once announced, their end state."""
        st = control_pb2.RecorderStatus(
            id=self.id, state=self.state, request=self.request, created_unix_ns=self.created_ns,
            ended_unix_ns=self.ended_ns, end_reason=self.end_reason, suppressed=self.suppressed,
            last_suppressed=self.last_suppressed, by=self.by)
        for rp in self.pods.values():
            p = st.pods.add(pod=rp.pod.to_proto(), message=rp.gone, reported_unix_ns=rp.reported_ns)
            p.state = "gone" if rp.gone else ""
        for s in reversed(self.saves):
            st.saves.add(capture_id=s.capture_id, info=s.info, state=s.ended_state)
        return st


def from_status(st: control_pb2.RecorderStatus, target: TargetSpec,
                save_pods: dict[str, list[PodUid]]) -> Recorder:
    """A recorder as the catalog kept it; ``save_pods``: the pods of each save's capture that still exists."""
    req = st.request
    rec = Recorder(st.id, req, target, st.created_unix_ns, st.by, st.state, st.ended_unix_ns, st.end_reason,
                   suppressed=st.suppressed, last_suppressed=st.last_suppressed,
                   debounce=Debounce(cooldown_ns=req.cooldown_seconds * 1_000_000_000,
                                     per_hour=req.max_saves_per_hour))
    for p in st.pods:
        rp = RingPod(PodRef.from_proto(p.pod), gone=p.message if p.state == "gone" else "")
        rec.pods[rp.pod.uid] = rp
    for rs in reversed(st.saves):
        automatic = bool(rs.info.triggers) and rs.info.triggers[0].reason != control_pb2.RECORDER_TRIGGER_MANUAL
        save = Save(CaptureId(rs.capture_id), rs.info, save_pods.get(rs.capture_id, []), automatic, rs.state)
        rec.saves.append(save)
        if rs.info.triggers:
            rec.debounce.note(rs.info.triggers[0].unix_ns, automatic=automatic)
    return rec
