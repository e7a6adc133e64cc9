"""Recorders for people (tables) and programs (JSON, YAML: the proto3 JSON mapping with the CLI's words for
enums and numbers for 64-bit counters, as captures' ``render.to_dict``).

A ring's span is what the agent last reported (its oldest to its newest packet); ``evicted`` counts the packets the
ring removed, oldest first, for its limits — the past it cannot save any more. Names and messages are user data:
escaped before rich renders them.
"""

from __future__ import annotations

import time
from typing import Any

import click
from google.protobuf.json_format import MessageToDict
from rich.markup import escape
from rich.table import Table

from podcap.collector.cli.render import _as_cli_values, capture_state, dump, print_table
from podcap.collector.cli.words import enum_word
from podcap.collector.targets import target_text
from podcap.units import human_bytes, human_duration
from podcap.v1 import control_pb2


def is_recorder_id(text: str) -> bool:
    """Recorder ids start with ``rec-`` (capture ids never have a ``-``)."""
    return text.startswith("rec-")


def trigger_word(t: int) -> str:
    return enum_word(control_pb2.RecorderTrigger.DESCRIPTOR, t)


def recorder_state(state: int) -> str:
    return enum_word(control_pb2.RecorderState.DESCRIPTOR, state)


def recorder_dict(st: control_pb2.RecorderStatus) -> dict[str, Any]:
    d = MessageToDict(st, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _as_cli_values(st, d)
    return d


def echo_recorder(st: control_pb2.RecorderStatus, output: str, *, stderr: bool = False) -> None:
    """A recorder as ``-o`` asks: its tables (on stderr with ``stderr``, where a command's last line is an id), or
    JSON/YAML on stdout."""
    if output == "table":
        for t in recorder_tables(st):
            print_table(t, stderr=stderr)
    else:
        click.echo(dump(recorder_dict(st), output))


def _clock(ns: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ns / 1e9)) if ns else "-"


def keep_text(req: control_pb2.StartRecorderRequest) -> str:
    parts = [human_duration(req.keep_seconds)] if req.keep_seconds else []
    if req.keep_bytes:
        parts.append(human_bytes(req.keep_bytes))
    return " or ".join(parts)


def triggers_text(req: control_pb2.StartRecorderRequest) -> str:
    words = [trigger_word(t) for t in req.on]
    if req.packet_trigger.filter:
        t = req.packet_trigger
        words = [w if w != "packets" else f"packets ({t.count} x {t.filter!r} in {t.window_ms / 1000:g}s)"
                 for w in words]
    return ", ".join(words) or "manual only"


def recorder_tables(st: control_pb2.RecorderStatus) -> list[Table]:
    req = st.request
    title = (f"recorder {st.id}: {recorder_state(st.state)}"
             f"{' (' + st.end_reason + ')' if st.end_reason else ''}; {target_text(req.target)}; keep "
             f"{keep_text(req)} per pod; saves {req.before_ms / 1000:g}s before to {req.after_ms / 1000:g}s after "
             f"{'the triggering pod' if req.save == control_pb2.RECORDER_SAVE_SCOPE_POD else 'every pod'} on "
             f"{triggers_text(req)}")
    caption = ""
    if st.suppressed:
        caption = f"{st.suppressed} trigger(s) held back; the last: {st.last_suppressed}"
    pods = Table(title=escape(title), title_justify="left", caption=escape(caption) or None, caption_justify="left")
    for col in ("pod", "node", "ring", "bytes", "packets", "span", "received", "evicted", "matches", "note"):
        pods.add_column(col, justify="right" if col in ("bytes", "packets", "span", "received", "evicted",
                                                        "matches") else "left")
    for p in st.pods:
        span = human_duration((p.newest_unix_ns - p.oldest_unix_ns) / 1e9) if p.oldest_unix_ns else "-"
        pods.add_row(escape(f"{p.pod.namespace}/{p.pod.name}"), escape(p.pod.node), escape(p.state),
                     human_bytes(p.bytes), str(p.packets), span, str(p.kernel.received), str(p.drops.ring_evicted),
                     str(p.trigger_matches), escape(p.message))
    tables = [pods]
    if st.saves:
        saves = Table(title="saves", title_justify="left")
        for col in ("capture", "state", "trigger", "window", "packets", "bytes"):
            saves.add_column(col)
        for s in st.saves:
            first = s.info.triggers[0] if s.info.triggers else None
            what = ""
            if first is not None:
                what = f"{trigger_word(first.reason)} at {_clock(first.unix_ns)}"
                what += f" on {first.pod.namespace}/{first.pod.name}" if first.pod.name else ""
                what += f": {first.detail}" if first.detail else ""
                if len(s.info.triggers) > 1:
                    what += f" (+{len(s.info.triggers) - 1} joined)"
            state = s.deleted or (capture_state(s.state) if s.state else "-")
            if not s.info.dispatched and not s.deleted:
                state = "waiting for its window"
            window = f"{_clock(s.info.from_unix_ns)} to {_clock(s.info.to_unix_ns)}"
            saves.add_row(escape(s.capture_id), escape(state), escape(what), window, str(s.packets),
                          human_bytes(s.bytes))
        tables.append(saves)
    return tables


def recorders_list_table(recorders: list[control_pb2.RecorderStatus]) -> Table:
    table = Table(title="recorders", title_justify="left")
    for col in ("id", "state", "target", "keep", "on", "pods", "ring bytes", "saves", "started"):
        table.add_column(col)
    for r in recorders:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_unix_ns / 1e9))
        table.add_row(escape(r.id), recorder_state(r.state), escape(target_text(r.request.target)),
                      keep_text(r.request), escape(triggers_text(r.request)), str(len(r.pods)),
                      human_bytes(sum(p.bytes for p in r.pods)), str(len(r.saves)), started)
    return table
