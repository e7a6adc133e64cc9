"""``podcap extcap install|uninstall``: podcap as a Wireshark capture interface, in the user's personal extcap folder.

What is installed is a small shell script, ``podcap-extcap``, that runs ``podcap.collector.cli.extcap`` with the
Python of this installation (its path written in), so Wireshark needs nothing on its PATH and a virtualenv is
never "activated". The collector address and TLS CA given to ``podcap`` (options or environment) are written in as
defaults (the environment still wins); a token never is — it comes from ``PODCAP_TOKEN`` in Wireshark's
environment or from the interface's options.

Where Wireshark looks (its "About → Folders" shows "Personal Extcap path"): up to 4.0 (Debian bookworm has 4.0)
``$XDG_CONFIG_HOME/wireshark/extcap`` (default ``~/.config/wireshark/extcap``), checked by the tests with tshark
4.0.17; from 4.2 on ``~/.local/lib/wireshark/extcap``. The version is read from ``tshark``/``wireshark
--version``; ``--dir`` overrides all of it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import click

from podcap.collector.cli.errors import CommandError

SCRIPT_NAME = "podcap-extcap"
MARKER = "# Installed by 'podcap extcap install'"
NEW_LAYOUT = (4, 2)  # Wireshark moved the personal extcap folder to ~/.local/lib/wireshark/extcap in 4.2


def wireshark_version() -> tuple[int, int] | None:
    """(major, minor) of the installed tshark or wireshark, None when neither answers."""
    for program in ("tshark", "wireshark"):
        path = shutil.which(program)
        if path is None:
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        m = re.search(r"\b(\d+)\.(\d+)\.\d+", out)
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def personal_extcap_dir(version: tuple[int, int] | None, env: dict[str, str]) -> str:
    home = env.get("HOME") or os.path.expanduser("~")
    if version is not None and version >= NEW_LAYOUT:
        return os.path.join(home, ".local", "lib", "wireshark", "extcap")
    config = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    return os.path.join(config, "wireshark", "extcap")


def wrapper_script(python: str, *, collector: str, tls_ca: str) -> str:
    lines = ["#!/bin/sh", f"{MARKER}: Wireshark's podcap capture interface.",
             "# Remove it with 'podcap extcap uninstall'."]
    if collector:
        lines.append(f"PODCAP_COLLECTOR=${{PODCAP_COLLECTOR:-{shlex.quote(collector)}}}; export PODCAP_COLLECTOR")
    if tls_ca:
        lines.append(f"PODCAP_TLS_CA=${{PODCAP_TLS_CA:-{shlex.quote(tls_ca)}}}; export PODCAP_TLS_CA")
    lines.append(f'exec {shlex.quote(python)} -m podcap.collector.cli.extcap "$@"')
    return "\n".join(lines) + "\n"


def _target_dir(directory: str | None) -> str:
    if directory:
        return directory
    return personal_extcap_dir(wireshark_version(), dict(os.environ))


@click.group()
def extcap() -> None:
    """Wireshark integration: pick pods in Wireshark's capture options (podcap-extcap)."""


@extcap.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Install here instead of Wireshark's personal extcap folder.")
@click.pass_obj
def install(obj: dict[str, str], directory: str | None) -> None:
    """Install the podcap interface into Wireshark's personal extcap folder and say where."""
    target = _target_dir(directory)
    path = os.path.join(target, SCRIPT_NAME)
    if os.path.exists(path) and not _ours(path):
        raise CommandError(f"{path} exists and was not installed by podcap", "remove it or choose --dir")
    tls_ca = os.environ.get("PODCAP_TLS_CA", "")
    script = wrapper_script(sys.executable, collector=obj.get("collector", ""),
                            tls_ca=os.path.abspath(tls_ca) if tls_ca else "")
    try:
        os.makedirs(target, mode=0o755, exist_ok=True)
        part = path + ".part"
        with open(part, "w") as f:
            f.write(script)
        os.chmod(part, 0o755)
        os.replace(part, path)
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror}", "choose another folder with --dir") from e
    click.echo(f"installed {path}")
    click.echo("restart Wireshark (or run 'tshark -D'): the interface is 'podcap'; set its collector, token, "
               "namespace and pods in its capture options (the gear next to it)")


@extcap.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Remove from here instead of Wireshark's personal extcap folder.")
def uninstall(directory: str | None) -> None:
    """Remove the podcap interface from Wireshark's personal extcap folder."""
    path = os.path.join(_target_dir(directory), SCRIPT_NAME)
    if not os.path.exists(path):
        click.echo(f"nothing to remove: {path} does not exist")
        return
    if not _ours(path):
        raise CommandError(f"{path} was not installed by podcap", "remove it yourself if you want it gone")
    os.unlink(path)
    click.echo(f"removed {path}")


def _ours(path: str) -> bool:
    try:
        with open(path, errors="replace") as f:
            return MARKER in f.read(4096)
    except OSError:
        return False
