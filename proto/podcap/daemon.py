"""What both daemons (``podcap-agent``, ``podcap-collector``) share on their command line and at start-up.

The options every daemon has are defined once here, as click decorators, so their names, environment variables
and checks cannot drift apart: mutual TLS (``--tls-ca/--tls-cert/--tls-key``, from ``PODCAP_TLS_*`` too, all or
none, or ``--insecure`` said out loud), ``--log-level`` and ``--metrics-listen``. ``start`` does the process set-up
both need (logging, the allocator tuning of ``podcap.malloc``) and ``on_stop_signals`` the graceful stop on
SIGTERM/SIGINT. The ``podcap`` CLI uses click too.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

import click

from podcap.malloc import tune_for_bulk_buffers
from podcap.tls import TlsFiles

F = TypeVar("F", bound=Callable[..., Any])
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def tls_options(*, ca: str, cert: str, key: str, insecure: str) -> Callable[[F], F]:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key`` (or ``PODCAP_TLS_CA/CERT/KEY``) and ``--insecure``, with each
    daemon's own help texts."""

    def decorate(f: F) -> F:
        for option in reversed([
            click.option("--tls-ca", envvar="PODCAP_TLS_CA", default="", show_envvar=True, help=ca),
            click.option("--tls-cert", envvar="PODCAP_TLS_CERT", default="", show_envvar=True, help=cert),
            click.option("--tls-key", envvar="PODCAP_TLS_KEY", default="", show_envvar=True, help=key),
            click.option("--insecure", is_flag=True, help=insecure),
        ]):
            f = option(f)
        return f

    return decorate


def common_options(*, metrics_example: str) -> Callable[[F], F]:
    """``--metrics-listen`` and ``--log-level``."""

    def decorate(f: F) -> F:
        f = click.option("--log-level", default="INFO", show_default=True,
                         type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
                         help="how much the daemon logs")(f)
        return click.option("--metrics-listen", default="",
                            help=f"serve Prometheus /metrics on HOST:PORT (e.g. {metrics_example})")(f)

    return decorate


def tls_files(prog: str, *, ca: str, cert: str, key: str, insecure: bool, plaintext_warning: str) -> TlsFiles | None:
    """The TLS material the options name (all three, or none with ``--insecure``); exits with one line otherwise."""
    if ca or cert or key:
        if not (ca and cert and key):
            raise SystemExit(f"{prog}: TLS needs all of --tls-ca, --tls-cert and --tls-key")
        return TlsFiles(ca=ca, cert=cert, key=key)
    if not insecure:
        raise SystemExit(f"{prog}: no TLS configured: pass --tls-ca/--tls-cert/--tls-key (`podcap certs` makes a "
                         "set), or --insecure for plaintext on a trusted network")
    logging.getLogger(__name__).warning("%s --insecure: %s", prog, plaintext_warning)
    return None


def start(log_level: str) -> None:
    """Process set-up: logging, and the allocator tuned for multi-MiB buffers."""
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    tune_for_bulk_buffers()


def on_stop_signals(handler: Callable[[int], None]) -> None:
    """Call ``handler(signum)`` on SIGTERM and SIGINT (installed before anything starts, so a signal during
    start-up still stops the daemon cleanly)."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        handler(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
