"""Rendering capture status for people (tables) and programs (JSON, YAML).

Machine output is the proto3 JSON mapping of ``CaptureStatus`` with field names as in the .proto, two changes
made for scripts: every enum is the CLI's word for it (``running``, ``capturing``, ``veth``: ``words``), never the
protobuf name, and 64-bit counters are numbers, not the strings of the JSON mapping (``jq '.packets > 0'`` works;
YAML shows plain integers).

The table never claims more than the collector verified. "All N packets ... are stored" is said only once the
capture has ended and every pod is ``final`` (its agent's final counters came and nothing was still on its way)
with nothing unaccounted; otherwise the caption says what is estimated and why, by node. While a capture runs,
each pod shows what its agent holds unacknowledged and, when the agent is not connected, what the collector
knows of it. Names, messages and reasons are user data: escaped before rich renders them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.markup import escape
from rich.table import Table

from podcap.collector.cli import terminal
from podcap.collector.cli.words import enum_word
from podcap.collector.targets import target_text
from podcap.drops import Drops
from podcap.units import human_bytes, human_count, human_duration
from podcap.v1 import common_pb2, control_pb2


def capture_state(state: control_pb2.CaptureState.ValueType) -> str:
    return control_pb2.CaptureState.Name(state).removeprefix("CAPTURE_STATE_").lower()


def pod_state(state: common_pb2.PodCaptureState.ValueType) -> str:
    return common_pb2.PodCaptureState.Name(state).removeprefix("POD_CAPTURE_STATE_").lower().replace("_", "-")


OUTPUT_FORMATS = ("table", "json", "yaml")
_INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def _as_cli_values(msg: Message, d: dict[str, Any]) -> None:
    """Turn the JSON mapping's 64-bit strings back into numbers and its enums (protobuf names) into the CLI's words,
    in place, nested messages too: one walk over the message's fields."""
    for f in msg.DESCRIPTOR.fields:
        if f.name not in d:
            continue
        if f.message_type is not None and not f.message_type.GetOptions().map_entry:
            if f.is_repeated:
                for sub_msg, sub_d in zip(getattr(msg, f.name), d[f.name], strict=True):
                    _as_cli_values(sub_msg, sub_d)
            else:
                _as_cli_values(getattr(msg, f.name), d[f.name])
        elif f.type in _INT64_TYPES:
            d[f.name] = [int(v) for v in d[f.name]] if f.is_repeated else int(d[f.name])
        elif f.enum_type is not None:
            value = getattr(msg, f.name)
            d[f.name] = ([enum_word(f.enum_type, v) for v in value] if f.is_repeated
                         else enum_word(f.enum_type, value))


def to_dict(status: control_pb2.CaptureStatus) -> dict[str, Any]:
    d = MessageToDict(status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _as_cli_values(status, d)
    d["state"] = capture_state(status.state)
    for pod_d, pod in zip(d.get("pods", []), status.pods, strict=True):
        pod_d["state"] = pod_state(pod.state)
    return d


def dump_json(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)


def dump_yaml(obj: object) -> str:
    text: str = yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return text.rstrip("\n")


def dump(obj: object, fmt: str) -> str:
    """``obj`` as ``json`` or ``yaml`` text."""
    return dump_yaml(obj) if fmt == "yaml" else dump_json(obj)


F = TypeVar("F", bound=Callable[..., Any])


def output_option(*, default: str = "table", choices: tuple[str, ...] = OUTPUT_FORMATS) -> Callable[[F], F]:
    """The ``-o/--output`` option shared by the read commands."""
    return click.option("-o", "--output", type=click.Choice(choices), default=default, show_default=True,
                        help="Output format: table for people, json or yaml for programs.")


def _elapsed(status: control_pb2.CaptureStatus) -> str:
    end = status.ended_unix_ns or time.time_ns()
    return human_duration((end - status.created_unix_ns) / 1e9)


def drops_text(p: control_pb2.PodStatus) -> str:
    """Every packet of a pod not stored, by cause: ``"kernel 12, buffer-full 300"``, or ``"0"``."""
    parts = [f"kernel {p.kernel.dropped}"] if p.kernel.dropped else []
    if p.kernel.if_dropped:
        parts.append(f"interface {p.kernel.if_dropped}")
    parts += [f"{cause.replace('_', '-')} {n}" for cause, n in Drops.from_proto(p.drops).nonzero().items()]
    if p.retired_packets:
        parts.append(f"deleted-by-retention {p.retired_packets}")
    return ", ".join(parts) or "0"


def held_text(h: common_pb2.HeldData) -> str:
    """``"9 chunks, 55.0 MiB, 38k packets"``."""
    return f"{h.chunks} chunks, {human_bytes(h.bytes)}, {human_count(h.packets)} packets"


def _live(status: control_pb2.CaptureStatus) -> bool:
    return status.state in (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING)


def _away(p: control_pb2.PodStatus) -> bool:
    """The pod's agent is not (or not known to be) connected."""
    return bool(p.agent) and p.agent != "connected"


def _by_node(pods: list[control_pb2.PodStatus]) -> dict[str, list[control_pb2.PodStatus]]:
    out: dict[str, list[control_pb2.PodStatus]] = {}
    for p in pods:
        out.setdefault(p.pod.node, []).append(p)
    return dict(sorted(out.items()))


def _sum_held(pods: list[control_pb2.PodStatus]) -> common_pb2.HeldData:
    return common_pb2.HeldData(chunks=sum(p.held.chunks for p in pods), bytes=sum(p.held.bytes for p in pods),
                               packets=sum(p.held.packets for p in pods))


def accounting_caption(status: control_pb2.CaptureStatus) -> str:
    """Whether every packet the kernel delivered is stored or counted as dropped — said only when verified (the
    capture ended, every pod final, nothing unaccounted); else what is not verified, and why. While the capture
    runs: what agents hold and which agents are away. Plain text (escape it before rich renders it)."""
    if _live(status):
        return _live_caption(status)
    lines = []
    defect = [p for p in status.pods if p.final and p.unaccounted]
    if defect:
        lines.append(f"{sum(p.unaccounted for p in defect)} packet(s) of {len(defect)} pod(s) are neither stored nor "
                     "counted as dropped (a podcap defect: please report it)")
    for node, pods in _by_node([p for p in status.pods if not p.final]).items():
        lost = sum(p.drops.lost_with_agent for p in pods)
        text = (f"{len(pods)} pod(s) on node {node} never sent their final counters: their losses after the last "
                f"report (lost with the agent: {lost}) are estimates")
        if any(p.held.chunks for p in pods):
            text += f"; still on its way when the capture ended: {held_text(_sum_held(pods))}"
        if off := sum(p.unaccounted for p in pods):
            text += f"; {off} packet(s) unexplained"
        lines.append(text)
    verified = [p for p in status.pods if p.final and not p.unaccounted]
    received = sum(p.kernel.received for p in verified)
    if not lines:
        return f"all {received} packets the kernel delivered are stored, deleted by retention or counted as dropped"
    if verified:
        lines.append(f"the other {len(verified)} pod(s): all {received} packets the kernel delivered are stored, "
                     "deleted by retention or counted as dropped")
    return "\n".join(lines)


def _live_caption(status: control_pb2.CaptureStatus) -> str:
    lines = []
    held = _sum_held(list(status.pods))
    if held.chunks or held.packets:
        lines.append(f"held by agents, not stored yet (on its way: neither stored nor lost): {held_text(held)}")
    for node, pods in _by_node([p for p in status.pods if _away(p)]).items():
        lines.append(f"agent of node {node}: {pods[0].agent}; the counters of its {len(pods)} pod(s) are as of its "
                     "last report")
    return "\n".join(lines)


def pod_note(status: control_pb2.CaptureStatus, p: control_pb2.PodStatus) -> str:
    """The pod's message, what its agent holds for it, and, while the capture runs, its agent if it is away."""
    parts = [p.message] if p.message else []
    if p.held.chunks or p.held.packets:
        parts.append(f"held by agent: {held_text(p.held)}")
    if _live(status) and _away(p):
        parts.append(f"agent {p.agent}")
    return "; ".join(parts)


def storage_note(status: control_pb2.CaptureStatus) -> str:
    """Storing paused, and segments waiting for the bucket (with object storage), or ""."""
    notes = []
    if status.paused:
        notes.append(f"storing paused: {status.paused}")
    if status.archive_backlog_bytes:
        wait = human_duration(status.archive_oldest_seconds)
        notes.append(f"{human_bytes(status.archive_backlog_bytes)} waiting on the collector's disk for the bucket "
                     f"(oldest {wait})" + (f": {status.archive_error}" if status.archive_error else ""))
    return "; ".join(notes)


def capture_table(status: control_pb2.CaptureStatus) -> Table:
    title = (f"capture {status.id}: {capture_state(status.state)}"
             f"{' (' + status.end_reason + ')' if status.end_reason else ''}, {_elapsed(status)}, "
             f"{status.packets} packets, {human_bytes(status.bytes)}")
    if note := storage_note(status):
        title += f"\n{note}"
    if status.target.HasField("payload_cap"):  # the namespace's payload policy (collector/api/payload.py)
        title += f"\nsnaplen capped at {status.target.payload_cap.snaplen} bytes: {status.target.payload_cap.reason}"
    caption = accounting_caption(status)
    table = Table(title=escape(title), title_justify="left", caption=escape(caption) if caption else None,
                  caption_justify="left")
    numeric = ("received", "packets", "bytes")
    for col in ("pod", "node", "state", "received", "packets", "bytes", "drops", "interface", "note"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for p in status.pods:
        table.add_row(escape(f"{p.pod.namespace}/{p.pod.name}"), escape(p.pod.node), pod_state(p.state),
                      str(p.kernel.received), str(p.packets), human_bytes(p.bytes), drops_text(p),
                      escape(p.interface), escape(pod_note(status, p)))
    return table


def list_table(captures: list[control_pb2.CaptureStatus]) -> Table:
    table = Table()
    # "started" says how old a capture is, "ran" how long it captured (so far, while it runs).
    for col in ("id", "state", "target", "filter", "pods", "packets", "bytes", "started", "ran"):
        table.add_column(col)
    for c in captures:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.created_unix_ns / 1e9))
        table.add_row(escape(c.id), capture_state(c.state), escape(target_text(c.target)),
                      escape(c.settings.filter or "-"), str(len(c.pods)), str(c.packets), human_bytes(c.bytes),
                      started, _elapsed(c))
    return table


def deleted_table(deleted: list[control_pb2.CaptureDeletion], *, now_ns: int | None = None) -> Table:
    """Captures deleted recently: which, when, by whom, why (user text escaped: it is data, not markup)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    table = Table(title="recently deleted", title_justify="left")
    for col in ("id", "target", "bytes", "deleted", "by", "reason"):
        table.add_column(col)
    for d in deleted:
        ago = human_duration(max(0.0, (now_ns - d.deleted_unix_ns) / 1e9)) + " ago"
        reason = d.reason + (f"; still to delete: {d.pending}" if d.pending else "")
        table.add_row(escape(d.capture_id), escape(target_text(d.target)), human_bytes(d.bytes), ago, escape(d.by),
                      escape(reason))
    return table


def print_table(table: Table, *, stderr: bool = False) -> None:
    terminal.print_table(table, stderr=stderr)
