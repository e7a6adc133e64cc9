"""A PodCapture's ``spec.recorder`` as a ``StartRecorderRequest`` (the CLI's units, the resource's namespace, a
capture's fields refused) and a recorder's status as the resource's (rings summed, saves with their get command)."""

from __future__ import annotations

from typing import Any

import pytest

from podcap.collector.podcaptures.recording import is_recorder, recorder_status_of, to_recorder_request
from podcap.collector.podcaptures.resource import PodCaptureSpecError, capture_marker
from podcap.v1 import common_pb2, control_pb2
from tests.unit.collector.podcaptures.test_resource import pc

R = control_pb2


def test_the_recorder_request_takes_the_clis_units_in_the_resources_namespace() -> None:
    obj = pc({"targets": ["deploy/web"], "filter": "tcp", "snaplen": 200, "note": "why", "namespace": "other",
              "recorder": {"keep": "10m", "keepBytes": "500MiB", "before": "1m30s", "after": "1.5s",
                           "triggers": ["restart", "OOMKilled"], "save": "all", "cooldown": "5m",
                           "maxSavesPerHour": 6, "triggerFilter": "tcp[tcpflags] & tcp-rst != 0",
                           "triggerCount": 20, "triggerWindow": "250ms"}})
    assert is_recorder(obj) and not is_recorder(pc({"selector": "a=b"}))
    req = to_recorder_request(obj)
    assert req.target.namespace == "shop" and not req.target.all_namespaces
    assert (req.target.object.kind, req.target.object.name) == ("deployment", "web")
    assert req.settings.filter == "tcp" and req.settings.snaplen == 200
    assert req.settings.interface == common_pb2.CAPTURE_INTERFACE_HOST_VETH
    assert (req.keep_seconds, req.keep_bytes, req.before_ms, req.after_ms) == (600, 500 << 20, 90_000, 1500)
    assert list(req.on) == [R.RECORDER_TRIGGER_RESTART, R.RECORDER_TRIGGER_OOMKILLED]
    assert req.save == R.RECORDER_SAVE_SCOPE_ALL and req.cooldown_seconds == 300 and req.max_saves_per_hour == 6
    assert (req.packet_trigger.filter, req.packet_trigger.count, req.packet_trigger.window_ms) == (
        "tcp[tcpflags] & tcp-rst != 0", 20, 250)
    assert req.note.split("\n") == ["why", capture_marker(obj)]


@pytest.mark.parametrize("spec,message", [
    ({"selector": "a=b", "limits": {"duration": "1m"}, "recorder": {"keep": "1m"}}, "spec.limits is a capture's"),
    ({"selector": "a=b", "retention": {"keepBytes": "1Mi"}, "recorder": {"keep": "1m"}}, "spec.retention"),
    ({"selector": "a=b", "recorder": {"before": "1m"}}, "needs keep"),
    ({"selector": "a=b", "recorder": {"keep": "1m", "triggers": ["manual"]}}, "'manual' is not a trigger"),
    ({"selector": "a=b", "recorder": {"keep": "1m", "save": "some"}}, "not pod or all"),
    ({"selector": "a=b", "recorder": {"keep": "1m", "kep": "2m"}}, "spec.recorder.kep is not a recorder field"),
    ({"selector": "a=b", "recorder": {"keep": "ten minutes"}}, "spec.recorder.keep"),
    ({"recorder": {"keep": "1m"}}, "spec names no pods"),
    ({"targets": ["node/n1"], "recorder": {"keep": "1m"}}, "own namespace"),
])
def test_what_a_recorder_cannot_be_is_refused_with_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(PodCaptureSpecError, match=message):
        to_recorder_request(pc(spec))


def test_status_sums_the_rings_and_lists_the_saves_newest_first_with_their_get_command() -> None:
    pod = common_pb2.Pod(namespace="shop", name="web-1", uid="u1", node="n1")
    st = R.RecorderStatus(
        id="rec-abc", state=R.RECORDER_STATE_RECORDING, created_unix_ns=1_700_000_000_000_000_000,
        request=R.StartRecorderRequest(target=R.Target(namespace="shop", payload_cap=R.PayloadCap(
            snaplen=128, requested=0, reason="r"))),
        pods=[R.RecorderPodStatus(pod=pod, state="recording", bytes=900, packets=9,
                                  oldest_unix_ns=1_700_000_000_000_000_000, newest_unix_ns=1_700_000_030_000_000_000,
                                  kernel=common_pb2.KernelStats(dropped=2),
                                  drops=common_pb2.PodcapDrops(ring_evicted=3)),
              R.RecorderPodStatus(pod=common_pb2.Pod(namespace="shop", name="web-0", uid="u0", node="n1"),
                                  state="pending", message="no report from its agent yet")],
        saves=[R.RecorderSave(capture_id="c2", state=R.CAPTURE_STATE_UNSPECIFIED, info=R.RecorderSaveInfo(
                   triggers=[R.SaveTrigger(reason=R.RECORDER_TRIGGER_RESTART)])),
               R.RecorderSave(capture_id="c1", state=R.CAPTURE_STATE_DONE, packets=5, bytes=500,
                              info=R.RecorderSaveInfo(from_unix_ns=1_700_000_000_000_000_000,
                                                      to_unix_ns=1_700_000_010_000_000_000,
                                                      triggers=[R.SaveTrigger(reason=R.RECORDER_TRIGGER_MANUAL)])),
               R.RecorderSave(capture_id="c0", deleted="deleted by bob: podcap delete")])
    out = recorder_status_of(st, bucket_url="s3://b/p/")
    assert (out["phase"], out["recorderId"], out["podCount"], out["packets"], out["bytes"], out["drops"]) == (
        "Running", "rec-abc", 2, 9, 900, 5)
    assert [r["name"] for r in out["rings"]] == ["web-0", "web-1"]
    assert out["rings"][1]["spanSeconds"] == 30 and out["rings"][1]["oldest"] == "2023-11-14T22:13:20Z"
    assert out["rings"][0]["message"] == "no report from its agent yet" and "oldest" not in out["rings"][0]
    assert [(s["captureId"], s["state"]) for s in out["saves"]] == [("c2", "waiting"), ("c1", "done"),
                                                                   ("c0", "deleted")]
    assert out["saves"][1] == {"captureId": "c1", "state": "done", "triggers": ["manual"], "packets": 5,
                               "bytes": 500, "from": "2023-11-14T22:13:20Z", "to": "2023-11-14T22:13:30Z",
                               "get": {"command": "podcap get c1", "url": "s3://b/p/c1"}}
    assert out["saveCount"] == 3 and out["payloadCap"]["snaplen"] == 128
    stopped = recorder_status_of(R.RecorderStatus(id="rec-abc", state=R.RECORDER_STATE_STOPPED, end_reason="x"))
    assert stopped["phase"] == "Done" and stopped["endReason"] == "x"
