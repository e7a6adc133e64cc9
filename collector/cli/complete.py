"""Shell completion: ``podcap completion bash|zsh|fish`` and capture ids completed from the collector.

Completion is click's own: the script the shell sources calls ``podcap`` again with ``_PODCAP_COMPLETE`` set
(``_PODCAP_COMPLETE=bash_source podcap`` prints the same script as ``podcap completion bash``). Commands, options
and choices complete offline; what lives on the collector is asked of it with a short timeout, and completes to
nothing when the collector does not answer (a slow TAB is worse than none): capture ids (for ``stop`` only the
captures still running), namespaces and pods for ``start`` (those the user may capture, as the collector's
``ListCapturablePods`` says), and a capture's own pods for ``get`` and ``follow``.

As a kubectl plugin (``kubectl podcap``) the shell completes ``kubectl``, which asks the executable
``kubectl_complete-podcap`` (kubectl 1.26+); ``main.kubectl_complete`` answers that protocol.
"""

from __future__ import annotations

import re

import click
from click.shell_completion import CompletionItem, get_completion_class

from podcap.collector.cli.client import CollectorClient, default_address
from podcap.collector.cli.render import capture_state
from podcap.collector.targets import target_text
from podcap.errors import PodcapError
from podcap.v1 import control_pb2

SHELLS = ("bash", "zsh", "fish")
COMPLETION_TIMEOUT = 2.0


def complete_var(prog_name: str) -> str:
    """The environment variable click's completion scripts use for ``prog_name``."""
    return "_" + re.sub(r"\W", "_", prog_name).upper() + "_COMPLETE"


def _client(ctx: click.Context) -> CollectorClient:
    address = ctx.find_root().params.get("collector") or default_address()
    return CollectorClient(address, timeout=COMPLETION_TIMEOUT)


def _captures(ctx: click.Context, incomplete: str, *, running: bool | None) -> list[CompletionItem]:
    """Captures whose id starts with ``incomplete``: running ones (True), ended ones (False) or all (None)."""
    try:
        with _client(ctx) as client:
            answer = client.list_all()
    except PodcapError:  # no collector, no rights, a bad --tls-ca: nothing to offer
        return []
    live = (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING)
    items = [CompletionItem(c.id, help=f"{capture_state(c.state)}, {target_text(c.target)}")
             for c in answer.captures if c.id.startswith(incomplete) and running in (None, c.state in live)]
    # Recorders (rec-…) go where captures go: status takes any, stop a recording one (never delete: ended only).
    return items + [CompletionItem(r.id, help=f"recorder, {target_text(r.request.target)}")
                    for r in answer.recorders if r.id.startswith(incomplete)
                    and running in (None, r.state == control_pb2.RECORDER_STATE_RECORDING)
                    and running is not False]


def complete_recorder_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Recorders still recording (what ``trigger`` takes)."""
    return [i for i in _captures(ctx, incomplete, running=True) if str(i.value).startswith("rec-")]


def complete_capture_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _captures(ctx, incomplete, running=None)


def complete_ended_capture_id(ctx: click.Context, param: click.Parameter,
                              incomplete: str) -> list[CompletionItem]:
    """Captures that have ended (what ``delete`` takes without --force)."""
    return _captures(ctx, incomplete, running=False)


def complete_running_capture_id(ctx: click.Context, param: click.Parameter,
                                incomplete: str) -> list[CompletionItem]:
    """Captures that can still be stopped (or followed)."""
    return _captures(ctx, incomplete, running=True)


def complete_namespace(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Namespaces with pods this user may capture."""
    try:
        with _client(ctx) as client:
            listing = client.capturable_pods()
    except PodcapError:
        return []
    return [CompletionItem(ns) for ns in listing.namespaces if ns.startswith(incomplete)]


def complete_pod(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``start``: pods this user may capture in the namespace of -n; NAMESPACE/NAME once a slash is typed."""
    namespace = ctx.params.get("namespace") or "default"
    qualified = "/" in incomplete
    try:
        with _client(ctx) as client:
            listing = client.capturable_pods("" if qualified else namespace)
    except PodcapError:
        return []
    chosen = set(ctx.params.get("pods") or ())
    out = []
    for p in listing.pods:
        value = f"{p.namespace}/{p.name}" if qualified else p.name
        if value.startswith(incomplete) and value not in chosen:
            out.append(CompletionItem(value, help=f"node {p.node}"))
    return out


def complete_capture_pod(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``get``/``follow``: the pods of the capture named before (as NAMESPACE/NAME, how they are shown)."""
    capture_id = ctx.params.get("capture_id")
    if not capture_id:
        return []
    try:
        with _client(ctx) as client:
            status = client.get(capture_id)
    except PodcapError:
        return []
    chosen = set(ctx.params.get("pods") or ())
    names = [f"{p.pod.namespace}/{p.pod.name}" for p in status.pods]
    return [CompletionItem(n, help=f"node {p.pod.node}") for n, p in zip(names, status.pods, strict=True)
            if (n.startswith(incomplete) or n.split("/", 1)[1].startswith(incomplete)) and n not in chosen]


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL.

    \b
      bash:  eval "$(podcap completion bash)"      (in ~/.bashrc; needs bash 4.4+)
      zsh:   eval "$(podcap completion zsh)"       (in ~/.zshrc)
      fish:  podcap completion fish > ~/.config/fish/completions/podcap.fish

    The same script comes from click's built-in  _PODCAP_COMPLETE=bash_source podcap
    (zsh_source, fish_source). As a kubectl plugin, kubectl completes `kubectl podcap …` through
    kubectl_complete-podcap, installed with podcap.
    """
    cls = get_completion_class(shell)
    if cls is None:  # click knows every shell in SHELLS; kept for a future click that drops one
        raise click.BadParameter(f"no completion for {shell}", param_hint="SHELL")
    # The script completes the command this one belongs to (``podcap``): its root, found through the context so
    # that this module need not import ``main`` (which imports every verb, this one included).
    click.echo(cls(ctx.find_root().command, {}, "podcap", complete_var("podcap")).source())
