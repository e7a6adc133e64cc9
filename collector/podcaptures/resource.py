"""What a PodCapture is to the collector: its API names, its spec as a capture request, a capture as its status.

Pure functions, no I/O, so that each rule is unit-tested on its own:

- ``to_request``: the spec as the ``StartCaptureRequest`` that ``podcap start`` would send. The namespace is the
  resource's own, always: the spec has no namespace field, and none of its forms can reach another namespace (pod
  names and selectors are evaluated in the target's namespace; ``all_namespaces`` is never set). Sizes and
  durations take the CLI's units (``100MiB``, ``1h30m``). ``targets`` (``deploy/NAME``, ``svc/NAME`` ...: one, as
  ``podcap start`` takes one) becomes ``Target.object``, resolved by the collector as for the CLI; ``node/NAME`` is
  refused (a node's network is no namespace's). ``target_of`` and ``settings_of`` are shared with a resource that
  asks for a flight recorder (``spec.recorder``: ``recording``), which is no capture request.
- ``capture_marker``: the line put in the capture's note that ties it to the resource (its uid), so a collector
  that restarts between starting a capture and recording its id in the resource finds it again.
- ``status_of``: the resource's status from a ``CaptureStatus``: phase, counters per pod and in total (drops =
  every packet not stored, kernel and podcap causes), how to get the files.
"""

from __future__ import annotations

import math
import time
from typing import Any

from podcap.collector.kube.client import Resource
from podcap.collector.kube.kinds import split_object
from podcap.drops import total_of
from podcap.errors import InvalidInputError, PodcapError
from podcap.units import parse_duration, parse_size
from podcap.v1 import common_pb2, control_pb2

PODCAPTURES = Resource("podcap.io", "v1alpha1", "podcaptures")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
KIND = "PodCapture"
API_VERSION = "podcap.io/v1alpha1"
FINALIZER = "podcap.io/capture"
# The capture this resource started (also in status.captureId; the annotation is written first).
CAPTURE_ANNOTATION = "podcap.io/capture-id"
# The flight recorder this resource started (spec.recorder; also in status.recorderId), as the capture's.
RECORDER_ANNOTATION = "podcap.io/recorder-id"
# Who created the resource: checked by the ValidatingAdmissionPolicy in deploy/base/podcapture-admission.yaml to be
# the requesting user, so the collector may trust it.
CREATOR_ANNOTATION = "podcap.io/created-by"
CREATOR_GROUPS_ANNOTATION = "podcap.io/created-by-groups"
MAX_STATUS_PODS = 100

INTERFACES = {"veth": common_pb2.CAPTURE_INTERFACE_HOST_VETH, "eth0": common_pb2.CAPTURE_INTERFACE_POD_ETH0,
              "all": common_pb2.CAPTURE_INTERFACE_POD_ALL}
PHASES = {control_pb2.CAPTURE_STATE_RUNNING: "Running", control_pb2.CAPTURE_STATE_STOPPING: "Stopping",
          control_pb2.CAPTURE_STATE_DONE: "Done", control_pb2.CAPTURE_STATE_FAILED: "Failed"}

Obj = dict[str, Any]


class PodCaptureSpecError(InvalidInputError):
    """A spec the collector cannot turn into a capture (the schema lets through what only the collector knows)."""


def _duration(value: Any, field: str) -> float:
    """Seconds of ``90``, ``15m``, ``1h30m``, ``500ms`` (``podcap.units``' grammar); 0 when unset."""
    if value in (None, ""):
        return 0.0
    try:
        return parse_duration(str(value))
    except ValueError:
        raise PodCaptureSpecError(f"spec.{field}: {value!r} is not a duration (90, 15m, 1h30m)") from None


def seconds(value: Any, field: str) -> int:
    """Whole seconds (rounded up) of ``90``, ``15m``, ``1h30m``; 0 when unset."""
    return math.ceil(_duration(value, field))


def millis(value: Any, field: str) -> int:
    """Whole milliseconds (rounded up) of ``90``, ``1.5s``, ``500ms``; 0 when unset."""
    return math.ceil(round(_duration(value, field) * 1000, 6))


def size(value: Any, field: str) -> int:
    """Bytes of ``1000``, ``64KiB``, ``100MiB``, ``2G`` (an integer is bytes); 0 when unset."""
    if value in (None, ""):
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return parse_size(str(value))
    except ValueError:
        raise PodCaptureSpecError(f"spec.{field}: {value!r} is not a size (1000, 64KiB, 100MiB, 2G)") from None


def ref(obj: Obj) -> str:
    """``namespace/name`` of a resource."""
    return f"{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


def capture_marker(obj: Obj) -> str:
    """The note line that ties a capture to the resource (its uid, which a re-created resource does not share)."""
    return f"PodCapture {ref(obj)} uid={obj['metadata']['uid']}"


def target_of(obj: Obj) -> control_pb2.Target:
    """The pods ``obj`` (a PodCapture) names, in the resource's own namespace. Raises PodCaptureSpecError."""
    spec: Obj = obj.get("spec") or {}
    namespace = obj["metadata"]["namespace"]
    names = [str(p) for p in spec.get("pods") or []]
    for name in names:
        if "/" in name:  # "other/pod" would name a pod of another namespace where the CLI's syntax is accepted
            raise PodCaptureSpecError(f"spec.pods: {name!r} is not a pod name (pods of this namespace only)")
    target = control_pb2.Target(namespace=namespace, all_namespaces=False, selector=str(spec.get("selector") or ""),
                                pod_names=names)
    targets = [str(t) for t in spec.get("targets") or []]
    if targets:
        target.object.CopyFrom(_target_object(targets, names))
    if not (target.selector or target.pod_names or targets):
        raise PodCaptureSpecError("spec names no pods: give spec.pods, spec.selector or spec.targets (a PodCapture "
                                  "never captures a whole namespace by accident)")
    return target


def settings_of(spec: Obj) -> common_pb2.CaptureSettings:
    """What is captured of each pod (filter, snaplen, buffer, interface). Raises PodCaptureSpecError."""
    interface = str(spec.get("interface") or "veth")
    if interface not in INTERFACES:
        raise PodCaptureSpecError(f"spec.interface: {interface!r} is not one of {', '.join(INTERFACES)}")
    return common_pb2.CaptureSettings(filter=str(spec.get("filter") or ""), snaplen=int(spec.get("snaplen") or 0),
                                      buffer_bytes=size(spec.get("bufferSize"), "bufferSize"),
                                      interface=INTERFACES[interface])


def to_request(obj: Obj) -> control_pb2.StartCaptureRequest:
    """The capture ``obj`` (a PodCapture without ``spec.recorder``: see ``recording``) asks for, in the resource's
    own namespace. Raises PodCaptureSpecError."""
    spec: Obj = obj.get("spec") or {}
    if spec.get("recorder"):
        raise PodCaptureSpecError("spec.recorder: a recorder, not a capture (podcaptures.recording)")
    limits, rotation, retention = spec.get("limits") or {}, spec.get("rotation") or {}, spec.get("retention") or {}
    return control_pb2.StartCaptureRequest(
        target=target_of(obj),
        settings=settings_of(spec),
        limits=control_pb2.Limits(duration_seconds=seconds(limits.get("duration"), "limits.duration"),
                                  max_bytes=size(limits.get("maxBytes"), "limits.maxBytes"),
                                  max_packets=int(limits.get("maxPackets") or 0)),
        rotation=control_pb2.Rotation(segment_bytes=size(rotation.get("segmentSize"), "rotation.segmentSize"),
                                      segment_seconds=seconds(rotation.get("segmentTime"), "rotation.segmentTime")),
        retention=control_pb2.Retention(keep_bytes=size(retention.get("keepBytes"), "retention.keepBytes"),
                                        keep_seconds=seconds(retention.get("keepDuration"), "retention.keepDuration"),
                                        keep_total_bytes=size(retention.get("keepTotalBytes"),
                                                              "retention.keepTotalBytes")),
        note="\n".join(x for x in (str(spec.get("note") or ""), capture_marker(obj)) if x),
    )


def _target_object(targets: list[str], names: list[str]) -> control_pb2.TargetObject:
    """The one workload or Service ``spec.targets`` names, in the resource's namespace. A node is refused: its
    network is no namespace's, and a PodCapture captures its own namespace only."""
    if len(targets) > 1 or names:
        given = ", ".join(targets + names)
        raise PodCaptureSpecError(f"spec.targets: one capture covers one workload or Service, or pods by name, not "
                                  f"{given}: make one PodCapture for each")
    try:
        ref = split_object(targets[0])
    except PodcapError as e:
        raise PodCaptureSpecError(f"spec.targets: {e}") from e
    if ref is None:
        raise PodCaptureSpecError(f"spec.targets: {targets[0]!r} is not KIND/NAME (deploy/NAME, statefulset/NAME, "
                                  "daemonset/NAME, job/NAME, svc/NAME)")
    if ref.is_node:
        raise PodCaptureSpecError(f"spec.targets: {ref.text}: a PodCapture captures pods of its own namespace; a "
                                  "node's own network needs `podcap start node/NAME` and the nodes/capture right")
    return control_pb2.TargetObject(kind=ref.kind, name=ref.name)


def pod_drops(p: control_pb2.PodStatus) -> int:
    """Packets of the pod captured but not stored: the kernel's drops and every podcap cause."""
    return int(p.kernel.dropped + p.kernel.if_dropped + total_of(p.drops))


def status_of(st: control_pb2.CaptureStatus, *, bucket_url: str = "") -> Obj:
    """The resource's status fields (phase, counters, files) from the capture's status (conditions and
    observedGeneration are the controller's)."""
    pods = sorted(st.pods, key=lambda p: (p.pod.namespace, p.pod.name, p.pod.uid))
    out: Obj = {
        "phase": PHASES.get(st.state, "Pending"),
        "captureId": st.id,
        "podCount": len(pods),
        "packets": int(st.packets),
        "bytes": int(st.bytes),
        "drops": sum(pod_drops(p) for p in pods),
        "pods": [{"name": p.pod.name, "uid": p.pod.uid, "node": p.pod.node,
                  "state": common_pb2.PodCaptureState.Name(p.state).removeprefix("POD_CAPTURE_STATE_").lower(),
                  "packets": int(p.packets), "bytes": int(p.bytes), "drops": pod_drops(p),
                  **({"message": p.message} if p.message else {})} for p in pods[:MAX_STATUS_PODS]],
        "get": {"command": f"podcap get {st.id}"},
    }
    if bucket_url:
        out["get"]["url"] = f"{bucket_url.rstrip('/')}/{st.id}"
    out.update(lifetime_status(st.created_unix_ns, st.ended_unix_ns, st.end_reason, st.target))
    return out


def lifetime_status(created_unix_ns: int, ended_unix_ns: int, end_reason: str, target: control_pb2.Target) -> Obj:
    """The status fields a capture and a recorder share: when it started and ended, why it ended, and the payload
    cap its target got (each only when there is one)."""
    out: Obj = {}
    if created_unix_ns:
        out["startTime"] = rfc3339(created_unix_ns)
    if ended_unix_ns:
        out["endTime"] = rfc3339(ended_unix_ns)
    if end_reason:
        out["endReason"] = end_reason
    if target.HasField("payload_cap"):
        cap = target.payload_cap
        out["payloadCap"] = {"snaplen": cap.snaplen, "requested": cap.requested, "reason": cap.reason}
    return out


def rfc3339(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))
