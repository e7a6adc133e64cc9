"""``PodCaptureController``: reconciles PodCaptures into captures of the collector's ``CaptureManager``.

How it works (the shape of kopf's and controller-runtime's controllers, on ``KubeApi``'s calls):

- **Watch.** One list of every PodCapture, then a watch from the list's resourceVersion; ``410 Gone`` re-lists,
  other errors back off (0.5 s doubling to 30 s, with jitter). Each event stores the object in a cache and queues
  its key; a ticker queues every resource that has a live or pending capture each ``status_interval_s``, so
  counters are refreshed and pending ones retried. Only while this collector holds the Lease (``lease.py``), when
  one is given: on losing it the watch stops and nothing is written.
- **Reconcile** (one key at a time, on one worker thread; idempotent: every step reads what is recorded first):
  1. being deleted: stop its capture, delete the capture's data unless ``spec.retainOnDelete``, then remove the
     finalizer ``podcap.io/capture``;
  2. add the finalizer (before any capture exists, so that no delete can orphan one);
  3. a capture id recorded (annotation ``podcap.io/capture-id`` or ``status.captureId``) or a capture whose note
     carries the resource's uid (``resource.capture_marker``: a collector that restarted between starting the
     capture and recording it) -> that capture, never a second one. A resource whose capture no longer exists is
     ``Failed``, not restarted;
  4. otherwise the creator must be allowed to capture: ``create pods/capture`` in the resource's namespace, asked
     with the collector's ``Authorizer`` (a SubjectAccessReview with the Kubernetes authorizer) for the user in
     the annotation ``podcap.io/created-by`` (and groups in ``podcap.io/created-by-groups``). The API server does
     not tell a controller who created an object (``managedFields`` name field managers, not users), so the
     annotation is the record, and deploy/base/podcapture-admission.yaml (a ValidatingAdmissionPolicy) makes the
     API server refuse a PodCapture whose annotation is not its requester. Refused -> phase ``Refused``;
  5. start the capture exactly as the StartCapture RPC does: the namespace's payload policy decided for the
     creator (``api.payload.effective_snaplen``), then ``CaptureManager.start``, in the resource's own namespace
     (``resource.to_request``); record its id in the annotation, audit it (with the payload cap, if any). No pod
     matching yet, no agent, the API not synced -> ``Pending``, retried; any other refusal (a filter that does not
     compile, an unknown workload kind) -> ``Failed`` until the spec changes (``generation``).
- **A flight recorder** (``spec.recorder``, ``recording``): steps 3 to 5 with a recorder instead of a capture: the
  id in the annotation ``podcap.io/recorder-id`` and ``status.recorderId`` (or the uid in the recorder's note), else
  started as the StartRecorder RPC starts one (``api.recorders.start_recorder``: the payload policy, then
  ``RecorderManager.start``), audited as ``record``. Status: its rings and its saves (``recorder_status_of``).
  Deleting the resource stops the recorder (its rings are deleted on the nodes) and deletes its saves unless
  ``spec.retainOnDelete``.
- **Status** (``/status``, with the resourceVersion read: a 409 Conflict re-reads and retries) is written only when
  it changed and at most once per ``min_status_interval_s`` per resource.
- Writes to metadata (finalizer, annotation) are merge patches carrying the resourceVersion read, so they are
  refused with 409 when the object changed meanwhile; the reconcile re-reads the object and starts over.
- Every start, refusal, stop and deletion is in the audit trail, user = the creator, and an Event on the
  resource (``kubectl describe`` shows it).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podcap.collector.api.auth import Authorizer, DeniedError, OpenAuthorizer, Principal
from podcap.collector.api.payload import KubeNamespacePolicies, NamespacePolicies, NoPolicies, effective_snaplen
from podcap.collector.api.recorders import start_recorder
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.captures.model import Capture
from podcap.collector.captures.table import CaptureNotFoundError
from podcap.collector.kube.client import KubeApi, WatchStream
from podcap.collector.kube.errors import KubeApiError, KubeError, KubeForbiddenError, KubeGoneError, KubeNotFoundError
from podcap.collector.podcaptures.lease import LeaseElector
from podcap.collector.podcaptures.recording import is_recorder, recorder_status_of, to_recorder_request
from podcap.collector.podcaptures.resource import (
    API_VERSION,
    CAPTURE_ANNOTATION,
    CREATOR_ANNOTATION,
    CREATOR_GROUPS_ANNOTATION,
    FINALIZER,
    KIND,
    PODCAPTURES,
    RECORDER_ANNOTATION,
    capture_marker,
    ref,
    status_of,
    to_request,
)
from podcap.collector.recorders.manager import RecorderManager, RecorderNotFoundError
from podcap.collector.recorders.model import Recorder
from podcap.collector.targets import target_text
from podcap.errors import NotFoundError, PodcapError, PreconditionError, UnavailableError
from podcap.v1 import control_pb2

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]
Audit = Callable[[control_pb2.AuditRecord], None]

RETRYABLE = (NotFoundError, PreconditionError, UnavailableError)
CONTROLLER = "podcap-collector"


class ConflictRetry(Exception):
    """The object changed under a write (409): re-read it and reconcile again."""


@dataclass
class _State:
    """What the controller remembers of one resource between reconciles (lost on restart: only a cache)."""

    last_status_write: float = 0.0
    pending_message: str = ""  # the last Pending/Failed message audited (audit on change only)
    failed_generation: int = 0  # a non-retryable start failure for this generation
    status_dirty: bool = False


class PodCaptureController:
    def __init__(self, api: KubeApi, captures: CaptureManager, authorizer: Authorizer, audit: Audit, *,
                 recorders: RecorderManager | None = None,
                 lease: LeaseElector | None = None, policies: NamespacePolicies | None = None,
                 bucket_url: str = "", status_interval_s: float = 2.0,
                 min_status_interval_s: float = 2.0, stop_wait_s: float = 5.0, watch_timeout_s: int = 300,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        self.api = api
        self.captures = captures
        self.recorders = recorders
        self.authorizer = authorizer
        self.audit = audit
        self.lease = lease
        self.policies = policies or NoPolicies()
        self.bucket_url = bucket_url
        self.status_interval_s = status_interval_s
        self.min_status_interval_s = min_status_interval_s
        self.stop_wait_s = stop_wait_s
        self.watch_timeout_s = watch_timeout_s
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self._cache: dict[Key, Obj] = {}
        self._states: dict[Key, _State] = {}
        self._queue: list[Key] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._stream: WatchStream | None = None
        self._threads: list[threading.Thread] = []
        self.reconciles = 0  # for tests and metrics
        self.synced = threading.Event()

    # ---- lifecycle ----

    def start(self) -> PodCaptureController:
        for target, name in ((self._watch_loop, "podcapture-watch"), (self._work_loop, "podcapture-worker"),
                             (self._tick_loop, "podcapture-ticker")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        stream = self._stream
        if stream is not None:
            stream.abort()
        for t in self._threads:
            t.join()
        if self.lease is not None:
            self.lease.stop()

    def _leading(self) -> bool:
        return self.lease is None or self.lease.is_leader

    # ---- watch ----

    def _watch_loop(self) -> None:
        backoff = self.backoff_initial_s
        rv = ""
        while not self._stop.is_set():
            if not self._leading():
                rv = ""
                self.synced.clear()
                with self._cond:
                    self._cache.clear()
                    self._queue.clear()
                self._stop.wait(0.2)
                continue
            try:
                if not rv:
                    items, rv = self.api.list_objects(PODCAPTURES)
                    with self._cond:
                        self._cache = {_key(o): o for o in items}
                        for k in self._cache:
                            self._enqueue_locked(k)
                    self.synced.set()
                rv = self._watch_once(rv)
                backoff = self.backoff_initial_s
            except KubeGoneError:
                rv = ""
            except KubeError as e:
                hint = ""
                if isinstance(e, KubeNotFoundError):
                    hint = " (is the CRD installed? kubectl apply -f deploy/base/crd-podcapture.yaml)"
                elif isinstance(e, KubeForbiddenError):
                    hint = " (the collector's ClusterRole: see deploy/base/rbac-collector.yaml)"
                log.warning("PodCapture watch: %s%s (retrying in %.1f s)", e, hint, backoff)
                self._stop.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.backoff_max_s)

    def _watch_once(self, rv: str) -> str:
        timeout = int(self.watch_timeout_s * random.uniform(1.0, 2.0))
        stream = self.api.watch_objects(PODCAPTURES, resource_version=rv, timeout_seconds=timeout)
        self._stream = stream
        try:
            for type_, obj in stream:
                if self._stop.is_set() or not self._leading():
                    stream.abort()
                    break
                if type_ == "ERROR":
                    raise self.api.object_status_error(obj, PODCAPTURES, None)
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if type_ == "BOOKMARK":
                    continue
                key = _key(obj)
                with self._cond:
                    if type_ == "DELETED":
                        self._cache.pop(key, None)
                        self._states.pop(key, None)
                    else:
                        self._remember_locked(obj)
                        self._enqueue_locked(key)
        finally:
            self._stream = None
            stream.close()
        return rv

    def _remember_locked(self, obj: Obj) -> None:
        """Keep the newer of what the watch and our own writes saw."""
        key = _key(obj)
        cur = self._cache.get(key)
        if cur is None or _rv(obj) >= _rv(cur):
            self._cache[key] = obj

    def _enqueue_locked(self, key: Key) -> None:
        if key not in self._queue:
            self._queue.append(key)
            self._cond.notify_all()

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.status_interval_s):
            if not self._leading():
                continue
            with self._cond:
                for key, obj in self._cache.items():
                    phase = (obj.get("status") or {}).get("phase", "")
                    if phase in ("", "Pending", "Running", "Stopping") or self._states.get(key, _State()).status_dirty:
                        self._enqueue_locked(key)

    # ---- work ----

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait(0.5)
                if self._stop.is_set():
                    return
                key = self._queue.pop(0)
                obj = self._cache.get(key)
            if obj is None or not self._leading():
                continue
            try:
                self.reconcile(obj)
            except ConflictRetry:
                self._reread_and_requeue(key)
            except KubeNotFoundError:
                with self._cond:
                    self._cache.pop(key, None)
            except KubeError as e:
                log.warning("PodCapture %s/%s: %s (retrying)", key[0], key[1], e)
                self._stop.wait(self.backoff_initial_s)
                with self._cond:
                    self._enqueue_locked(key)
            except Exception:
                log.exception("PodCapture %s/%s: reconcile failed", key[0], key[1])

    def _reread_and_requeue(self, key: Key) -> None:
        try:
            fresh = self.api.get_object(PODCAPTURES, key[0], key[1])
        except KubeNotFoundError:
            with self._cond:
                self._cache.pop(key, None)
            return
        except KubeError as e:
            log.warning("PodCapture %s/%s: %s", key[0], key[1], e)
            return
        with self._cond:
            self._remember_locked(fresh)
            self._enqueue_locked(key)

    def reconcile(self, obj: Obj) -> None:
        """Bring the world in line with one PodCapture (see the module's docstring). Raises ConflictRetry."""
        self.reconciles += 1
        key = _key(obj)
        with self._cond:
            state = self._states.setdefault(key, _State())
        md = obj["metadata"]
        if md.get("deletionTimestamp"):
            if FINALIZER in (md.get("finalizers") or []):
                self._finalize(obj)
            return
        if FINALIZER not in (md.get("finalizers") or []):
            obj = self._patch(obj, {"finalizers": [*(md.get("finalizers") or []), FINALIZER]})
        if is_recorder(obj):
            self._reconcile_recorder(obj, state)
            return
        cap = self._recorded_capture(obj)
        if cap is None and self._capture_id(obj):
            self._write_status(obj, state, {"phase": "Failed", "captureId": self._capture_id(obj),
                                            "message": f"capture {self._capture_id(obj)} no longer exists (deleted "
                                                       "with podcap delete, or by the retention policy)"})
            return
        if cap is None:
            cap = self._start(obj, state)
            if cap is None:
                return
            obj = self._patch(obj, {"annotations": {CAPTURE_ANNOTATION: cap.id}})
        elif (obj["metadata"].get("annotations") or {}).get(CAPTURE_ANNOTATION) != cap.id:
            obj = self._patch(obj, {"annotations": {CAPTURE_ANNOTATION: cap.id}})
        st = status_of(self.captures.status(cap), bucket_url=self.bucket_url)
        st["message"] = ""
        self._write_status(obj, state, st, capturing=True)

    # ---- steps ----

    @staticmethod
    def _capture_id(obj: Obj) -> str:
        return str((obj["metadata"].get("annotations") or {}).get(CAPTURE_ANNOTATION)
                   or (obj.get("status") or {}).get("captureId") or "")

    def _recorded_capture(self, obj: Obj) -> Capture | None:
        cid = self._capture_id(obj)
        if cid:
            try:
                return self.captures.get(cid)
            except CaptureNotFoundError:
                return None
        marker = capture_marker(obj)
        for cap in self.captures.all():
            if marker in cap.request.note.split("\n"):
                return cap
        return None

    def _creator(self, obj: Obj) -> Principal | None:
        ann = obj["metadata"].get("annotations") or {}
        user = str(ann.get(CREATOR_ANNOTATION) or "")
        if not user:
            return None
        groups = tuple(g for g in str(ann.get(CREATOR_GROUPS_ANNOTATION) or "").split(",") if g)
        return Principal(user, groups)

    def _may_start(self, obj: Obj, state: _State) -> Principal | None:
        """The creator, when it may start what the resource asks for (else the resource is Refused: None)."""
        namespace = obj["metadata"]["namespace"]
        if state.failed_generation == int(obj["metadata"].get("generation") or 0):
            return None
        who = self._creator(obj)
        target = control_pb2.Target(namespace=namespace)
        if who is None and not isinstance(self.authorizer, OpenAuthorizer):
            msg = (f"no creator recorded: set the annotation {CREATOR_ANNOTATION} (deploy/base/"
                   "podcapture-admission.yaml makes the API server check it is the requester)")
            self._refuse(obj, state, "unknown", target, "NoCreator", msg)
            return None
        who = who or Principal("unknown", ())
        try:
            self.authorizer.check(who, "create", namespace)
        except DeniedError as e:
            self._refuse(obj, state, who.user, target, "CreatorDenied", str(e))
            return None
        return who

    def _not_started(self, obj: Obj, state: _State, who: Principal, action: str, e: PodcapError) -> None:
        """Starting failed: Pending (retried: no pod, no agent yet) or Failed until the spec changes."""
        namespace = obj["metadata"]["namespace"]
        retry = isinstance(e, RETRYABLE)
        detail = f"PodCapture {ref(obj)}: {e}"
        if state.pending_message != str(e):
            state.pending_message = str(e)
            self._record(who.user, action, target=control_pb2.Target(namespace=namespace), result="failed",
                         detail=detail)
            self._event(obj, "Warning", "Pending" if retry else "Failed", str(e))
        if not retry:
            state.failed_generation = int(obj["metadata"].get("generation") or 0)
        self._write_status(obj, state, {"phase": "Pending" if retry else "Failed", "message": str(e),
                                        "podCount": 0, "packets": 0, "drops": 0},
                           authorized=("CreatorAllowed", f"{who.user} may create pods/capture in {namespace}"))

    def _start(self, obj: Obj, state: _State) -> Capture | None:
        who = self._may_start(obj, state)
        if who is None:
            return None
        try:
            req = to_request(obj)
            # The namespace's payload policy, decided for the creator as for a user's StartCapture.
            effective_snaplen(self.policies, self.authorizer, who, req.target, req.settings.snaplen).apply(req)
            cap = self.captures.start(req)
        except PodcapError as e:
            self._not_started(obj, state, who, "start", e)
            return None
        n = len(cap.pods)
        detail = f"PodCapture {ref(obj)}: {n} pod{'' if n == 1 else 's'}"
        if req.target.HasField("payload_cap"):
            detail += f"; snaplen capped at {req.target.payload_cap.snaplen}: {req.target.payload_cap.reason}"
        self._record(who.user, "start", capture=cap, result="allowed", detail=detail)
        self._event(obj, "Normal", "Started", f"capture {cap.id} started: {n} pod{'' if n == 1 else 's'}")
        state.pending_message = ""
        return cap

    # ---- a flight recorder (spec.recorder) ----

    def _reconcile_recorder(self, obj: Obj, state: _State) -> None:
        """Steps 3 to 5 for a recorder: the one recorded (annotation ``podcap.io/recorder-id``, status.recorderId,
        or the resource's uid in its note), else one started as the StartRecorder RPC starts it."""
        if self.recorders is None:
            self._write_status(obj, state, {"phase": "Failed", "message": "spec.recorder: this collector runs "
                                            "without flight recorders", "podCount": 0, "packets": 0, "drops": 0})
            return
        rec = self._recorded_recorder(obj)
        rid = self._recorder_id(obj)
        if rec is None and rid:
            self._write_status(obj, state, {"phase": "Failed", "recorderId": rid,
                                            "message": f"recorder {rid} no longer exists"})
            return
        if rec is None:
            rec = self._start_recorder(obj, state)
            if rec is None:
                return
        if (obj["metadata"].get("annotations") or {}).get(RECORDER_ANNOTATION) != rec.id:
            obj = self._patch(obj, {"annotations": {RECORDER_ANNOTATION: rec.id}})
        st = recorder_status_of(self.recorders.status(rec), bucket_url=self.bucket_url)
        st["message"] = ""
        self._write_status(obj, state, st, capturing=True)

    @staticmethod
    def _recorder_id(obj: Obj) -> str:
        return str((obj["metadata"].get("annotations") or {}).get(RECORDER_ANNOTATION)
                   or (obj.get("status") or {}).get("recorderId") or "")

    def _recorded_recorder(self, obj: Obj) -> Recorder | None:
        if self.recorders is None:
            return None
        rid = self._recorder_id(obj)
        if rid:
            try:
                return self.recorders.get(rid)
            except RecorderNotFoundError:
                return None
        marker = capture_marker(obj)
        return next((r for r in self.recorders.all() if marker in r.request.note.split("\n")), None)

    def _start_recorder(self, obj: Obj, state: _State) -> Recorder | None:
        assert self.recorders is not None
        who = self._may_start(obj, state)
        if who is None:
            return None
        try:
            rec = start_recorder(self.recorders, self.policies, self.authorizer, who, to_recorder_request(obj))
        except PodcapError as e:
            self._not_started(obj, state, who, "record", e)
            return None
        n = len(rec.pods)
        detail = f"PodCapture {ref(obj)}: {n} pod{'' if n == 1 else 's'}"
        if rec.request.target.HasField("payload_cap"):
            detail += (f"; snaplen capped at {rec.request.target.payload_cap.snaplen}: "
                       f"{rec.request.target.payload_cap.reason}")
        self._record(who.user, "record", capture=rec, result="allowed", detail=detail)
        self._event(obj, "Normal", "Started", f"recorder {rec.id} started: {n} pod{'' if n == 1 else 's'}")
        state.pending_message = ""
        return rec

    def _finalize_recorder(self, obj: Obj, user: str, retain: bool) -> None:
        """Stop the resource's recorder (the agents delete its rings) and delete its saves unless retainOnDelete."""
        rec = self._recorded_recorder(obj)
        if rec is None or self.recorders is None:
            return
        if rec.recording:
            self.recorders.stop(rec.id, reason=f"PodCapture {ref(obj)} deleted")
            self._record(user, "stop", capture=rec, result="allowed", detail=f"PodCapture {ref(obj)} deleted")
        if retain:
            return
        for save in self.recorders.status(rec).saves:
            try:
                deletion = self.captures.delete(save.capture_id, by=f"PodCapture {ref(obj)}", force=True)
            except CaptureNotFoundError:
                continue
            self._record(user, "delete", capture=rec, result="allowed",
                         detail=f"PodCapture {ref(obj)} deleted: save {save.capture_id}; {deletion.bytes} bytes")

    def _refuse(self, obj: Obj, state: _State, user: str, target: control_pb2.Target, reason: str,
                message: str) -> None:
        if state.pending_message != message:
            state.pending_message = message
            self._record(user, "start", target=target, result="denied", detail=f"PodCapture {ref(obj)}: {message}")
            self._event(obj, "Warning", "Refused", message)
        state.failed_generation = int(obj["metadata"].get("generation") or 0)
        self._write_status(obj, state, {"phase": "Refused", "message": message, "podCount": 0, "packets": 0,
                                        "drops": 0}, authorized=(reason, message), allowed=False)

    def _finalize(self, obj: Obj) -> None:
        """The resource is being deleted: stop its capture, delete its data (unless retainOnDelete), let it go."""
        cap = self._recorded_capture(obj)
        retain = bool((obj.get("spec") or {}).get("retainOnDelete"))
        user = (self._creator(obj) or Principal("unknown", ())).user
        if cap is not None:
            if cap.state in (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING):
                self.captures.stop(cap.id, "PodCapture deleted", wait=self.stop_wait_s)
                self._record(user, "stop", capture=cap, result="allowed", detail=f"PodCapture {ref(obj)} deleted")
            if not retain:
                try:
                    deletion = self.captures.delete(cap.id, by=f"PodCapture {ref(obj)}", force=True)
                    self._record(user, "delete", capture=cap, result="allowed",
                                 detail=f"PodCapture {ref(obj)} deleted; {deletion.bytes} bytes")
                except CaptureNotFoundError:
                    pass
        self._finalize_recorder(obj, user, retain)
        finalizers = [f for f in obj["metadata"].get("finalizers") or [] if f != FINALIZER]
        self._patch(obj, {"finalizers": finalizers})

    def _patch(self, obj: Obj, metadata: Obj) -> Obj:
        """A merge patch of ``metadata`` with the resourceVersion read as its precondition."""
        md = obj["metadata"]
        body = {"metadata": {**metadata, "resourceVersion": md["resourceVersion"]}}
        try:
            out = self.api.patch_object(PODCAPTURES, md["namespace"], md["name"], body)
        except KubeApiError as e:
            if e.code == 409:
                raise ConflictRetry(str(e)) from e
            raise
        with self._cond:
            self._remember_locked(out)
        return out

    def _write_status(self, obj: Obj, state: _State, fields: Obj, *, capturing: bool = False,
                      authorized: tuple[str, str] = ("CreatorAllowed", ""), allowed: bool = True) -> None:
        old: Obj = obj.get("status") or {}
        new: Obj = {k: v for k, v in old.items() if k in ("captureId", "recorderId", "get", "startTime")}
        new.update({k: v for k, v in fields.items() if v != "" or k == "message"})
        if not new.get("message"):
            new.pop("message", None)
        new["observedGeneration"] = int(obj["metadata"].get("generation") or 0)
        phase = new.get("phase", "Pending")
        new["conditions"] = [
            _condition(old, "Authorized", allowed, authorized[0], authorized[1]),
            _condition(old, "Capturing", phase == "Running", phase, new.get("message", "")
                       or ((f"recorder {new['recorderId']}" if new.get("recorderId")
                            else f"capture {new.get('captureId')}") if capturing else "")),
        ]
        if new == old:
            state.status_dirty = False
            return
        now = time.monotonic()
        if now - state.last_status_write < self.min_status_interval_s:
            state.status_dirty = True  # the ticker comes back
            return
        body = dict(obj, status=new)
        try:
            out = self.api.replace_object(PODCAPTURES, obj["metadata"]["namespace"], obj["metadata"]["name"], body,
                                          status=True)
        except KubeApiError as e:
            if e.code == 409:
                raise ConflictRetry(str(e)) from e
            raise
        state.last_status_write, state.status_dirty = now, False
        with self._cond:
            self._remember_locked(out)

    def _record(self, user: str, action: str, *, capture: Capture | Recorder | None = None,
                target: control_pb2.Target | None = None, result: str, detail: str) -> None:
        """An audit record; a recorder's id is in the capture column, as the recorder calls of the API write it."""
        t = capture.request.target if capture is not None else target
        rec = control_pb2.AuditRecord(unix_ns=time.time_ns(), user=user, action=action,
                                      capture_id=capture.id if capture else "",
                                      target=target_text(t) if t is not None else "",
                                      filter=capture.request.settings.filter if capture else "", result=result,
                                      detail=detail[:2000])
        log.info("audit: %s %s %s %s %s", user, action, rec.capture_id or "-", result, detail[:200])
        try:
            self.audit(rec)
        except Exception:
            log.exception("cannot write the audit record")

    def _event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        md = obj["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {"apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{md['name']}.", "namespace": md["namespace"]},
                "involvedObject": {"apiVersion": API_VERSION, "kind": KIND, "name": md["name"],
                                   "namespace": md["namespace"], "uid": md.get("uid", ""),
                                   "resourceVersion": md.get("resourceVersion", "")},
                "reason": reason, "message": message[:1024], "type": type_,
                "source": {"component": CONTROLLER}, "reportingComponent": CONTROLLER,
                "firstTimestamp": now, "lastTimestamp": now, "count": 1}
        try:
            self.api.create_event(md["namespace"], body)
        except KubeError as e:
            log.info("no event for PodCapture %s: %s", ref(obj), e)


def _key(obj: Obj) -> Key:
    md = obj.get("metadata") or {}
    return (str(md.get("namespace") or ""), str(md.get("name") or ""))


def _rv(obj: Obj) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _condition(old: Obj, type_: str, ok: bool, reason: str, message: str) -> Obj:
    """A condition, keeping its lastTransitionTime while its status does not change."""
    status = "True" if ok else "False"
    prev = next((c for c in old.get("conditions") or [] if c.get("type") == type_), None)
    when = prev["lastTransitionTime"] if prev and prev.get("status") == status and prev.get("lastTransitionTime") \
        else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    cond: Obj = {"type": type_, "status": status, "reason": reason or "Unknown", "lastTransitionTime": when}
    if message:
        cond["message"] = message[:1024]
    return cond


def start_controller(api: KubeApi, captures: CaptureManager, authorizer: Authorizer, *, lease_namespace: str,
                     identity: str, bucket_url: str = "", lease_duration_s: int = 15,
                     lease_renew_s: float = 5.0, **kw: Any) -> PodCaptureController:
    """The controller of a collector (``--reconcile-podcaptures``), reconciling while it holds the Lease
    ``lease_namespace/podcap-podcaptures``; every start and refusal goes to the capture store's audit trail."""
    lease = LeaseElector(api, namespace=lease_namespace, identity=identity, duration_s=lease_duration_s,
                         renew_s=lease_renew_s).start()
    return PodCaptureController(api, captures, authorizer, captures.store.add_audit, lease=lease,
                                policies=KubeNamespacePolicies(api), bucket_url=bucket_url, **kw).start()
