"""``podcap audit`` (who did what) and ``podcap certs`` (a CA and certificates for a quick start)."""

from __future__ import annotations

import time

import click
from rich.table import Table

from podcap.collector.cli.client import CollectorClient
from podcap.collector.cli.errors import CommandError
from podcap.collector.cli.render import dump, output_option, print_table
from podcap.collector.cli.terminal import escape


@click.command()
@click.option("--capture", "capture_id", default="", help="Only records of this capture.")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@output_option()
@click.pass_obj
def audit(obj: dict[str, str], capture_id: str, limit: int, output: str) -> None:
    """The audit trail: every start, stop, read and follow, allowed, denied or failed (needs list pods/capture)."""
    with CollectorClient(obj["collector"]) as client:
        records = client.audit(limit=limit, capture_id=capture_id)
    if output != "table":
        click.echo(dump([{"time": r.unix_ns, "user": r.user, "action": r.action, "capture": r.capture_id,
                          "target": r.target, "filter": r.filter, "result": r.result, "detail": r.detail}
                         for r in records], output))
        return
    table = Table()
    for col in ("time", "user", "action", "capture", "target", "filter", "result", "detail"):
        table.add_column(col)
    for r in records:
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.unix_ns / 1e9)), escape(r.user),
                      escape(r.action), escape(r.capture_id), escape(r.target), escape(r.filter), escape(r.result),
                      escape(r.detail))
    print_table(table)


@click.command()
@click.option("--out", "out_dir", default="podcap-certs", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the PEM files.")
@click.option("--host", "hosts", multiple=True, default=["podcap-collector.podcap.svc", "localhost", "127.0.0.1"],
              show_default=True, help="Names and IPs the collector is reached at (repeat).")
def certs(out_dir: str, hosts: tuple[str, ...]) -> None:
    """Make a CA, a collector server certificate and an agent client certificate (quick start)."""
    # Deferred: ``cryptography`` costs every other verb's start-up (only this one makes keys).
    from podcap.collector.cli.admin.certs import check_host, make_quickstart

    if not out_dir.strip():
        raise click.BadParameter("give a directory for the PEM files", param_hint="--out")
    for h in hosts:
        if (problem := check_host(h)) is not None:
            raise click.BadParameter(problem, param_hint="--host")
    try:
        written = make_quickstart(out_dir, list(hosts))
    except OSError as e:
        raise CommandError(f"cannot write {e.filename or out_dir}: {e.strerror or e}",
                           "choose another --out directory") from e
    for path in written:
        click.echo(path)
    click.echo(f"collector: podcap-collector --tls-ca {out_dir}/ca.pem --tls-cert {out_dir}/collector.pem "
               f"--tls-key {out_dir}/collector-key.pem ...", err=True)
    click.echo(f"agent:     podcap-agent --tls-ca {out_dir}/ca.pem --tls-cert {out_dir}/agent.pem "
               f"--tls-key {out_dir}/agent-key.pem ...", err=True)
    click.echo(f"CLI:       export PODCAP_TLS_CA={out_dir}/ca.pem", err=True)
