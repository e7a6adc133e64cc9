"""Trigger detection from pod status transitions (issue 24): ``pod_health`` reads what the triggers compare from
a pod object, ``transitions`` says which triggers a change fires. Each row of the tables is one kubelet update."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from podcap.collector.kube.pods import PodHealth, pod_health
from podcap.collector.recorders.triggers import UnknownTriggerError, check_triggers, transitions
from podcap.v1 import control_pb2

R = control_pb2


def pod(*, restarts: int = 0, ready: bool = True, last: dict[str, Any] | None = None,
        state: dict[str, Any] | None = None, deleting: bool = False) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "app", "restartCount": restarts, "containerID": "containerd://c1",
                          "state": state or {"running": {"startedAt": "2026-12-07T23:00:00Z"}}}
    if last is not None:
        cs["lastState"] = {"terminated": last}
    p: dict[str, Any] = {"metadata": {"name": "web-0", "namespace": "shop", "uid": "u1"},
                         "status": {"phase": "Running",
                                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                                    "containerStatuses": [cs]}}
    if deleting:
        p["metadata"]["deletionTimestamp"] = "2026-12-07T23:05:00Z"
    return p


OOM = {"reason": "OOMKilled", "exitCode": 137, "containerID": "containerd://c0", "finishedAt": "2026-12-07T23:01:00Z"}
ERR = {"reason": "Error", "exitCode": 1, "containerID": "containerd://c0", "finishedAt": "2026-12-07T23:01:00Z"}


@pytest.mark.parametrize(("before", "after", "fired"), [
    (pod(), pod(), []),
    (pod(), pod(restarts=1, last=ERR), [R.RECORDER_TRIGGER_RESTART]),
    (pod(restarts=1, last=ERR), pod(restarts=1, last=ERR), []),  # status churn, nothing new
    (pod(), pod(restarts=1, last=OOM), [R.RECORDER_TRIGGER_OOMKILLED, R.RECORDER_TRIGGER_RESTART]),
    # Killed, not restarted yet (the container's current state says so).
    (pod(), pod(state={"terminated": OOM}), [R.RECORDER_TRIGGER_OOMKILLED]),
    # ... then restarted: the same termination moves to lastState, it is not a second OOM kill.
    (pod(state={"terminated": OOM}), pod(restarts=1, last=OOM), [R.RECORDER_TRIGGER_RESTART]),
    # A second OOM kill: another finishedAt.
    (pod(restarts=1, last=OOM), pod(restarts=2, last={**OOM, "finishedAt": "2026-12-07T23:09:00Z"}),
     [R.RECORDER_TRIGGER_OOMKILLED, R.RECORDER_TRIGGER_RESTART]),
    (pod(), pod(ready=False), [R.RECORDER_TRIGGER_NOTREADY]),
    (pod(ready=False), pod(ready=False), []),
    (pod(ready=False), pod(), []),  # becoming ready is not a trigger
    (pod(), pod(deleting=True), [R.RECORDER_TRIGGER_DELETED]),
    (pod(deleting=True), pod(deleting=True, ready=False), [R.RECORDER_TRIGGER_NOTREADY]),
])
def test_transitions_fire_the_triggers_of_what_changed(before: dict[str, Any], after: dict[str, Any],
                                                       fired: list[int]) -> None:
    assert [f.trigger for f in transitions(pod_health(before), pod_health(after))] == fired


def test_a_pod_seen_for_the_first_time_fires_nothing() -> None:
    assert transitions(None, pod_health(pod(restarts=5, last=OOM, ready=False, deleting=True))) == []


def test_a_new_container_has_no_earlier_count_to_compare_with() -> None:
    before = pod()
    after = copy.deepcopy(before)
    after["status"]["containerStatuses"].append({"name": "sidecar", "restartCount": 3})
    assert transitions(pod_health(before), pod_health(after)) == []


def test_the_detail_says_which_container_and_counts() -> None:
    (f,) = transitions(pod_health(pod(restarts=2)), pod_health(pod(restarts=3, last=ERR)))
    assert f.detail == "container app restarted (restart count 2 -> 3)"


def test_pod_health_reads_missing_fields_as_zero_values() -> None:
    assert pod_health({"metadata": {}, "status": {}}) == PodHealth((), (), None, False)


def test_trigger_names_are_checked() -> None:
    assert check_triggers([R.RECORDER_TRIGGER_RESTART, R.RECORDER_TRIGGER_RESTART]) == [R.RECORDER_TRIGGER_RESTART]
    with pytest.raises(UnknownTriggerError, match="unknown trigger"):
        check_triggers([R.RECORDER_TRIGGER_MANUAL])
    with pytest.raises(UnknownTriggerError, match="choose from restart, oomkilled"):
        check_triggers([42])


def test_a_termination_is_dated_by_its_finished_at() -> None:
    (oom, restart) = transitions(pod_health(pod()), pod_health(pod(restarts=1, last=OOM)))
    assert oom.at_ns == restart.at_ns == 1_796_684_460 * 10**9  # 2026-12-07T23:01:00Z
    (ready,) = transitions(pod_health(pod()), pod_health(pod(ready=False)))
    assert ready.at_ns == 0  # now
