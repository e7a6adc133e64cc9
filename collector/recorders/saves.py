"""A recorder's saves: starting one for a trigger or joining a waiting one, sending it to the agents once its
window has passed, and announcing its end.

The bookkeeping of windows is ``windows``' (pure); this module applies it to a ``Recorder`` and its captures: a
save is a capture created at once (``CaptureManager.start_save``; its request carries ``save``, which keeps it out
of retention) whose pods wait; every trigger whose window overlaps a waiting save joins it (the window grows, pods
are added); once the window has passed each pod's agent gets a ``SavePodWindow`` (again after every registration,
until the pod's stream ended); when the capture ends each saved pod gets a ``PacketsSaved`` Event (``notify``).
Callers hold no lock; the recorder's lock is taken here, a capture's lock inside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from podcap.collector.agents import AgentConnection, AgentRegistry
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.captures.model import TERMINAL, Capture
from podcap.collector.recorders import windows
from podcap.collector.recorders.model import Recorder, RingPod, Save
from podcap.collector.recorders.notify import EventPoster
from podcap.collector.recorders.triggers import trigger_word
from podcap.names import CaptureId, PodUid
from podcap.pods import PodRef
from podcap.v1 import common_pb2, control_pb2, ingest_pb2

log = logging.getLogger(__name__)

MS = 1_000_000


def clock(ns: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ns / 1e9))


@dataclass
class Fire:
    """The outcome of a trigger: the save that holds it (None: held back, or nothing left to save), whether it
    joined one that existed, and why it was held back."""

    save: Save | None
    joined: bool = False
    held_back: str = ""


SaveListener = Callable[[Recorder, Save, control_pb2.SaveTrigger], None]


class Saves:
    def __init__(self, captures: CaptureManager, registry: AgentRegistry, events: EventPoster,
                 persist: Callable[[Recorder], None]) -> None:
        self.captures = captures
        self.registry = registry
        self.events = events
        self.persist = persist  # the recorder's row in the catalog (caller of it holds the recorder's lock)
        self.saves_total: dict[str, int] = {}  # trigger word -> saves started (a metric)
        self.on_save: list[SaveListener] = []  # the audit trail

    def fire(self, rec: Recorder, st: control_pb2.SaveTrigger, pods: list[PodUid], *, manual: bool) -> Fire:
        """Join a waiting save, or start one (unless debounced); never save a pod's bytes twice."""
        before, after = rec.request.before_ms * MS, rec.request.after_ms * MS
        from_ns, to_ns = st.unix_ns - before, st.unix_ns + after
        with rec.lock:
            if rec.request.save == control_pb2.RECORDER_SAVE_SCOPE_ALL and not manual:
                pods = list(rec.pods)
            for save in reversed(rec.saves):
                if not save.info.dispatched and save.window.overlaps(from_ns, to_ns):
                    return self._join(rec, save, st, pods, from_ns, to_ns)
            now = time.time_ns()
            if not manual:
                why = rec.debounce.held_back(now)
                if why:
                    rec.suppressed += 1
                    rec.last_suppressed = (f"{trigger_word(st.reason)} at {clock(st.unix_ns)}"
                                           f"{' on ' + st.pod.namespace + '/' + st.pod.name if st.pod.name else ''}"
                                           f": {why}")
                    self.persist(rec)
                    log.info("recorder %s: trigger held back: %s", rec.id, rec.last_suppressed)
                    return Fire(None, held_back=why)
            window = windows.Window(from_ns, to_ns)
            kept = windows.clip(window, pods, windows.saved_until(
                [(s.info.from_unix_ns, s.info.to_unix_ns, s.pods) for s in rec.saves], to_ns))
            if not kept:
                # Every byte of that window is in saves already: the trigger is noted on the newest of them.
                holder = next((s for s in reversed(rec.saves) if set(pods) & set(s.pods)), None)
                if holder is not None:
                    holder.info.triggers.append(st)
                    self._sync_capture(holder)
                    self.persist(rec)
                return Fire(holder, joined=holder is not None)
            info = control_pb2.RecorderSaveInfo(recorder_id=rec.id, from_unix_ns=from_ns, to_unix_ns=to_ns,
                                                triggers=[st])
            save = Save(CaptureId(""), info, kept, automatic=not manual)
            save.set_window(window)
            refs = [rec.pods[u].pod for u in kept]
            t = rec.request.target
            req = control_pb2.StartCaptureRequest(
                target=control_pb2.Target(namespace=t.namespace, all_namespaces=t.all_namespaces,
                                          pod_names=[p.name for p in refs]),
                settings=rec.request.settings, save=info,
                note=f"recorder {rec.id}: {trigger_word(st.reason)}: {st.detail}"[:1024])
            cap = self.captures.start_save(req, refs)
            save.capture_id = cap.id
            self._waiting(cap, save)
            rec.saves.append(save)
            rec.debounce.note(now, automatic=not manual)
            word = trigger_word(st.reason)
            self.saves_total[word] = self.saves_total.get(word, 0) + 1
            self.persist(rec)
        log.info("recorder %s: save %s of %d pods, %s to %s (%s)", rec.id, cap.id, len(kept), clock(from_ns),
                 clock(to_ns), st.detail)
        for listener in self.on_save:
            listener(rec, save, st)
        return Fire(save)

    def _join(self, rec: Recorder, save: Save, st: control_pb2.SaveTrigger, pods: list[PodUid], from_ns: int,
              to_ns: int) -> Fire:
        """Caller holds the recorder's lock."""
        w = save.window
        # Up to where each pod is saved by the *other* saves: this one's own window must not clip itself.
        others = windows.saved_until([(s.info.from_unix_ns, s.info.to_unix_ns, s.pods) for s in rec.saves
                                      if s is not save], max(w.to_ns, to_ns))
        added = windows.join(w, from_ns, to_ns, pods, save.pods, others)
        save.set_window(w)
        save.info.triggers.append(st)
        save.pods += added
        cap = self.captures.table.find(save.capture_id)
        if cap is not None and added:
            self.captures.add_save_pods(cap, [rec.pods[u].pod for u in added])
        self._sync_capture(save)
        if cap is not None:
            self._waiting(cap, save)
        self.persist(rec)
        log.info("recorder %s: %s joins save %s (now %s to %s)", rec.id, trigger_word(st.reason), save.capture_id,
                 clock(w.from_ns), clock(w.to_ns))
        return Fire(save, joined=True)

    def _sync_capture(self, save: Save) -> None:
        cap = self.captures.table.find(save.capture_id)
        if cap is not None:
            with cap.lock:
                cap.request.save.CopyFrom(save.info)

    @staticmethod
    def _waiting(cap: Capture, save: Save) -> None:
        with cap.lock:
            for ps in cap.pods.values():
                if ps.state == common_pb2.POD_CAPTURE_STATE_PENDING and not ps.streams:
                    ps.message = f"waiting for the window to pass (until {clock(save.info.to_unix_ns)})"
                    ps.dirty = True

    def dispatch_due(self, rec: Recorder, *, force: bool = False) -> None:
        now = time.time_ns()
        due: list[Save] = []
        with rec.lock:
            for save in rec.saves:
                if not save.info.dispatched and (force or now >= save.info.to_unix_ns):
                    save.info.dispatched = True
                    self._sync_capture(save)
                    due.append(save)
            if due:
                self.persist(rec)
        for save in due:
            log.info("recorder %s: save %s: window passed, asking the agents", rec.id, save.capture_id)
            for node in sorted({rp.pod.node for rp in self._pods_of(rec, save)}):
                conn = self.registry.get(node)
                if conn is not None:  # else sent when its agent registers again
                    self.send(rec, conn, only=save)

    def _pods_of(self, rec: Recorder, save: Save) -> list[RingPod]:
        with rec.lock:
            return [rec.pods[u] for u in save.pods if u in rec.pods]

    def send(self, rec: Recorder, conn: AgentConnection, *, only: Save | None = None) -> None:
        """SavePodWindow for every pod on ``conn``'s node of every dispatched save of ``rec`` not finished yet."""
        with rec.lock:
            saves = [only] if only is not None else [s for s in rec.saves if s.info.dispatched]
            work = [(s, s.window, [rec.pods[u].pod for u in s.pods if u in rec.pods]) for s in saves]
        for save, window, pods in work:
            cap = self.captures.table.find(save.capture_id)
            if cap is None or not cap.live:
                continue
            with cap.lock:
                todo = [p for p in pods if p.node == conn.node and p.uid in cap.pods
                        and cap.pods[p.uid].state not in TERMINAL]
                for p in todo:
                    ps = cap.pods[p.uid]
                    if not ps.streams:
                        ps.message = f"asked the agent of node {conn.node} to upload the window"
                        ps.dirty = True
            for p in todo:
                conn.send(ingest_pb2.CollectorMessage(save=ingest_pb2.SavePodWindow(
                    recorder_id=rec.id, pod_uid=p.uid, capture_id=save.capture_id,
                    from_unix_ns=window.start_of(p.uid), to_unix_ns=window.to_ns)))


    def announce_ended(self, rec: Recorder) -> None:
        """Saves whose capture ended: a PacketsSaved Event on each saved pod, once."""
        ended: list[tuple[Save, Capture | None]] = []
        with rec.lock:
            for save in rec.saves:
                if save.ended_state or not save.info.dispatched:
                    continue
                cap = self.captures.table.find(save.capture_id)
                if cap is None:
                    save.ended_state = control_pb2.CAPTURE_STATE_FAILED  # deleted before it ended
                    ended.append((save, None))
                elif not cap.live:
                    save.ended_state = cap.state
                    ended.append((save, cap))
            if ended:
                self.persist(rec)
        for save, cap in ended:
            if cap is None:
                continue
            self._post_events(rec, save, self.captures.status(cap))

    def _post_events(self, rec: Recorder, save: Save, st: control_pb2.CaptureStatus) -> None:
        first = save.info.triggers[0] if save.info.triggers else None
        what = (f"{trigger_word(first.reason)} of {first.pod.namespace}/{first.pod.name}" if first and first.pod.name
                else trigger_word(first.reason) if first else "a trigger")
        more = len(save.info.triggers) - 1
        for p in st.pods:
            pod = PodRef.from_proto(p.pod)
            ok = p.state == common_pb2.POD_CAPTURE_STATE_DONE
            start = clock(save.window.start_of(pod.uid))
            msg = (f"podcap recorder {rec.id} saved {p.packets} packets of this pod from {start} "
                   f"to {clock(save.info.to_unix_ns)} around {what}"
                   f"{f' (and {more} more trigger(s))' if more > 0 else ''}: capture {save.capture_id} "
                   f"(podcap get {save.capture_id})" if ok else
                   f"podcap recorder {rec.id} could not save this pod's packets around {what}: {p.message}; "
                   f"capture {save.capture_id}")
            self.events.post(pod, msg, warning=not ok)

