"""Validation of a StartRecorderRequest: everything about it that does not depend on the cluster.

The target and capture settings are checked as a capture's (``podcap.collector.captures.requests``; a workload or
Service is resolved later, by the manager, as a capture's; a node is refused: its stand-in pod has no ring); then
what is the recorder's own: how much of the past each ring keeps (``--keep``), the save window (``--before`` at most
``--keep``), the triggers, and the packet trigger's filter, compiled here so that a filter that does not compile is
the user's one-line error before any agent hears of the recorder. Defaults are filled in on a copy, so the stored
request (and ``status``) says what applies. Raises ``InvalidInputError`` subclasses only, naming the option a user
types.
"""

from __future__ import annotations

from podcap.collector.captures.requests import validate_request
from podcap.collector.filters import FilterError, check_filter
from podcap.collector.recorders.triggers import check_triggers
from podcap.collector.targets import TargetSpec
from podcap.errors import InvalidInputError
from podcap.v1 import control_pb2

DEFAULT_BEFORE_MS = 60_000
DEFAULT_AFTER_MS = 10_000
DEFAULT_COOLDOWN_S = 60
DEFAULT_SAVES_PER_HOUR = 12
DEFAULT_TRIGGER_WINDOW_MS = 1000
MAX_KEEP_S = 7 * 86400
MAX_AFTER_MS = 3600_000
MIN_KEEP_BYTES = 1 << 20


class InvalidRecorderError(InvalidInputError):
    """A recorder's keep, window, triggers or debounce settings are out of bounds."""


def _seconds(ms: int) -> str:
    return f"{ms / 1000:g}s"


def validate_recorder(req: control_pb2.StartRecorderRequest) -> tuple[control_pb2.StartRecorderRequest, TargetSpec]:
    """The request with its defaults filled in, and its parsed target."""
    spec = validate_request(control_pb2.StartCaptureRequest(target=req.target, settings=req.settings, note=req.note))
    if spec.object is not None and spec.object.is_node:
        raise InvalidRecorderError(f"{spec.object.text}: a recorder keeps rings of pods, not of a node's own "
                                   "network (capture the node with `podcap start node/NAME`)")
    out = control_pb2.StartRecorderRequest()
    out.CopyFrom(req)
    if not (req.keep_bytes or req.keep_seconds):
        raise InvalidRecorderError("--keep is required: how much of each pod's past to keep on its node "
                                   "(a duration such as 5m, or a size such as 200MiB)")
    if req.keep_seconds > MAX_KEEP_S:
        raise InvalidRecorderError(f"--keep must be at most {MAX_KEEP_S // 86400}d")
    if req.keep_bytes and req.keep_bytes < MIN_KEEP_BYTES:
        raise InvalidRecorderError("--keep must be at least 1MiB")
    out.before_ms = req.before_ms or DEFAULT_BEFORE_MS
    out.after_ms = req.after_ms or DEFAULT_AFTER_MS
    if req.keep_seconds and out.before_ms > req.keep_seconds * 1000:
        raise InvalidRecorderError(f"--before {_seconds(out.before_ms)} is longer than --keep "
                                   f"{req.keep_seconds}s: a ring cannot save more of the past than it keeps")
    if out.after_ms > MAX_AFTER_MS:
        raise InvalidRecorderError("--after must be at most 1h")
    del out.on[:]
    out.on.extend(check_triggers(list(req.on)))
    has_filter = bool(req.packet_trigger.filter.strip())
    if control_pb2.RECORDER_TRIGGER_PACKETS in out.on and not has_filter:
        raise InvalidRecorderError("--on packets needs --trigger-filter (a BPF expression, e.g. "
                                   "'tcp[tcpflags] & tcp-rst != 0')")
    if has_filter:
        if control_pb2.RECORDER_TRIGGER_PACKETS not in out.on:
            out.on.append(control_pb2.RECORDER_TRIGGER_PACKETS)  # a trigger filter is a wish to trigger on it
        try:
            check_filter(req.packet_trigger.filter, interface=req.settings.interface, snaplen=req.settings.snaplen)
        except FilterError as e:
            raise FilterError(f"--trigger-filter: {e}") from e
        t = out.packet_trigger
        t.count = t.count or 1
        t.window_ms = t.window_ms or DEFAULT_TRIGGER_WINDOW_MS
        if t.count > 65536:
            raise InvalidRecorderError("--trigger-count must be at most 65536")
        if t.window_ms > 3600_000:
            raise InvalidRecorderError("--trigger-window must be at most 1h")
    out.cooldown_seconds = req.cooldown_seconds or DEFAULT_COOLDOWN_S
    out.max_saves_per_hour = req.max_saves_per_hour or DEFAULT_SAVES_PER_HOUR
    return out, spec
