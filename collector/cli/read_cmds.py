"""``podcap status``, ``podcap list`` and ``podcap get``."""

from __future__ import annotations

import os

import click

from podcap.collector.cli.render import capture_table, dump_json, list_table, print_table, to_dict
from podcap.collector.cli.units import human_bytes
from podcap.collector.client import CollectorClient, CollectorError
from podcap.names import InvalidNameError, check_namespace, check_pod_name


@click.command()
@click.argument("capture_id")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
def status(obj: dict[str, str], capture_id: str, output: str) -> None:
    """Per-pod state and counters of a capture."""
    with CollectorClient(obj["collector"]) as client:
        st = client.get(capture_id)
    if output == "json":
        click.echo(dump_json(to_dict(st)))
    else:
        print_table(capture_table(st))


@click.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
def list_captures(obj: dict[str, str], output: str) -> None:
    """Every capture the collector knows, newest first."""
    with CollectorClient(obj["collector"]) as client:
        captures = client.list_captures()
    if output == "json":
        click.echo(dump_json([to_dict(c) for c in captures]))
    else:
        print_table(list_table(captures))


def download_capture(client: CollectorClient, capture_id: str, out_dir: str, pods: list[str]) -> list[tuple[str, int]]:
    """Write ``<out_dir>/<namespace>/<pod>.pcap`` for each pod; return (path, bytes) per file."""
    written: list[tuple[str, int]] = []
    f = None
    expected = 0
    try:
        for msg in client.download(capture_id, pods):
            if msg.WhichOneof("kind") == "file":
                if f is not None:
                    f.close()
                    _check_complete(written[-1], expected)
                ns, name = msg.file.pod.namespace, msg.file.pod.name
                try:
                    check_namespace(ns)
                    check_pod_name(name)
                except InvalidNameError as e:
                    raise CollectorError(f"collector sent an unusable file name: {e}") from e
                os.makedirs(os.path.join(out_dir, ns), exist_ok=True)
                path = os.path.join(out_dir, ns, name + ".pcap")
                f = open(path, "wb")  # noqa: SIM115 (closed when the next file starts or at the end)
                expected = msg.file.size
                written.append((path, 0))
            else:
                if f is None:
                    raise CollectorError("collector sent data before a file header")
                f.write(msg.data)
                path, n = written[-1]
                written[-1] = (path, n + len(msg.data))
    finally:
        if f is not None:
            f.close()
    if written:
        _check_complete(written[-1], expected)
    return written


def _check_complete(file: tuple[str, int], expected: int) -> None:
    if file[1] != expected:
        raise CollectorError(f"download of {file[0]} incomplete: {file[1]} of {expected} bytes")


@click.command()
@click.argument("capture_id")
@click.argument("pods", nargs=-1)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory to write <namespace>/<pod>.pcap into.")
@click.pass_obj
def get(obj: dict[str, str], capture_id: str, pods: tuple[str, ...], out_dir: str) -> None:
    """Download a capture: one pcap file per pod (optionally only PODS, as name or namespace/name)."""
    with CollectorClient(obj["collector"]) as client:
        files = download_capture(client, capture_id, out_dir, list(pods))
    for path, n in files:
        click.echo(f"{path}\t{human_bytes(n)}")
