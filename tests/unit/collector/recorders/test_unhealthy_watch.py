"""The kubelet's ``Unhealthy`` Events as triggers (issue 24), against the API stand-in: an Event that appears, or
whose count grows, fires once; Events already there at (re)list are history; other reasons and kinds never fire; a
410 after compaction re-lists without firing again; a watch that ends is resumed without loss."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from podcap.collector.recorders.unhealthy import UnhealthyWatch
from tests.kubeapi.helpers import api_for
from tests.kubeapi.standin import KubeApiStandin


@pytest.fixture
def standin() -> Iterator[KubeApiStandin]:
    s = KubeApiStandin(bookmark_interval=0.2)
    try:
        yield s
    finally:
        s.close()


def wait(cond: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_probe_failures_fire_once_each_and_history_does_not(standin: KubeApiStandin, tmp_path: str) -> None:
    web = standin.add_pod("shop", "web-0")
    standin.add_event("shop", web, reason="Unhealthy", message="old failure", type_="Warning")
    fired: list[tuple[str, str, str, str]] = []
    watch = UnhealthyWatch(api_for(standin, str(tmp_path)), lambda *a: fired.append(a), watch_timeout_s=1,
                           backoff_initial_s=0.05)
    watch.start()
    try:
        wait(lambda: watch.synced)
        ev = standin.add_event("shop", web, reason="Unhealthy", message="Liveness probe failed: timeout",
                               type_="Warning")
        standin.add_event("shop", web, reason="Killing", message="not a probe")  # another reason
        wait(lambda: len(fired) == 1)
        assert fired[0] == ("shop", "web-0", web["metadata"]["uid"], "Liveness probe failed: timeout")
        # The kubelet counts a probe that keeps failing on the same Event.
        standin.modify("events", "shop", ev["metadata"]["name"], {"count": 2, "message": "Liveness probe failed: 2"})
        wait(lambda: len(fired) == 2)
        standin.modify("events", "shop", ev["metadata"]["name"], {"message": "same count, new text"})
        # History is lost (410): re-listed, nothing fires again; the next failure does.
        standin.compact()
        standin.disconnect_watches()
        time.sleep(1.5)
        standin.add_event("shop", web, reason="Unhealthy", message="Readiness probe failed", type_="Warning")
        wait(lambda: len(fired) == 3)
        time.sleep(0.5)
        assert [f[3] for f in fired] == ["Liveness probe failed: timeout", "Liveness probe failed: 2",
                                         "Readiness probe failed"]
    finally:
        watch.stop()
