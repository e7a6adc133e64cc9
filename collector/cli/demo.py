"""``podcap demo``: run the whole product on a throwaway node (``podcap.collector.demo.run``).

The demo is imported when this verb runs, not when ``podcap`` starts: it brings the agent (libpcap) and the
collector's server (gRPC server, Kubernetes client), which every other verb, ``--help`` and shell completion would
otherwise load, and which a CLI installed on a laptop may not even be able to import. This deferred import is the
only edge from the CLI to the demo; the demo uses the CLI's shared pieces (client, download, progress), never a
verb's module, so the two do not import each other at module level.
"""

from __future__ import annotations

import logging
import shlex
import sys

import click
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from podcap.collector.cli.terminal import console as make_console
from podcap.collector.cli.terminal import print_table, styled
from podcap.errors import PodcapError
from podcap.units import human_bytes

DEFAULT_OUT = "podcap-demo-out"


@click.command()
@click.option("--pods", type=click.IntRange(2, 64), default=4, show_default=True, help="Pods on the demo node.")
@click.option("--seconds", type=click.FloatRange(1, 3600), default=8, show_default=True, help="Capture length.")
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
              help="Where the per-pod pcap files go (<out>/<pod>.pcap; each run replaces the last run's).")
def demo(pods: int, seconds: float, out: str) -> None:
    """Capture a throwaway node's pods end to end (needs root; no cluster needed)."""
    from podcap.collector.demo.run import run_demo  # deferred on purpose: see the module docstring

    # The demo's collector and agent run in this process: their routine log lines would interleave with the
    # demo's own output; errors still show.
    logging.getLogger("podcap").setLevel(logging.ERROR)
    if not out.strip():
        raise click.BadParameter("give a directory for the pcap files", param_hint="--out")
    console = make_console(stderr=True)
    try:
        result = run_demo(pods, seconds, out, say=lambda m: console.print(Text.assemble(styled("demo:", "bold"),
                                                                                         " ", m)))
    except (PodcapError, OSError) as e:
        click.echo(f"podcap demo: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("podcap demo: interrupted; everything it created was removed", err=True)
        sys.exit(130)
    table = Table(title=f"capture {result.capture_id}: {result.state}", title_justify="left")
    for col in ("pod", "packets", "bytes", "drops", "file"):
        table.add_column(col, justify="right" if col in ("packets", "bytes", "drops") else "left")
    for r in result.rows:
        table.add_row(escape(r.pod), str(r.packets), human_bytes(r.bytes), str(r.kernel_drops + r.podcap_drops),
                      escape(r.file))
    print_table(table)
    if not result.rows or any(r.packets == 0 for r in result.rows):
        click.echo("podcap demo: some pods have no packets", err=True)
        sys.exit(1)
    click.echo(next_steps([r.file for r in result.rows]))


def next_steps(files: list[str]) -> str:
    """What to do after the demo: look at the packets, then run podcap for real."""
    first = shlex.quote(files[0]) if files else shlex.quote(DEFAULT_OUT) + "/POD.pcap"
    return "\n".join([
        "",
        "Next:",
        f"  look at a pod's packets:   tshark -r {first}    (or: wireshark {first})",
        "  run podcap yourself (as root, two terminals; README: \"Running it\"):",
        "    podcap-collector --insecure --listen 127.0.0.1:7420 --data-dir /var/tmp/podcap",
        "    podcap-agent --insecure --collector 127.0.0.1:7420 --node \"$(hostname)\"   (--pod-source: cri, proc, "
        "netns)",
        "  then: podcap start -n NAMESPACE --duration 1m --wait; podcap get ID -o DIR",
    ])
