"""The ``KIND/NAME`` argument of ``podcap start`` and ``podcap record`` (``deploy/web``, ``svc/api``, ``node/n1``):
told apart from pods named ``NAMESPACE/NAME`` with the kinds' one table (``podcap.collector.kube.kinds``), so both
verbs read their arguments the same way; the collector validates the result again for every client.
"""

from __future__ import annotations

import click

from podcap.collector.kube.kinds import ALIASES, POD, ObjectRef, split_object
from podcap.errors import PodcapError
from podcap.v1 import control_pb2


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
