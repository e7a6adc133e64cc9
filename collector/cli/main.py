"""The ``podcap`` command: global options, error handling and the verbs (one module each).

The same entry point runs as ``podcap`` and as the kubectl plugin ``kubectl-podcap`` (``kubectl podcap …``); the
program name in usage lines and errors follows how it was called. Every error ends the same way: one line on
stderr saying what went wrong and what to do next (``podcap.collector.cli.errors``), exit status 1 (2 for usage
errors, 130 for Ctrl+C). That holds for a bug too: an exception that is none of ours is one line naming it as a
podcap defect (``PODCAP_DEBUG=1`` shows its traceback), never a traceback a user has to read.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click
from click.shell_completion import ShellComplete

from podcap import __version__
from podcap.collector.cli import complete
from podcap.collector.cli import demo as demo_cmd
from podcap.collector.cli.admin import commands as admin_cmds
from podcap.collector.cli.capture import commands as capture_cmds
from podcap.collector.cli.capture import status as read_cmds
from podcap.collector.cli.client import CollectorAddressError, CollectorError, collector_address, default_address
from podcap.collector.cli.errors import CommandError, collector_hint, error_hint, one_line, usage_line
from podcap.collector.cli.extcap import install as extcap_cmd
from podcap.collector.cli.get import command as get_cmd
from podcap.collector.cli.live import follow as follow_cmd
from podcap.collector.cli.record import commands as record_cmds
from podcap.errors import PodcapError

PROG = "podcap"
KUBECTL_PROG = "kubectl podcap"


def prog_name(argv0: str) -> str:
    """``kubectl podcap`` when run as the kubectl plugin executable, else ``podcap``."""
    return KUBECTL_PROG if os.path.basename(argv0).startswith("kubectl-") else PROG


class PodcapGroup(click.Group):
    """Turns a collector failure inside any verb into a one-line error with a hint for that verb."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CollectorError as e:
            prog = ctx.find_root().info_name or PROG
            raise CommandError(str(e), collector_hint(e, prog=prog, command=ctx.invoked_subcommand),
                               prog=prog) from e
        except PodcapError as e:  # ours, from the CLI's own side (a certificate file, a bucket, a pcap file)
            prog = ctx.find_root().info_name or PROG
            raise CommandError(str(e), error_hint(e), prog=prog) from e


def _collector_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return collector_address(value)
    except CollectorAddressError as e:
        raise click.BadParameter(str(e), ctx, param) from e


@click.group(cls=PodcapGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--collector", default=default_address, show_default="$PODCAP_COLLECTOR or 127.0.0.1:7420",
              callback=_collector_option, help="Collector address HOST:PORT (a HOST alone: port 7420).")
@click.option("--tls-ca", envvar="PODCAP_TLS_CA", default="",
              help="CA certificate of the collector (PEM): connect with TLS. [env PODCAP_TLS_CA]")
@click.option("--token", envvar="PODCAP_TOKEN", default="",
              help="Bearer token for the collector (your Kubernetes token, or one of its --token-file). "
              "[env PODCAP_TOKEN]")
@click.version_option(__version__, prog_name="podcap")
@click.pass_context
def cli(ctx: click.Context, collector: str, tls_ca: str, token: str) -> None:
    """podcap: capture pods' traffic into per-pod pcap files, without touching the pods.

    Shell completion: see 'podcap completion -h'.
    """
    ctx.obj = {"collector": collector}
    # Every verb's CollectorClient reads its TLS CA and token from the environment: set them once here.
    if tls_ca:
        os.environ["PODCAP_TLS_CA"] = tls_ca
    if token:
        os.environ["PODCAP_TOKEN"] = token


for command in (capture_cmds.start, capture_cmds.stop, capture_cmds.delete, read_cmds.status,
                read_cmds.list_captures, get_cmd.get, follow_cmd.follow, admin_cmds.audit, admin_cmds.certs,
                complete.completion, demo_cmd.demo,
                extcap_cmd.extcap, record_cmds.record, record_cmds.trigger):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> None:
    prog = prog_name(sys.argv[0])
    try:
        rv = cli.main(args=argv, prog_name=prog, complete_var=complete.complete_var(prog), standalone_mode=False)
    except click.exceptions.Abort:
        click.echo(f"{prog}: aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:
        click.echo(usage_line(e, prog=prog), err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except CollectorError as e:  # raised outside a verb (a parameter callback)
        click.echo(f"{prog}: {one_line(str(e), collector_hint(e, prog=prog, command=None))}", err=True)
        sys.exit(1)
    except PodcapError as e:
        click.echo(f"{prog}: {one_line(str(e), error_hint(e))}", err=True)
        sys.exit(1)
    except Exception as e:  # a bug: one line all the same, the traceback on request
        if os.environ.get("PODCAP_DEBUG"):
            raise
        click.echo(f"{prog}: internal error: {one_line(f'{type(e).__name__}: {e}', '')}; this is a podcap defect, "
                   "please report it (PODCAP_DEBUG=1 shows where it happened)", err=True)
        sys.exit(1)
    if isinstance(rv, int) and rv:
        sys.exit(rv)


def kubectl_complete() -> None:
    """``kubectl_complete-podcap ARGS… INCOMPLETE``: kubectl's plugin completion protocol (kubectl 1.26+).

    Prints one candidate per line (``value<TAB>description``), then ``:<directive>``: 4 (no file completion)
    unless a file or directory is expected, 0 then so that the shell completes paths.
    """
    args = sys.argv[1:]
    incomplete = args.pop() if args else ""
    comp = ShellComplete(cli, {}, KUBECTL_PROG, complete.complete_var(KUBECTL_PROG))
    items = comp.get_completions(args, incomplete)
    paths = any(item.type in ("file", "dir") for item in items)
    for item in items:
        if item.type == "plain":
            click.echo(f"{item.value}\t{item.help}" if item.help else str(item.value))
    click.echo(f":{0 if paths else 4}")


if __name__ == "__main__":
    main()
