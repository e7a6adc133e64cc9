"""What ``podcap start`` and ``podcap record`` target, read the same way by both verbs: their target arguments and
options (``target_arguments``), the ``KIND/NAME`` argument (``deploy/web``, ``svc/api``, ``node/n1``) told apart
from pods named ``NAMESPACE/NAME`` with the kinds' one table (``podcap.collector.kube.kinds``), and pods named
``NAME`` or ``NAMESPACE/NAME`` (``split_pod_names``). How the namespaces named combine with ``-n``/``-A`` is each
verb's rule (one capture, or one recorder, covers one namespace); the collector validates the result again for
every client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from podcap.collector.cli.complete import complete_namespace, complete_pod
from podcap.collector.kube.kinds import ALIASES, POD, ObjectRef, split_object
from podcap.errors import PodcapError
from podcap.v1 import control_pb2

F = TypeVar("F", bound=Callable[..., Any])


def target_arguments(f: F) -> F:
    """``[PODS | KIND/NAME]...``, ``-n/--namespace``, ``-A/--all-namespaces`` and ``-l/--selector``."""
    for option in reversed((
            click.argument("pods", nargs=-1, shell_complete=complete_pod, metavar="[PODS | KIND/NAME]..."),
            click.option("-n", "--namespace", default="default", show_default=True,
                         shell_complete=complete_namespace, help="Namespace of the pods."),
            click.option("-A", "--all-namespaces", is_flag=True, help="Pods in every namespace."),
            click.option("-l", "--selector", default="", help="Label selector, e.g. 'app=web,tier in (a,b)'."))):
        f = option(f)
    return f


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


def target_object(ctx: click.Context, args: tuple[str, ...], all_namespaces: bool, *,
                  what: str = "capture") -> tuple[control_pb2.TargetObject | None, tuple[str, ...]]:
    """The ``KIND/NAME`` argument among ``args`` and the rest (pods; ``pod/NAME`` is a pod). One object per
    ``what`` (a capture, a recorder), not mixed with pod names."""
    objects: list[ObjectRef] = []
    rest: list[str] = []
    for a in args:
        prefix, sep, name = a.partition("/")
        if sep and ALIASES.get(prefix.lower()) == POD:
            rest.append(name)
            continue
        try:
            ref = split_object(a)
        except PodcapError as e:
            raise click.UsageError(str(e), ctx) from e
        if ref is None:
            rest.append(a)
        else:
            objects.append(ref)
    if not objects:
        return None, tuple(rest)
    if len(objects) > 1 or rest:
        given = ", ".join([o.text for o in objects] + rest)
        raise click.UsageError(f"one {what} covers one workload, Service or node, or pods by name, not {given}: "
                               f"start one {what} for each", ctx)
    obj = objects[0]
    if all_namespaces and not obj.is_node:
        raise click.UsageError(f"{obj.text} is in one namespace: give it with -n NAMESPACE, not -A", ctx)
    return control_pb2.TargetObject(kind=obj.kind, name=obj.name), ()
