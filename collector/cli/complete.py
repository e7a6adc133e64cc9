"""Shell completion: ``podcap completion bash|zsh|fish`` and capture ids completed from the collector.

Completion is click's own: the script the shell sources calls ``podcap`` again with ``_PODCAP_COMPLETE`` set
(``_PODCAP_COMPLETE=bash_source podcap`` prints the same script as ``podcap completion bash``). Commands, options
and choices complete offline; a ``CAPTURE_ID`` argument asks the collector for its captures with a short timeout
and completes nothing when the collector does not answer (a slow TAB is worse than none).

As a kubectl plugin (``kubectl podcap``) the shell completes ``kubectl``, which asks the executable
``kubectl_complete-podcap`` (kubectl 1.26+); ``main.kubectl_complete`` answers that protocol.
"""

from __future__ import annotations

import re

import click
from click.shell_completion import CompletionItem, get_completion_class

from podcap.collector.cli.client import CollectorClient, CollectorError, default_address
from podcap.collector.cli.render import capture_state
from podcap.collector.targets import target_text

SHELLS = ("bash", "zsh", "fish")
COMPLETION_TIMEOUT = 2.0


def complete_var(prog_name: str) -> str:
    """The environment variable click's completion scripts use for ``prog_name``."""
    return "_" + re.sub(r"\W", "_", prog_name).upper() + "_COMPLETE"


def complete_capture_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    root = ctx.find_root()
    address = root.params.get("collector") or default_address()
    try:
        with CollectorClient(address, timeout=COMPLETION_TIMEOUT) as client:
            captures = client.list_captures()
    except CollectorError:
        return []
    return [CompletionItem(c.id, help=f"{capture_state(c.state)}, {target_text(c.target)}")
            for c in captures if c.id.startswith(incomplete)]


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
