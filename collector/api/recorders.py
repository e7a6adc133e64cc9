"""The recorder calls of ``podcap.v1.Control`` (issue 24), mixed into ``ControlServicer``.

Authorization is a capture's: starting a recorder needs ``create pods/capture`` in every namespace of its target,
stopping it ``delete``, reading it ``get``, and a manual trigger ``create`` (it makes a capture); its saves are
captures, so reading them is checked as for any capture. Every call is audited with the recorder's id in the
record's capture column (``record``, ``trigger``, ``stop``, ``status``); each save the collector makes is audited as
``save`` by whoever triggered it (``podcap-collector`` for an automatic trigger).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc

from podcap.collector.api.auth import Authorizer, Principal, target_scopes
from podcap.collector.api.errors import abort_for
from podcap.collector.api.payload import NamespacePolicies, effective_snaplen
from podcap.collector.captures.model import Capture
from podcap.collector.recorders.manager import RecorderManager
from podcap.collector.recorders.model import Recorder, Save
from podcap.collector.recorders.triggers import trigger_word
from podcap.errors import PodcapError, PreconditionError
from podcap.v1 import control_pb2

log = logging.getLogger(__name__)

# A manual trigger waits at most this long beyond its window for the save to end (the client's deadline may cut
# it shorter: then the answer says the save is still running).
TRIGGER_WAIT_MARGIN_S = 60.0


class NoRecordersError(PreconditionError):
    """The collector was started without recorders."""


def start_recorder(manager: RecorderManager, policies: NamespacePolicies, auth: Authorizer, who: Principal,
                   request: control_pb2.StartRecorderRequest) -> Recorder:
    """Start ``request`` for ``who`` (allowed to create it): the namespaces' payload policy decides the rings'
    snaplen, as a capture's (``request`` says what applied: ``target.payload_cap``). ``StartRecorder`` and the
    PodCapture controller both start recorders here. Raises the manager's errors."""
    as_capture = control_pb2.StartCaptureRequest(target=request.target, settings=request.settings)
    effective_snaplen(policies, auth, who, request.target, request.settings.snaplen).apply(as_capture)
    request.target.CopyFrom(as_capture.target)
    request.settings.CopyFrom(as_capture.settings)
    return manager.start(request, by=who.user)


def recorder_namespaces(rec: Recorder) -> list[str | None]:
    return target_scopes(rec.request.target)[1]


class RecorderCalls:
    """Mixed into ``ControlServicer``, which implements the three methods below (declared here for the types)."""

    recorders: RecorderManager | None
    policies: NamespacePolicies
    auth: Authorizer

    def _audit(self, who: str, action: str, *, capture: Capture | None = None,
               target: control_pb2.Target | None = None, bpf: str = "", read: bool = False, result: str,
               detail: str = "", capture_id: str = "") -> None:
        raise NotImplementedError

    def _principal(self, context: grpc.ServicerContext, action: str) -> Principal:
        raise NotImplementedError

    def _authorize(self, context: grpc.ServicerContext, who: Principal, action: str, verb: str,
                   namespaces: list[str | None], *, capture: Capture | None = None,
                   target: control_pb2.Target | None = None) -> None:
        raise NotImplementedError

    def _recorders(self, context: grpc.ServicerContext) -> RecorderManager:
        if self.recorders is None:
            abort_for(context, NoRecordersError("this collector runs without recorders"))
        return self.recorders

    def _audit_save(self, rec: Recorder, save: Save, trigger: control_pb2.SaveTrigger) -> None:
        pod = f" on {trigger.pod.namespace}/{trigger.pod.name}" if trigger.pod.name else ""
        self._audit(trigger.by or "podcap-collector", "save", capture_id=save.capture_id,
                    target=rec.request.target, bpf=rec.request.settings.filter, result="allowed",
                    detail=f"recorder {rec.id}: {trigger_word(trigger.reason)}{pod}: {trigger.detail}")

    def _recorder_for(self, context: grpc.ServicerContext, action: str, recorder_id: str,
                      verb: str) -> tuple[Principal, Recorder]:
        who = self._principal(context, action)
        manager = self._recorders(context)
        try:
            rec = manager.get(recorder_id)
        except PodcapError as e:
            self._audit(who.user, action, capture_id=recorder_id[:64], result="failed", detail=str(e))
            abort_for(context, e)
        self._authorize(context, who, action, verb, recorder_namespaces(rec), target=rec.request.target)
        return who, rec

    def StartRecorder(  # noqa: N802
        self, request: control_pb2.StartRecorderRequest, context: grpc.ServicerContext
    ) -> control_pb2.RecorderStatus:
        who = self._principal(context, "record")
        manager = self._recorders(context)
        t = request.target
        t.ClearField("object_selector")  # set by the collector only
        t.ClearField("payload_cap")
        self._authorize(context, who, "record", "create", target_scopes(t)[1], target=t)
        try:
            rec = start_recorder(manager, self.policies, self.auth, who, request)
        except PodcapError as e:
            log.info("recorder refused: %s", e)
            self._audit(who.user, "record", target=t, bpf=request.settings.filter, result="failed", detail=str(e))
            abort_for(context, e)
        keep = ", ".join(filter(None, [f"{rec.request.keep_bytes} bytes" if rec.request.keep_bytes else "",
                                       f"{rec.request.keep_seconds}s" if rec.request.keep_seconds else ""]))
        on = ",".join(trigger_word(x) for x in rec.request.on) or "manual only"
        self._audit(who.user, "record", capture_id=rec.id, target=t, bpf=request.settings.filter, result="allowed",
                    detail=f"{len(rec.pods)} pod(s); keep {keep}; on {on}")
        return manager.status(rec)

    def StopRecorder(  # noqa: N802
        self, request: control_pb2.StopRecorderRequest, context: grpc.ServicerContext
    ) -> control_pb2.RecorderStatus:
        who, rec = self._recorder_for(context, "stop", request.recorder_id, "delete")
        manager = self._recorders(context)
        self._audit(who.user, "stop", capture_id=rec.id, target=rec.request.target, result="allowed",
                    detail="recorder")
        return manager.status(manager.stop(rec.id))

    def GetRecorder(  # noqa: N802
        self, request: control_pb2.GetRecorderRequest, context: grpc.ServicerContext
    ) -> control_pb2.RecorderStatus:
        _, rec = self._recorder_for(context, "status", request.recorder_id, "get")
        return self._recorders(context).status(rec)

    def TriggerRecorder(  # noqa: N802
        self, request: control_pb2.TriggerRecorderRequest, context: grpc.ServicerContext
    ) -> control_pb2.TriggerRecorderResponse:
        who, rec = self._recorder_for(context, "trigger", request.recorder_id, "create")
        manager = self._recorders(context)
        try:
            fire = manager.trigger(rec.id, list(request.pods), request.reason, by=who.user)
        except PodcapError as e:
            self._audit(who.user, "trigger", capture_id=rec.id, target=rec.request.target, result="failed",
                        detail=str(e))
            abort_for(context, e)
        if fire.save is None:  # nothing to hold it: the pods are gone from the recorder meanwhile
            abort_for(context, PreconditionError(f"recorder {rec.id} has nothing left to save for that trigger"))
        save = fire.save
        self._audit(who.user, "trigger", capture_id=rec.id, target=rec.request.target, result="allowed",
                    detail=f"{'joined' if fire.joined else 'new'} save {save.capture_id}"
                    + (f": {request.reason}" if request.reason else ""))
        cap = manager.captures.get(save.capture_id)
        if not request.no_wait:
            left = context.time_remaining()
            wait = (save.info.to_unix_ns - time.time_ns()) / 1e9 + TRIGGER_WAIT_MARGIN_S
            if left is not None:
                wait = min(wait, left - 0.5)
            cap.ended.wait(max(0.0, wait))
        return control_pb2.TriggerRecorderResponse(capture_id=save.capture_id, capture=manager.captures.status(cap),
                                                   joined=fire.joined)

    def _visible_recorders(self,
                           may_see: Callable[[control_pb2.Target], bool]) -> list[control_pb2.RecorderStatus]:
        if self.recorders is None:
            return []
        return [self.recorders.status(r) for r in self.recorders.all() if may_see(r.request.target)]

