"""One-line errors that say what to do next.

Every failure the CLI reports is one line on stderr, ``<prog>: <what went wrong>; <what to do next>``, and a
non-zero exit: scripts can show it as is and people need not read a usage screen to find the mistake. The hint
depends on the gRPC status code and on the command that failed; a message that already says what to do (the
collector's own messages often list what exists) gets no second hint.
"""

from __future__ import annotations

from typing import IO, Any

import click
import grpc

from podcap.collector.cli.client import CollectorError
from podcap.errors import PodcapError
from podcap.tls import TlsConfigError

_CAPTURE_ID_COMMANDS = {"status", "stop", "get", "delete", "follow", "trigger"}


class CommandError(click.ClickException):
    """A failure shown as one line: ``<prog>: <message>; <hint>``."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "", *, prog: str = "podcap") -> None:
        super().__init__(message)
        self.hint = hint
        self.prog = prog

    def format_message(self) -> str:
        return one_line(self.message, self.hint)

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"{self.prog}: {self.format_message()}", err=True)


def one_line(message: str, hint: str) -> str:
    message = " ".join(message.split())
    if not hint or hint in message:
        return message
    return f"{message.rstrip('.')}; {hint}"


def collector_hint(e: CollectorError, *, prog: str, command: str | None) -> str:
    """What to do after ``e``, for a user who ran ``<prog> <command>``."""
    code = e.code
    msg = str(e)
    if e.actionable:
        return ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return "is podcap-collector running? Set --collector or PODCAP_COLLECTOR"
    if code == grpc.StatusCode.NOT_FOUND:
        if " was deleted " in msg or "its pods:" in msg:  # says what happened, or lists the pods there are
            return ""
        if command in _CAPTURE_ID_COMMANDS:
            return "" if "podcap list" in msg else f"'{prog} list' shows the capture ids"
        return "check -n/--namespace, -l/--selector and the pod names against what the message lists"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return f"fix that argument and retry ('{prog} {command or ''} -h' lists the options)".replace("  ", " ")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        if command in ("delete", "trigger"):
            return ""  # (the message says what to do: stop it first, or --force; a stopped recorder's saves)
        if "has ended" in msg:  # a follow of a capture that is over: the message says what reads it
            return ""
        return "start podcap-agent on that node (the agent DaemonSet), or leave its pods out"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "retry, and if it keeps happening look at the collector's log"
    if code == grpc.StatusCode.OUT_OF_RANGE:
        return "run the same command again: it downloads what it cannot resume from the start"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "the collector is busy: retry in a moment"
    if code == grpc.StatusCode.UNAUTHENTICATED:  # who you are, not what you may do: the token
        return "" if "--token" in msg else "pass your token with --token or PODCAP_TOKEN"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return "ask an administrator for podcap rights on that namespace"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return "the collector is older than this podcap: upgrade it, or use a podcap that matches it"
    if code is None:
        return "retry, and if it keeps happening look at the collector's log"
    return "look at the collector's log for the cause"


def error_hint(e: PodcapError) -> str:
    """What to do after one of our errors raised on the CLI's own side (not by the collector)."""
    if isinstance(e, TlsConfigError):
        return "check --tls-ca (or PODCAP_TLS_CA): the collector's CA certificate, ca.pem from 'podcap certs'"
    return ""


def usage_line(e: click.UsageError, *, prog: str) -> str:
    """A click usage error (bad option, bad value, missing argument) as one line with the help command."""
    path = e.ctx.command_path if e.ctx is not None else prog
    hint = f"see '{path} -h'"
    return f"{path}: {one_line(e.format_message(), hint)}"
