"""The recorder triggers' names, as users type them (``podcap record --on restart,oomkilled``, a PodCapture's
``spec.recorder.triggers``) and see them in messages.

One table for the CLI (which parses ``--on``) and the collector (which checks a request's ``on``, reads a
PodCapture's triggers and names triggers in logs and notes): it lives in the shared package because the CLI may
not import the collector's internals. ``manual`` (``podcap trigger``) is a trigger but never a choice for ``--on``.
"""

from __future__ import annotations

from typing import TypeAlias

from podcap.v1 import control_pb2

Trigger: TypeAlias = control_pb2.RecorderTrigger.ValueType

# The triggers one chooses, by name, in the order help and messages list them.
TRIGGER_NAMES: dict[str, Trigger] = {
    "restart": control_pb2.RECORDER_TRIGGER_RESTART,
    "oomkilled": control_pb2.RECORDER_TRIGGER_OOMKILLED,
    "unhealthy": control_pb2.RECORDER_TRIGGER_UNHEALTHY,
    "notready": control_pb2.RECORDER_TRIGGER_NOTREADY,
    "deleted": control_pb2.RECORDER_TRIGGER_DELETED,
    "packets": control_pb2.RECORDER_TRIGGER_PACKETS,
}
