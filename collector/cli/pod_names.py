"""Pods named on the command line: ``NAME`` or ``NAMESPACE/NAME``, as ``start``, ``record``, ``get``, ``follow`` and
the extcap take them. Each command has its own rule for how the namespaces named combine with ``-n``/``-A``
(one capture covers one namespace; so does one recorder); the splitting and its usage error are here, once."""

from __future__ import annotations

import click


def split_pod_names(ctx: click.Context, pods: tuple[str, ...]) -> tuple[set[str], list[str]]:
    """The namespaces the pods name (from ``NAMESPACE/NAME``) and the pods' names; a malformed one is a usage
    error."""
    names: list[str] = []
    spaces: set[str] = set()
    for p in pods:
        ns, sep, name = p.rpartition("/")
        if sep and (not ns or not name or "/" in ns):
            raise click.UsageError(f"pod {p!r} is not NAME or NAMESPACE/NAME", ctx)
        if sep:
            spaces.add(ns)
        names.append(name)
    return spaces, names
