"""Workloads and Services as label selectors: the pods a ``deploy/NAME`` (``statefulset``, ``daemonset``, ``job``)
or ``svc/NAME`` stands for.

A workload's pods are those its ``spec.selector`` (a ``LabelSelector``: ``matchLabels`` and ``matchExpressions``)
matches in its namespace: that is how its controller counts them. The selector is immutable in ``apps/v1`` and
``batch/v1``, so it is read once, when the capture starts, and turned into the label selector text
``podcap.collector.kube.selectors`` parses (stored with the capture): the pod watch then attaches the workload's
pods as they come and go, exactly as for ``-l``. A Service's ``spec.selector`` is a plain map; a Service without
one has endpoints someone else manages (or none): ``svc/NAME`` refuses it, since there are no pods to follow.

Pure functions over API JSON; no ``kubernetes`` import.
"""

from __future__ import annotations

from typing import Any

from podcap.collector.kube.selectors import Selector, SelectorError, parse_selector
from podcap.errors import InvalidInputError, PreconditionError

_OPERATORS = {"In": "in", "NotIn": "notin"}


class WorkloadSelectorError(InvalidInputError):
    """A workload's selector cannot be expressed or selects every pod."""


class ServiceWithoutSelectorError(PreconditionError):
    """``svc/NAME`` of a Service without ``spec.selector``: no pods of its own to follow."""


def label_selector_text(sel: dict[str, Any]) -> str:
    """A ``LabelSelector`` (API JSON) as label selector text (``app=web,tier in (a,b),!canary``)."""
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for expr in sel.get("matchExpressions") or []:
        key, op = str(expr.get("key", "")), str(expr.get("operator", ""))
        values = sorted(str(v) for v in expr.get("values") or [])
        if op in _OPERATORS:
            parts.append(f"{key} {_OPERATORS[op]} ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise WorkloadSelectorError(f"unknown selector operator {op!r} for key {key!r}")
    return ",".join(parts)


def workload_selector(kind: str, obj: dict[str, Any]) -> Selector:
    """The pods' selector of a workload object; raises WorkloadSelectorError when it has none usable."""
    name = (obj.get("metadata") or {}).get("name", "")
    sel = (obj.get("spec") or {}).get("selector") or {}
    try:
        selector = parse_selector(label_selector_text(sel))
    except SelectorError as e:
        raise WorkloadSelectorError(f"{kind} {name!r} has a selector podcap cannot read: {e}") from e
    if not selector:
        raise WorkloadSelectorError(f"{kind} {name!r} has an empty selector (it would select every pod of its "
                                    "namespace): capture with -l SELECTOR instead")
    return selector


def service_selector(obj: dict[str, Any]) -> Selector:
    """A Service's ``spec.selector``; raises ServiceWithoutSelectorError when it has none."""
    md = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    labels = spec.get("selector") or {}
    if not labels:
        kind = f" (type {spec['type']})" if spec.get("type") == "ExternalName" else ""
        raise ServiceWithoutSelectorError(
            f"service {md.get('name', '')!r}{kind} has no selector: its endpoints are not pods it selects, so "
            "there are none to follow; capture its backends by name or with -l SELECTOR")
    return parse_selector(",".join(f"{k}={v}" for k, v in sorted(labels.items())))
