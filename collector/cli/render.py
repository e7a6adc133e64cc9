"""Rendering capture status for people (tables) and programs (JSON)."""

from __future__ import annotations

import json
import time
from typing import Any

from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

from podcap.collector.cli.units import human_bytes, human_duration
from podcap.v1 import common_pb2, control_pb2


def capture_state(state: control_pb2.CaptureState.ValueType) -> str:
    return control_pb2.CaptureState.Name(state).removeprefix("CAPTURE_STATE_").lower()


def pod_state(state: common_pb2.PodCaptureState.ValueType) -> str:
    return common_pb2.PodCaptureState.Name(state).removeprefix("POD_CAPTURE_STATE_").lower().replace("_", "-")


def to_dict(status: control_pb2.CaptureStatus) -> dict[str, Any]:
    d = MessageToDict(status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    d["state"] = capture_state(status.state)
    for pod_d, pod in zip(d.get("pods", []), status.pods, strict=True):
        pod_d["state"] = pod_state(pod.state)
    return d


def dump_json(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)


def _target_text(t: control_pb2.Target) -> str:
    parts = ["all namespaces" if t.all_namespaces else f"ns={t.namespace or 'default'}"]
    if t.selector:
        parts.append(f"selector={t.selector}")
    if t.pod_names:
        parts.append("pods=" + ",".join(t.pod_names))
    return " ".join(parts)


def _elapsed(status: control_pb2.CaptureStatus) -> str:
    end = status.ended_unix_ns or time.time_ns()
    return human_duration((end - status.created_unix_ns) / 1e9)


def capture_table(status: control_pb2.CaptureStatus) -> Table:
    title = (f"capture {status.id}: {capture_state(status.state)}"
             f"{' (' + status.end_reason + ')' if status.end_reason else ''}, {_elapsed(status)}, "
             f"{status.packets} packets, {human_bytes(status.bytes)}")
    table = Table(title=title, title_justify="left")
    for col in ("pod", "node", "state", "packets", "bytes", "kernel drops", "agent drops", "interface", "note"):
        table.add_column(col, justify="right" if col in ("packets", "bytes", "kernel drops", "agent drops") else "left")
    for p in status.pods:
        table.add_row(f"{p.pod.namespace}/{p.pod.name}", p.pod.node, pod_state(p.state), str(p.packets),
                      human_bytes(p.bytes), str(p.kernel.dropped + p.kernel.if_dropped),
                      str(p.agent_dropped_packets), p.interface, p.message)
    return table


def list_table(captures: list[control_pb2.CaptureStatus]) -> Table:
    table = Table()
    for col in ("id", "state", "target", "filter", "pods", "packets", "bytes", "age"):
        table.add_column(col)
    for c in captures:
        table.add_row(c.id, capture_state(c.state), _target_text(c.target), c.settings.filter or "-",
                      str(len(c.pods)), str(c.packets), human_bytes(c.bytes), _elapsed(c))
    return table


def print_table(table: Table) -> None:
    Console(soft_wrap=False, width=200).print(table)
