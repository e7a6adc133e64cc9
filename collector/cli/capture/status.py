"""``podcap status`` (once, or ``--watch`` until the capture ends) and ``podcap list``.

``--watch`` polls the collector: a live table on a terminal, otherwise every change again (a table, one JSON
document per line, or YAML documents separated by ``---``), like ``kubectl get -w``. Ctrl+C ends the watch, never
the capture.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.live import Live

from podcap.collector.cli.client import CollectorClient
from podcap.collector.cli.complete import complete_capture_id
from podcap.collector.cli.record.render import echo_recorder, is_recorder_id, recorder_dict, recorders_list_table
from podcap.collector.cli.render import (
    capture_table,
    deleted_table,
    dump,
    dump_yaml,
    list_table,
    output_option,
    print_table,
    to_dict,
)
from podcap.collector.cli.terminal import console as make_console
from podcap.collector.cli.terminal import framed
from podcap.unit_options import any_duration_param
from podcap.v1 import control_pb2

_RUNNING = (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING)


def _watch(client: CollectorClient, capture_id: str, output: str, interval: float) -> control_pb2.CaptureStatus:
    st = client.get(capture_id)
    console = make_console()
    if output == "table" and console.is_terminal:
        with Live(framed(capture_table(st)), console=console, refresh_per_second=4) as view:
            while st.state in _RUNNING:
                time.sleep(interval)
                st = client.get(capture_id)
                view.update(framed(capture_table(st)))
        return st
    last: dict[str, Any] | None = None
    while True:
        d = to_dict(st)
        if d != last:
            if output == "table":
                print_table(capture_table(st))
            elif output == "json":
                click.echo(json.dumps(d))
            else:
                click.echo("---\n" + dump_yaml(d))
            last = d
        if st.state not in _RUNNING:
            return st
        time.sleep(interval)
        st = client.get(capture_id)


@click.command()
@click.argument("capture_id", shell_complete=complete_capture_id)
@output_option()
@click.option("-w", "--watch", is_flag=True, help="Keep refreshing until the capture ends (Ctrl+C stops watching, "
              "not the capture).")
@click.option("--interval", default="1s", show_default=True, callback=any_duration_param,
              help="Refresh interval for --watch.")
@click.pass_obj
def status(obj: dict[str, str], capture_id: str, output: str, watch: bool, interval: float) -> None:
    """Per-pod state and counters of a capture; of a recorder (rec-…), its pods' rings and its saves."""
    if watch and is_recorder_id(capture_id):
        raise click.UsageError("--watch follows a capture until it ends; a recorder runs until stopped: run "
                               f"`podcap status {capture_id}` without -w")
    with CollectorClient(obj["collector"]) as client:
        if watch:
            try:
                _watch(client, capture_id, output, max(interval, 0.1))
            except KeyboardInterrupt:
                click.echo(f"stopped watching; capture {capture_id} goes on (podcap stop {capture_id} ends it)",
                           err=True)
            return
        if is_recorder_id(capture_id):  # a flight recorder (issue 24): its rings and saves
            rec = client.get_recorder(capture_id)
            echo_recorder(rec, output)
            return
        st = client.get(capture_id)
    if output == "table":
        print_table(capture_table(st))
    else:
        click.echo(dump(to_dict(st), output))


@click.command("list")
@output_option()
@click.pass_obj
def list_captures(obj: dict[str, str], output: str) -> None:
    """Every capture the collector knows, newest first, then its recorders; then, in a table, the captures deleted
    in the last 7 days."""
    with CollectorClient(obj["collector"]) as client:
        answer = client.list_all()
    captures = list(answer.captures)
    if output == "table":
        if captures:
            print_table(list_table(captures))
        else:  # an empty table says nothing; the collector may just have none that this user may read
            click.echo("no captures (that you may read); 'podcap start' makes one", err=True)
        if answer.recorders:
            print_table(recorders_list_table(list(answer.recorders)))
        if answer.deleted:
            print_table(deleted_table(list(answer.deleted)))
    else:  # one list, recorders after the captures as in the table; "kind" says which an entry is
        click.echo(dump([*({"kind": "capture", **to_dict(c)} for c in captures),
                         *({"kind": "recorder", **recorder_dict(r)} for r in answer.recorders)], output))
