"""The committer's pacing: a lone request is served COMMIT_INTERVAL_S after it, continuous requests at most once per
COMMIT_SPACING_S (a commit's fixed cost is paid per round, not per chunk)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from podcap.collector.captures import committer as committer_mod
from podcap.collector.captures.committer import COMMIT_INTERVAL_S, COMMIT_SPACING_S, Committer


class _Cap:
    live = True
    id = "c1"


class _Table:
    def all(self) -> list[Any]:
        return [_Cap()]


@pytest.fixture
def rounds(monkeypatch: pytest.MonkeyPatch) -> Any:
    times: list[float] = []
    done = threading.Event()

    def commit(self: Committer, cap: Any, *, wait: bool = True) -> None:
        times.append(time.monotonic())
        done.set()

    monkeypatch.setattr(committer_mod.Committer, "commit", commit)
    c = Committer(_Table(), None, None)  # type: ignore[arg-type]  # commit() is replaced: store and health unused
    c.start()
    yield c, times, done
    c.stop()


def test_lone_request_is_committed_after_the_short_interval(rounds: Any) -> None:
    c, times, done = rounds
    time.sleep(0.3)
    done.clear()
    asked = time.monotonic()
    c.wake()
    assert done.wait(2)
    assert COMMIT_INTERVAL_S * 0.9 <= times[-1] - asked < COMMIT_INTERVAL_S + 0.15


def test_continuous_requests_are_committed_at_most_once_per_spacing(rounds: Any) -> None:
    c, times, _done = rounds
    start = time.monotonic()
    while time.monotonic() - start < 1.2:  # ingest asking every 10 ms (one chunk each)
        c.wake()
        time.sleep(0.01)
    asked = [t for t in times if t > start]
    gaps = [b - a for a, b in zip(asked, asked[1:], strict=False)]
    assert len(asked) >= 3
    assert min(gaps) >= COMMIT_SPACING_S * 0.9
    assert len(asked) <= 1.2 / COMMIT_SPACING_S + 1
