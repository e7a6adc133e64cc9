"""A PodCapture with ``spec.recorder``: a flight recorder rather than a capture. Its spec as the
``StartRecorderRequest`` that ``podcap record`` would send, and the recorder as the resource's status.

Pure functions, no I/O, as ``resource``'s (whose target and settings rules apply unchanged: the resource's own
namespace only, pods, selector or one workload or Service):

- ``to_recorder_request``: ``spec.recorder`` in the CLI's units (``keep: 10m``, ``keepBytes: 500MiB``, ``before``,
  ``after``, ``triggers`` in ``--on``'s words, ``save: pod|all``, ``cooldown``, ``maxSavesPerHour``, the packet
  trigger's ``triggerFilter``/``triggerCount``/``triggerWindow``). A recorder runs until the resource is deleted and
  keeps its rings on the nodes, so ``spec.limits``, ``rotation`` and ``retention`` (a capture's) are refused rather
  than ignored. The note carries ``capture_marker`` (the resource's uid), as a capture's does, so a collector that
  restarts before recording the recorder's id finds it again.
- ``recorder_status_of``: phase (``Running`` while it records, ``Done`` once stopped), ``recorderId``, its pods'
  rings (what each agent last reported: bytes, packets, the span kept, drops) and its saves, newest first, each a
  capture with its ``podcap get`` command (and bucket URL).
"""

from __future__ import annotations

from typing import Any

from podcap.collector.podcaptures.resource import (
    MAX_STATUS_PODS,
    PodCaptureSpecError,
    capture_marker,
    lifetime_status,
    millis,
    rfc3339,
    seconds,
    settings_of,
    size,
    target_of,
)
from podcap.collector.recorders.triggers import NAMES as TRIGGER_NAMES
from podcap.collector.recorders.triggers import trigger_word
from podcap.drops import total_of
from podcap.v1 import control_pb2

Obj = dict[str, Any]

# The spec.recorder fields (the CRD's schema lists the same).
FIELDS = ("keep", "keepBytes", "before", "after", "triggers", "save", "cooldown", "maxSavesPerHour",
          "triggerFilter", "triggerCount", "triggerWindow")
SAVE_SCOPES = {"pod": control_pb2.RECORDER_SAVE_SCOPE_POD, "all": control_pb2.RECORDER_SAVE_SCOPE_ALL}
MAX_STATUS_SAVES = 100


def is_recorder(obj: Obj) -> bool:
    """The resource asks for a flight recorder (``spec.recorder``), not a capture."""
    return bool((obj.get("spec") or {}).get("recorder"))


def to_recorder_request(obj: Obj) -> control_pb2.StartRecorderRequest:
    """The recorder ``obj`` (a PodCapture with ``spec.recorder``) asks for, in the resource's own namespace. Raises
    PodCaptureSpecError; the collector validates the rest (bounds, the filters) as for ``podcap record``."""
    spec: Obj = obj.get("spec") or {}
    rec: Obj = spec.get("recorder") or {}
    for key in ("limits", "rotation", "retention"):
        if spec.get(key):
            raise PodCaptureSpecError(f"spec.{key} is a capture's: a recorder keeps rings on the nodes (spec.recorder."
                                      "keep, keepBytes) and runs until the resource is deleted")
    unknown = sorted(set(rec) - set(FIELDS))
    if unknown:
        raise PodCaptureSpecError(f"spec.recorder.{unknown[0]} is not a recorder field ({', '.join(FIELDS)})")
    on: list[control_pb2.RecorderTrigger.ValueType] = []
    for word in rec.get("triggers") or []:
        trigger = TRIGGER_NAMES.get(str(word).strip().lower())
        if trigger is None:
            raise PodCaptureSpecError(f"spec.recorder.triggers: {word!r} is not a trigger ({', '.join(TRIGGER_NAMES)})")
        on.append(trigger)
    scope = str(rec.get("save") or "pod")
    if scope not in SAVE_SCOPES:
        raise PodCaptureSpecError(f"spec.recorder.save: {scope!r} is not pod or all")
    keep_bytes, keep_seconds = size(rec.get("keepBytes"), "recorder.keepBytes"), seconds(rec.get("keep"),
                                                                                           "recorder.keep")
    if not (keep_bytes or keep_seconds):
        raise PodCaptureSpecError("spec.recorder needs keep (a duration, 10m) or keepBytes (a size, 500MiB): how "
                                  "much of each pod's past its node keeps")
    req = control_pb2.StartRecorderRequest(
        target=target_of(obj), settings=settings_of(spec), keep_bytes=keep_bytes, keep_seconds=keep_seconds,
        before_ms=millis(rec.get("before"), "recorder.before"), after_ms=millis(rec.get("after"), "recorder.after"),
        on=on, save=SAVE_SCOPES[scope], cooldown_seconds=seconds(rec.get("cooldown"), "recorder.cooldown"),
        max_saves_per_hour=int(rec.get("maxSavesPerHour") or 0),
        note="\n".join(x for x in (str(spec.get("note") or ""), capture_marker(obj)) if x))
    if rec.get("triggerFilter"):
        req.packet_trigger.CopyFrom(control_pb2.RecorderPacketTrigger(
            filter=str(rec["triggerFilter"]), count=int(rec.get("triggerCount") or 0),
            window_ms=millis(rec.get("triggerWindow"), "recorder.triggerWindow")))
    return req


def _ring(p: control_pb2.RecorderPodStatus) -> Obj:
    out: Obj = {"name": p.pod.name, "uid": p.pod.uid, "node": p.pod.node, "state": p.state,
                "bytes": int(p.bytes), "packets": int(p.packets),
                "drops": int(p.kernel.dropped + p.kernel.if_dropped + total_of(p.drops))}
    if p.oldest_unix_ns and p.newest_unix_ns:
        out["oldest"], out["newest"] = rfc3339(p.oldest_unix_ns), rfc3339(p.newest_unix_ns)
        out["spanSeconds"] = max(0, (p.newest_unix_ns - p.oldest_unix_ns) // 1_000_000_000)
    if p.message:
        out["message"] = p.message
    return out


def _save(s: control_pb2.RecorderSave, bucket_url: str) -> Obj:
    if s.deleted:
        state = "deleted"
    elif not s.info.dispatched and s.state in (control_pb2.CAPTURE_STATE_UNSPECIFIED,
                                                control_pb2.CAPTURE_STATE_RUNNING):
        state = "waiting"  # for its window to pass: later triggers may still join it
    else:
        state = control_pb2.CaptureState.Name(s.state).removeprefix("CAPTURE_STATE_").lower()
    out: Obj = {"captureId": s.capture_id, "state": state,
                "triggers": [trigger_word(t.reason) for t in s.info.triggers],
                "packets": int(s.packets), "bytes": int(s.bytes), "get": {"command": f"podcap get {s.capture_id}"}}
    if s.info.from_unix_ns and s.info.to_unix_ns:
        out["from"], out["to"] = rfc3339(s.info.from_unix_ns), rfc3339(s.info.to_unix_ns)
    if bucket_url:
        out["get"]["url"] = f"{bucket_url.rstrip('/')}/{s.capture_id}"
    if s.deleted:
        out["message"] = s.deleted
    return out


def recorder_status_of(st: control_pb2.RecorderStatus, *, bucket_url: str = "") -> Obj:
    """The resource's status fields from the recorder's status (conditions and observedGeneration are the
    controller's). ``packets``/``bytes``/``drops`` are the rings' (what the nodes hold now, not stored)."""
    pods = sorted(st.pods, key=lambda p: (p.pod.namespace, p.pod.name, p.pod.uid))
    rings = [_ring(p) for p in pods]
    out: Obj = {
        "phase": "Running" if st.state == control_pb2.RECORDER_STATE_RECORDING else "Done",
        "recorderId": st.id,
        "podCount": len(pods),
        "packets": sum(r["packets"] for r in rings),
        "bytes": sum(r["bytes"] for r in rings),
        "drops": sum(r["drops"] for r in rings),
        "rings": rings[:MAX_STATUS_PODS],
        "saveCount": len(st.saves),
        "saves": [_save(s, bucket_url) for s in st.saves[:MAX_STATUS_SAVES]],  # newest first
    }
    if st.suppressed:
        out["suppressed"] = int(st.suppressed)
    out.update(lifetime_status(st.created_unix_ns, st.ended_unix_ns, st.end_reason, st.request.target))
    return out

