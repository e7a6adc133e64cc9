"""``podcap follow``: a live pcap stream of a capture on stdout, for ``wireshark -k -i -`` or ``tshark -r -``.

The stream starts with a valid file header whenever it is started, then carries records as the collector stores
them. A reader that cannot keep up loses packets from its own view only (reported on stderr); the capture and
its stored files are unaffected.
"""

from __future__ import annotations

import sys
from typing import BinaryIO

import click

from podcap.collector.cli.client import CollectorClient, CollectorError
from podcap.pcapfile import FileFormat


def follow_stream(client: CollectorClient, capture_id: str, pods: list[str], out: BinaryIO) -> int:
    """Write the capture's live packets to ``out`` as one pcap stream; return packets missed (gaps)."""
    fmt: FileFormat | None = None
    missed = 0
    try:
        for msg in client.follow(capture_id, pods):
            kind = msg.WhichOneof("kind")
            if kind == "pod":
                pf = msg.pod.format
                pod_fmt = FileFormat(pf.linktype, pf.snaplen, pf.nanosecond)
                if fmt is None:
                    fmt = pod_fmt
                    out.write(fmt.header())
                    out.flush()
                elif (pod_fmt.linktype, pod_fmt.nanosecond) != (fmt.linktype, fmt.nanosecond):
                    raise CollectorError(f"pod {msg.pod.pod.namespace}/{msg.pod.pod.name} has another link type; "
                                         "follow one pod at a time (podcap follow ID POD)")
            elif kind == "records":
                out.write(msg.records.records)
                out.flush()
            elif kind == "gap":
                missed += msg.gap.packets
                click.echo(f"podcap follow: this reader fell behind and missed {msg.gap.packets} packets "
                           "(they are stored)", err=True)
            elif kind == "ended":
                click.echo(f"podcap follow: capture {capture_id} ended ({msg.ended.end_reason})", err=True)
    except BrokenPipeError:
        pass  # the reader (wireshark, head, ...) went away: a normal end
    return missed


@click.command()
@click.argument("capture_id")
@click.argument("pods", nargs=-1)
@click.pass_obj
def follow(obj: dict[str, str], capture_id: str, pods: tuple[str, ...]) -> None:
    """Stream a running capture as pcap to stdout (e.g. | wireshark -k -i -), optionally only PODS."""
    with CollectorClient(obj["collector"]) as client:
        try:
            follow_stream(client, capture_id, list(pods), sys.stdout.buffer)
        except KeyboardInterrupt:
            pass
