"""A PodCapture's spec as a capture request (namespace forced to the resource's, the CLI's units, refusals of
what this collector cannot do) and a capture's status as the resource's status."""

from __future__ import annotations

from typing import Any

import pytest

from podcap.collector.podcaptures.resource import (
    PodCaptureSpecError,
    capture_marker,
    seconds,
    size,
    status_of,
    to_request,
)
from podcap.v1 import common_pb2, control_pb2


def pc(spec: dict[str, Any], namespace: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "podcap.io/v1alpha1", "kind": "PodCapture",
            "metadata": {"name": "web", "namespace": namespace, "uid": "u-1"}, "spec": spec}


def test_the_request_is_in_the_resources_namespace_whatever_the_spec_says() -> None:
    obj = pc({"selector": "app=web", "pods": ["web-1"], "namespace": "kube-system", "allNamespaces": True})
    req = to_request(obj)
    assert req.target.namespace == "shop" and not req.target.all_namespaces
    assert (req.target.selector, list(req.target.pod_names)) == ("app=web", ["web-1"])
    assert capture_marker(obj) in req.note.split("\n")


def test_settings_limits_rotation_retention_take_the_clis_units() -> None:
    req = to_request(pc({"selector": "a=b", "filter": "tcp port 80", "snaplen": 128, "interface": "eth0",
                         "bufferSize": "4MiB", "note": "incident 7",
                         "limits": {"duration": "1h30m", "maxBytes": "100MiB", "maxPackets": 5},
                         "rotation": {"segmentSize": 1000, "segmentTime": "90"},
                         "retention": {"keepBytes": "2G", "keepDuration": "0.5s", "keepTotalBytes": "1Ki"}}))
    assert (req.settings.filter, req.settings.snaplen, req.settings.interface, req.settings.buffer_bytes) == (
        "tcp port 80", 128, common_pb2.CAPTURE_INTERFACE_POD_ETH0, 4 << 20)
    assert (req.limits.duration_seconds, req.limits.max_bytes, req.limits.max_packets) == (5400, 100 << 20, 5)
    assert (req.rotation.segment_bytes, req.rotation.segment_seconds) == (1000, 90)
    assert (req.retention.keep_bytes, req.retention.keep_seconds, req.retention.keep_total_bytes) == (
        2 * 10**9, 1, 1024)
    assert req.note.split("\n")[0] == "incident 7"


@pytest.mark.parametrize("spec, message", [
    ({}, "spec names no pods"),
    ({"selector": "a=b", "limits": {"duration": "soon"}}, "spec.limits.duration: 'soon' is not a duration"),
    ({"selector": "a=b", "bufferSize": "lots"}, "spec.bufferSize: 'lots' is not a size"),
    ({"selector": "a=b", "interface": "wlan0"}, "spec.interface"),
    ({"pods": ["kube-system/etcd-0"]}, "spec.pods: 'kube-system/etcd-0' is not a pod name"),
])
def test_specs_the_collector_cannot_run_are_refused_with_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(PodCaptureSpecError, match=message):
        to_request(pc(spec))


def test_a_target_is_one_workload_or_service_of_the_namespace() -> None:
    req = to_request(pc({"targets": ["deploy/web"], "selector": "tier=front"}))
    assert (req.target.object.kind, req.target.object.name) == ("deployment", "web")
    assert req.target.namespace == "shop" and req.target.selector == "tier=front"
    assert to_request(pc({"targets": ["svc/api"]})).target.object.kind == "service"


@pytest.mark.parametrize("spec, message", [
    ({"targets": ["deploy/a", "svc/b"]}, "one capture covers one workload or Service"),
    ({"targets": ["deploy/a"], "pods": ["x"]}, "one capture covers one workload or Service"),
    ({"targets": ["node/worker-1"]}, "a PodCapture captures pods of its own namespace"),
    ({"targets": ["cronjob/nightly"]}, "spec.targets: .*cronjob"),
])
def test_targets_podcap_start_would_refuse_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(PodCaptureSpecError, match=message):
        to_request(pc(spec))


def test_a_recorder_spec_is_never_narrowed_to_a_plain_capture() -> None:
    """A spec with a recorder is a recorder (``recording``), never a capture of the same pods."""
    with pytest.raises(PodCaptureSpecError, match="spec.recorder"):
        to_request(pc({"selector": "a=b", "recorder": {"keep": "10m"}}))


def test_units() -> None:
    assert [seconds(v, "f") for v in (None, "", "90", 90, "15m", "1h30m", "2d", "0.2s")] == [
        0, 0, 90, 90, 900, 5400, 172800, 1]
    assert [size(v, "f") for v in (None, 7, "1000", "64k", "64KiB", "1.5Mi", "2G")] == [
        0, 7, 1000, 64000, 65536, 1572864, 2 * 10**9]


def test_status_counts_every_pod_and_every_drop() -> None:
    st = control_pb2.CaptureStatus(id="abc123", state=control_pb2.CAPTURE_STATE_RUNNING, packets=30, bytes=3000,
                                   created_unix_ns=1_700_000_000_000_000_000)
    for i, (pkts, kdrop, bufdrop) in enumerate([(10, 1, 0), (20, 0, 5)]):
        p = st.pods.add()
        p.pod.CopyFrom(common_pb2.Pod(namespace="shop", name=f"web-{i}", uid=f"u{i}", node="n1"))
        p.state, p.packets, p.bytes = common_pb2.POD_CAPTURE_STATE_CAPTURING, pkts, pkts * 100
        p.kernel.dropped = kdrop
        p.drops.buffer_full = bufdrop
    out = status_of(st, bucket_url="s3://bucket/prefix/")
    assert (out["phase"], out["captureId"], out["podCount"], out["packets"], out["drops"]) == (
        "Running", "abc123", 2, 30, 6)
    assert [(p["name"], p["state"], p["packets"], p["drops"]) for p in out["pods"]] == [
        ("web-0", "capturing", 10, 1), ("web-1", "capturing", 20, 5)]
    assert out["get"] == {"command": "podcap get abc123", "url": "s3://bucket/prefix/abc123"}
    assert out["startTime"] == "2023-11-14T22:13:20Z" and "endTime" not in out
