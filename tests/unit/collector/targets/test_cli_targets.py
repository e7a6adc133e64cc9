"""``podcap start KIND/NAME`` and the extcap's workload option: what request they send, and the one-line usage errors
for unknown kinds, two objects, an object with pod names and a namespaced object with -A."""

from __future__ import annotations

import argparse

import pytest

from podcap.collector.cli.extcap.options import ExtcapOptionError, add_options, capture_options, start_request
from podcap.v1 import control_pb2
from tests.unit.collector.cli.conftest import fake  # noqa: F401  (the fixture)
from tests.unit.collector.cli.fakes import FakeClient, capture, invoke


def sent(fake_client: FakeClient, *args: str) -> control_pb2.StartCaptureRequest:
    got: list[control_pb2.StartCaptureRequest] = []

    def start(req: control_pb2.StartCaptureRequest) -> control_pb2.CaptureStatus:
        got.append(req)
        return capture()

    fake_client.start = start
    r = invoke("start", *args)
    assert r.exit_code == 0, r.output
    return got[0]


@pytest.mark.parametrize("args,kind,name,namespace", [
    (("-n", "shop", "deploy/web"), "deployment", "web", "shop"),
    (("-n", "shop", "statefulsets.apps/db"), "statefulset", "db", "shop"),
    (("ds/agent",), "daemonset", "agent", "default"),
    (("-n", "batch", "job/nightly"), "job", "nightly", "batch"),
    (("-n", "shop", "svc/api", "-l", "version=v2"), "service", "api", "shop"),
    (("node/worker-1",), "node", "worker-1", "default"),
    (("-A", "node/worker-1"), "node", "worker-1", "default"),
])
def test_start_sends_the_object(fake: FakeClient, args: tuple[str, ...], kind: str, name: str,  # noqa: F811
                                namespace: str) -> None:
    req = sent(fake, *args)
    assert (req.target.object.kind, req.target.object.name, req.target.namespace) == (kind, name, namespace)
    assert not req.target.pod_names and not req.target.all_namespaces


def test_pods_still_parse_as_before(fake: FakeClient) -> None:  # noqa: F811
    req = sent(fake, "shop/web-0", "shop/web-1")
    assert not req.target.HasField("object") and list(req.target.pod_names) == ["web-0", "web-1"]
    assert req.target.namespace == "shop"
    req = sent(fake, "-n", "shop", "pod/web-0")
    assert list(req.target.pod_names) == ["web-0"]


@pytest.mark.parametrize("args,error", [
    (("cronjob/nightly",), "'cronjob' is not a kind podcap can capture"),
    (("example.com/x",), "is not a kind podcap knows"),
    (("deploy/web", "svc/api"), "one capture covers one workload, Service or node"),
    (("deploy/web", "web-0"), "one capture covers one workload, Service or node"),
    (("-A", "deploy/web"), "deploy/web is in one namespace: give it with -n NAMESPACE, not -A"),
])
def test_bad_object_targets_are_one_line(fake: FakeClient, args: tuple[str, ...], error: str) -> None:  # noqa: F811
    r = invoke("start", *args)
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and error in lines[0], r.output


def extcap(*argv: str) -> control_pb2.StartCaptureRequest:
    p = argparse.ArgumentParser()
    add_options(p)
    return start_request(capture_options(p.parse_args(list(argv)), {}), "")


def test_extcap_object_option() -> None:
    req = extcap("--namespace", "shop", "--object", "deploy/web")
    assert (req.target.object.kind, req.target.object.name, req.target.namespace) == ("deployment", "web", "shop")
    assert extcap("--namespace", "*", "--object", "node/n1").target.object.kind == "node"
    for argv, error in ((("--namespace", "*", "--object", "svc/api"), "choose it instead of all namespaces"),
                        (("--object", "deploy/web", "--pods", "shop/web-0"), "exclude each other"),
                        (("--object", "web"), "is not KIND/NAME"),
                        (("--object", "cj/x"), "not a kind podcap can capture")):
        with pytest.raises(ExtcapOptionError, match=error):
            extcap(*argv)
