"""Which bytes a trigger saves: debounce, merging of overlapping windows, never the same bytes twice.

A trigger at ``t`` asks for ``[t - before, t + after)`` of some pods. The collector does not send that to the
agents at once: a save *waits* until its window has passed (the agents could not upload ``after`` sooner anyway),
and meanwhile every trigger whose window overlaps it **joins** it — the window grows to cover both, the pods of
both are saved, the save lists both triggers — so a crash loop or a burst of RSTs becomes one save, not dozens.
Once a save is sent its bytes are taken: a later save of a pod starts where the pod's earlier saves end
(``saved_until``, ``pod_from``), so no two saves ever hold the same packet.

Automatic triggers that would start a *new* save are held back by ``Debounce``: none within ``cooldown`` of the
last save, at most ``per_hour`` in any hour. Joining a waiting save is always allowed (it costs nothing), and a
manual trigger is never held back (a person asked).

Pure bookkeeping on plain values (times in nanoseconds since the epoch): the manager holds the lock.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from podcap.names import PodUid

HOUR_NS = 3600 * 1_000_000_000


@dataclass
class Window:
    """A save's window: ``[from_ns, to_ns)`` for every pod, or from ``pod_from[uid]`` for a pod an earlier save
    already holds part of."""

    from_ns: int
    to_ns: int
    pod_from: dict[PodUid, int] = field(default_factory=dict)

    def start_of(self, uid: PodUid) -> int:
        return max(self.from_ns, self.pod_from.get(uid, self.from_ns))

    def overlaps(self, from_ns: int, to_ns: int) -> bool:
        return from_ns < self.to_ns and to_ns > self.from_ns


def saved_until(saves: list[tuple[int, int, list[PodUid]]], before_ns: int) -> dict[PodUid, int]:
    """Per pod, up to where the saves ``(from_ns, to_ns, pods)`` that start before ``before_ns`` hold it: what a
    window ending at ``before_ns`` must not save again. A save that starts later does not hold any of that window
    (a trigger dated earlier than a save, say an OOM kill reported late, still gets its own)."""
    out: dict[PodUid, int] = {}
    for from_ns, to_ns, pods in saves:
        if from_ns < before_ns:
            for uid in pods:
                out[uid] = max(out.get(uid, 0), to_ns)
    return out


def clip(window: Window, pods: list[PodUid], saved_to: dict[PodUid, int]) -> list[PodUid]:
    """Start each pod's window where its earlier saves end (``window.pod_from``); the pods left with something to
    save, in order."""
    kept: list[PodUid] = []
    for uid in pods:
        start = max(window.from_ns, saved_to.get(uid, 0))
        if start >= window.to_ns:
            continue
        if start > window.from_ns:
            window.pod_from[uid] = start
        else:
            window.pod_from.pop(uid, None)
        kept.append(uid)
    return kept


def join(window: Window, from_ns: int, to_ns: int, pods: list[PodUid], have: list[PodUid],
         saved_to: dict[PodUid, int]) -> list[PodUid]:
    """Grow a waiting save's ``window`` to cover ``[from_ns, to_ns)`` and add ``pods``; ``have`` are the pods it
    holds already. Returns the pods to add (those with something left to save)."""
    window.from_ns = min(window.from_ns, from_ns)
    window.to_ns = max(window.to_ns, to_ns)
    # Every pod's start is recomputed: the window may have grown to the left.
    every = list(dict.fromkeys([*have, *pods]))
    kept = clip(window, every, saved_to)
    return [uid for uid in kept if uid not in have]


class Debounce:
    """Cooldown and saves per hour for a recorder's automatic triggers."""

    def __init__(self, *, cooldown_ns: int, per_hour: int) -> None:
        self.cooldown_ns = cooldown_ns
        self.per_hour = per_hour
        self._saves: collections.deque[int] = collections.deque()  # start times of automatic saves, last hour
        self.last_ns: int | None = None  # the last save of any kind

    def held_back(self, now_ns: int) -> str:
        """Why an automatic trigger at ``now_ns`` may not start a new save ("" when it may)."""
        while self._saves and self._saves[0] <= now_ns - HOUR_NS:
            self._saves.popleft()
        if self.last_ns is not None and now_ns - self.last_ns < self.cooldown_ns:
            left = (self.cooldown_ns - (now_ns - self.last_ns)) / 1e9
            return f"cooldown: the last save started {(now_ns - self.last_ns) / 1e9:.0f}s ago ({left:.0f}s left)"
        if self.per_hour and len(self._saves) >= self.per_hour:
            return f"{len(self._saves)} saves in the last hour (--max-saves-per-hour {self.per_hour})"
        return ""

    def note(self, now_ns: int, *, automatic: bool) -> None:
        """A save started at ``now_ns``."""
        self.last_ns = now_ns if self.last_ns is None else max(self.last_ns, now_ns)
        if automatic:
            self._saves.append(now_ns)
