"""``podcap follow``: a running capture's packets live on stdout as pcapng, for ``wireshark -k -i -`` or
``tshark -r -``.

The stream is what the Wireshark extcap writes (``extcap_stream.PcapngStream``): each pod its own interface named
``<namespace>/<pod>`` (Wireshark: ``frame.interface_name``), packets in time order across pods, and a packet seen
on two of the followed pods written once (``--all-copies`` keeps every sighting) — a live view across pods, like
``get --merge``; the per-pod files of ``get -o`` keep every pod's own packets. A reader that cannot keep up loses
packets from its own view only (reported on stderr and in the stream's statistics); the capture and its stored
files are unaffected. What cannot be followed is refused before anything is written: a capture that has ended
(``get`` reads what it stored), pods the capture does not have. Ctrl+C, SIGTERM, the capture's end and a reader
that goes away all end the view the same way: what it still holds is written, and a last line on stderr says what
it left out.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import BinaryIO

import click

from podcap.collector.cli.client import CollectorClient
from podcap.collector.cli.complete import complete_capture_pod, complete_running_capture_id
from podcap.collector.cli.errors import CommandError
from podcap.collector.cli.live.order import TICK_S, ticking
from podcap.collector.cli.live.stream import PcapngStream
from podcap.formats.selection import names_pod
from podcap.v1 import control_pb2

_LIVE = (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING)


def follow_stream(client: CollectorClient, status: control_pb2.CaptureStatus, pods: list[str], out: BinaryIO, *,
                  one_copy: bool = True, prog: str = "podcap") -> PcapngStream:
    """Write the capture's live packets to ``out`` as pcapng until the capture ends, the reader goes away or
    Ctrl+C; return the stream (its counters)."""
    stream = PcapngStream(out, status, one_copy=one_copy)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `timeout`, `kill`: end as Ctrl+C does
    try:
        for msg in ticking(client.follow(status.id, pods), TICK_S):
            if msg is None:
                stream.tick()
                continue
            stream.write(msg)
            kind = msg.WhichOneof("kind")
            if kind == "gap":
                click.echo(f"{prog} follow: this reader fell behind and missed {msg.gap.packets} packets (they are "
                           "stored)", err=True)
    except KeyboardInterrupt:
        pass  # the user ended the view: what is held still goes out
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            stream.finish()
        except (BrokenPipeError, ValueError):
            pass  # the reader (wireshark, head, ...) went away, or stdout is closed
        stream.close()
    return stream


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.command()
@click.argument("capture_id", shell_complete=complete_running_capture_id)
@click.argument("pods", nargs=-1, shell_complete=complete_capture_pod)
@click.option("--all-copies", is_flag=True, help="Keep every pod's copy of a packet seen on two of the pods (by "
              "default the second sighting is left out and counted).")
@click.pass_context
def follow(ctx: click.Context, capture_id: str, pods: tuple[str, ...], all_copies: bool) -> None:
    """Stream a running capture live as pcapng to stdout (e.g. | wireshark -k -i -), optionally only PODS (name,
    namespace/name or uid): each pod its own interface, packets in time order, each packet once."""
    prog = ctx.find_root().info_name or "podcap"
    if sys.stdout.isatty():
        raise click.UsageError("follow writes binary pcapng to stdout, which is a terminal: pipe it "
                               "(| wireshark -k -i -, | tshark -r -) or redirect it to a file", ctx)
    with CollectorClient(ctx.obj["collector"]) as client:
        status = client.get(capture_id)
        if status.state not in _LIVE:
            why = f" ({status.end_reason})" if status.end_reason else ""
            raise CommandError(f"capture {capture_id} has ended{why}: there is nothing to follow",
                               f"'{prog} get {capture_id} --merge FILE' reads what it stored", prog=prog)
        unknown = [p for p in pods if not any(names_pod(p, ps.pod) for ps in status.pods)]
        if unknown:
            names = ", ".join(f"{ps.pod.namespace}/{ps.pod.name}" for ps in status.pods) or "none yet"
            raise CommandError(f"capture {capture_id} has no pod {', '.join(unknown)}", f"its pods: {names}",
                               prog=prog)
        try:
            stream = follow_stream(client, status, list(pods), sys.stdout.buffer, one_copy=not all_copies,
                                   prog=prog)
        except BrokenPipeError:  # the reader went away: a normal end, and nothing more to say on stdout
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
    ended = stream.ended
    summary = f"{prog} follow: "
    if ended is not None:
        summary += f"capture {capture_id} ended" + (f" ({ended.end_reason})" if ended.end_reason else "") + "; "
    summary += f"{stream.pods} pod(s) followed"
    if stream.left_out:
        summary += (f", {stream.left_out} second sightings of packets seen on two pods left out (--all-copies keeps "
                    "them)")
    click.echo(summary, err=True)
