"""Waiting for a capture to end while showing its per-pod progress: ``podcap start --wait`` and ``podcap demo``.

A module of its own (not inside the ``start`` verb) because the demo uses it too, and the demo should depend on
the CLI's shared pieces, never on a verb's module.
"""

from __future__ import annotations

import time

from rich.live import Live

from podcap.collector.cli.client import CollectorClient
from podcap.collector.cli.render import capture_table
from podcap.collector.cli.terminal import console as make_console
from podcap.collector.cli.terminal import framed
from podcap.v1 import control_pb2

_RUNNING = (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING)


def wait_for_end(client: CollectorClient, capture_id: str, *, live: bool) -> control_pb2.CaptureStatus:
    """Poll the capture until it ends, showing per-pod progress on stderr; Ctrl+C stops the capture."""
    console = make_console(stderr=True)
    status = client.get(capture_id)
    try:
        if live and console.is_terminal:
            with Live(framed(capture_table(status)), console=console, refresh_per_second=4) as view:
                while status.state in _RUNNING:
                    time.sleep(0.5)
                    status = client.get(capture_id)
                    view.update(framed(capture_table(status)))
        else:
            while status.state in _RUNNING:
                time.sleep(0.25)
                status = client.get(capture_id)
    except KeyboardInterrupt:
        console.print(f"stopping capture {capture_id} …")
        status = client.stop(capture_id)
    return status
