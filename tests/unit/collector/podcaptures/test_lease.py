"""``LeaseElector`` on the stand-in's coordination.k8s.io Leases: one holder among candidates, expiry judged on the
candidate's own clock from when it last saw the Lease change, release for a quick hand-over, and no second leader
when the holder cannot reach the API server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from podcap.collector.kube.client import KubeApi
from podcap.collector.podcaptures.lease import LeaseElector
from tests.kubeapi.helpers import api_for
from tests.kubeapi.standin import KubeApiStandin


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def standin() -> Iterator[KubeApiStandin]:
    with KubeApiStandin() as s:
        s.ensure_namespace("podcap")
        yield s


@pytest.fixture
def api(standin: KubeApiStandin, tmp_path: Any) -> Iterator[KubeApi]:
    a = api_for(standin, str(tmp_path))
    yield a
    a.close()


def test_one_holder_expiry_on_the_observers_clock_and_release(standin: KubeApiStandin, api: KubeApi) -> None:
    clock = Clock()
    a = LeaseElector(api, namespace="podcap", identity="a", duration_s=10, renew_s=2, monotonic=clock)
    b = LeaseElector(api, namespace="podcap", identity="b", duration_s=10, renew_s=2, monotonic=clock)
    assert a.round() and not b.round()
    lease = standin.get("leases", "podcap", "podcap-podcaptures")
    assert lease is not None and lease["spec"]["holderIdentity"] == "a" and lease["spec"]["leaseDurationSeconds"] == 10
    clock.t += 9
    assert not b.round()  # b saw the record 9 s ago, unchanged since: not expired yet
    assert a.round()  # a renews: the record changes
    clock.t += 9
    assert not b.round()  # b saw the renewal just now (its first look at it): a full duration again
    clock.t += 11
    assert b.round() and not a.is_leader  # a stopped renewing 20 s ago and stepped down at 8 s
    lease = standin.get("leases", "podcap", "podcap-podcaptures")
    assert lease is not None and lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    assert not a.round()
    b.release()
    assert not b.is_leader and a.round()


def test_a_holder_that_cannot_renew_steps_down_before_anyone_else_may_take_over(standin: KubeApiStandin,
                                                                                api: KubeApi) -> None:
    clock = Clock()
    a = LeaseElector(api, namespace="podcap", identity="a", duration_s=10, renew_s=2, monotonic=clock)
    assert a.round()
    standin.stop_serving()
    try:
        clock.t += 5
        assert a.round()  # still within what it holds
        clock.t += 4
        assert not a.round() and not a.is_leader  # 9 s > 10 s - renew margin: stepped down before expiry
    finally:
        standin.start_serving()


def test_racing_candidates_get_one_lease(standin: KubeApiStandin, api: KubeApi) -> None:
    electors = [LeaseElector(api, namespace="podcap", identity=f"c{i}", duration_s=5, renew_s=1) for i in range(4)]
    import threading

    results: list[bool] = []
    threads = [threading.Thread(target=lambda e=e: results.append(e.round())) for e in electors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
