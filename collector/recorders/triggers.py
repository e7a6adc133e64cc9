"""What a recorder's Kubernetes triggers see in a pod's status, and their names on the command line.

``transitions`` compares two versions of a pod (``PodHealth``, parsed by ``podcap.collector.kube.pods``) and says
which triggers the change fires. Pure functions, so every transition is a table in a unit test:

- ``restart``: a container's ``restartCount`` went up (a container seen for the first time fires nothing: there is
  no earlier count to compare with);
- ``oomkilled``: a container's current or last termination has the reason ``OOMKilled`` and it is not the
  termination already known (identified by its container id and ``finishedAt``);
- ``notready``: the ``Ready`` condition went from True to False;
- ``deleted``: ``deletionTimestamp`` appeared (the pod leaving the watched cache — deleted, evicted, finished — is
  the manager's, from the watch's DELETED).

A pod seen for the first time (``prev`` None) fires nothing: its past is not news. A restart or an OOM kill is
dated by the termination's ``finishedAt`` (the node's clock, as the ring's packets), not by when the collector
heard of it (the kubelet reports a few seconds later).
"""

from __future__ import annotations

from dataclasses import dataclass

from podcap.collector.kube.pods import PodHealth
from podcap.errors import InvalidInputError
from podcap.trigger_words import TRIGGER_NAMES, Trigger
from podcap.v1 import control_pb2

# The names users type (`--on restart,oomkilled`) and see: the shared table; manual is `podcap trigger`, never an
# --on choice.
NAMES = TRIGGER_NAMES
WORDS: dict[int, str] = {int(v): k for k, v in NAMES.items()} | {int(control_pb2.RECORDER_TRIGGER_MANUAL): "manual"}


class UnknownTriggerError(InvalidInputError):
    """A trigger name (or number) that is not one of the recorder's triggers."""


def trigger_word(t: int) -> str:
    return WORDS.get(t, f"trigger {t}")


def check_triggers(values: list[int]) -> list[Trigger]:
    """The request's ``on`` list, each once, in order. Raises UnknownTriggerError for a value that is no trigger
    (or manual, which is not chosen)."""
    out: list[Trigger] = []
    for v in values:
        if v not in NAMES.values():
            raise UnknownTriggerError(f"unknown trigger {trigger_word(v)!r} in --on: choose from "
                                      f"{', '.join(NAMES)}")
        if v not in out:
            out.append(control_pb2.RecorderTrigger.ValueType(v))
    return out


@dataclass(frozen=True)
class Fired:
    """A trigger a pod's change fired, with what happened in words, and when (ns since the epoch; 0: now)."""

    trigger: Trigger
    detail: str
    at_ns: int = 0


def transitions(prev: PodHealth | None, new: PodHealth) -> list[Fired]:
    """The triggers fired by a pod changing from ``prev`` to ``new`` (see the module docstring)."""
    if prev is None:
        return []
    fired: list[Fired] = []
    # The OOM kill first: it is the cause of the restart it comes with (a save started by both is named by it).
    ended = dict(new.ended_ns)  # a termination's own time: what the save is centred on
    known = set(prev.oom_kills)
    for name, key in new.oom_kills:
        if (name, key) not in known:
            fired.append(Fired(control_pb2.RECORDER_TRIGGER_OOMKILLED, f"container {name} was OOM-killed",
                               ended.get(name, 0)))
    before = dict(prev.restarts)
    for name, count in new.restarts:
        was = before.get(name)
        if was is not None and count > was:
            fired.append(Fired(control_pb2.RECORDER_TRIGGER_RESTART,
                               f"container {name} restarted (restart count {was} -> {count})", ended.get(name, 0)))
    if prev.ready is True and new.ready is False:
        fired.append(Fired(control_pb2.RECORDER_TRIGGER_NOTREADY, "the pod's Ready condition went false"))
    if new.deleting and not prev.deleting:
        fired.append(Fired(control_pb2.RECORDER_TRIGGER_DELETED, "the pod is being deleted"))
    return fired
