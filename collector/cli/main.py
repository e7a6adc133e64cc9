"""The ``podcap`` command: global options, error handling and the verbs (one module each)."""

from __future__ import annotations

import sys

import click

from podcap import __version__
from podcap.collector.cli import capture_cmds, demo_cmd, read_cmds
from podcap.collector.client import CollectorError, default_address


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--collector", default=default_address, show_default="$PODCAP_COLLECTOR or 127.0.0.1:7420",
              help="Collector address HOST:PORT.")
@click.version_option(__version__, prog_name="podcap")
@click.pass_context
def cli(ctx: click.Context, collector: str) -> None:
    """podcap: capture pods' traffic into per-pod pcap files, without touching the pods."""
    ctx.obj = {"collector": collector}


for command in (capture_cmds.start, capture_cmds.stop, read_cmds.status, read_cmds.list_captures, read_cmds.get,
                demo_cmd.demo):
    cli.add_command(command)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except CollectorError as e:
        click.echo(f"podcap: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
