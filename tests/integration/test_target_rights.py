"""Rights for object targets and the payload policy through the real gRPC API, decided by the stand-in API
server's TokenReview and SubjectAccessReview (``KubeAuthorizer``): ``node/NAME`` refused without ``create
nodes/capture`` and allowed with it (and only its holders see the capture); a namespace annotated
``podcap.io/max-snaplen`` caps the snaplen of a user without ``create pods/capture-payload`` there — the capture's
settings, ``status`` and the audit record say so — while a user with the right gets whole packets; an invalid
annotation refuses. Real gRPC on loopback, a fake agent session; no root needed (the packets themselves are checked
in test_object_targets_e2e.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from podcap.collector.api.auth import KubeAuthorizer
from podcap.collector.cli.client import CollectorClient, CollectorError
from podcap.collector.kube.client import load_api
from podcap.collector.kube.inventory import ClusterInventory
from podcap.collector.server import Collector, start_collector
from podcap.nodes import node_uid
from podcap.v1 import common_pb2, control_pb2
from tests.integration.test_capturable_pods import FakeAgent, _pod
from tests.kubeapi.helpers import wait_for
from tests.kubeapi.standin import KubeApiStandin, write_kubeconfig

TOKENS = {"sa-collector": "system:serviceaccount:podcap:collector", "t-alice": "alice", "t-ops": "ops",
          "t-sec": "sec"}


@pytest.fixture(autouse=True)
def _umask_restored() -> Iterator[None]:
    old = os.umask(0o077)
    os.umask(old)
    yield
    os.umask(old)


@pytest.fixture
def cluster(tmp_path: str) -> Iterator[tuple[KubeApiStandin, Collector]]:
    with KubeApiStandin(tokens=TOKENS) as kube:
        kube.ensure_namespace("shop", annotations={"podcap.io/max-snaplen": "128"})
        kube.add_pod("shop", "web-0", node="node-1", uid="uid-shop-web-0")
        kube.add_pod("open", "api-0", node="node-1", uid="uid-open-api-0")
        kube.grant("create", None, user="ops", resource="nodes", subresource="capture")
        kube.grant("get", None, user="ops", resource="nodes", subresource="capture")
        kube.grant("delete", None, user="ops", resource="nodes", subresource="capture")
        kube.grant("create", "shop", user="sec", resource="pods", subresource="capture-payload")
        api = load_api(write_kubeconfig(os.path.join(tmp_path, "kubeconfig"), kube.url, token="sa-collector"))
        inv = ClusterInventory(api).start()
        c = start_collector("127.0.0.1:0", os.path.join(tmp_path, "data"), cluster=inv,
                            authorizer=KubeAuthorizer(api))
        agent = None
        try:
            assert inv.wait_synced(10)
            agent = FakeAgent(f"127.0.0.1:{c.port}", "node-1", [_pod("shop", "web-0"), _pod("open", "api-0")])
            yield kube, c
        finally:
            if agent is not None:
                agent.close()
            c.stop(0)
            inv.stop()
            api.close()


def node_request() -> control_pb2.StartCaptureRequest:
    return control_pb2.StartCaptureRequest(target=control_pb2.Target(
        object=control_pb2.TargetObject(kind="node", name="node-1")))


def test_node_capture_needs_its_own_right(cluster: tuple[KubeApiStandin, Collector]) -> None:
    _kube, c = cluster
    address = f"127.0.0.1:{c.port}"
    with CollectorClient(address, token="t-alice") as alice:
        with pytest.raises(CollectorError) as e:
            alice.start(node_request())
        assert "may not create nodes/capture cluster-wide" in str(e.value) and "\n" not in str(e.value)
    with CollectorClient(address, token="t-ops") as ops:
        st = wait_started(ops, node_request())
        assert [(p.pod.namespace, p.pod.name, p.pod.uid) for p in st.pods] == [("node", "node-1", node_uid("node-1"))]
        assert st.settings.interface == common_pb2.CAPTURE_INTERFACE_POD_ALL
        assert [x.id for x in ops.list_all().captures] == [st.id]
    with CollectorClient(address, token="t-alice") as alice:
        assert [x.id for x in alice.list_all().captures] == []  # pods/capture everywhere is not nodes/capture
        with pytest.raises(CollectorError, match="may not get nodes/capture"):
            alice.get(st.id)
    with CollectorClient(address, token="t-ops") as ops:
        records = [r for r in ops_audit(c) if r.capture_id == st.id or r.target == "node/node-1"]
        assert {(r.user, r.result) for r in records} >= {("alice", "denied"), ("ops", "allowed")}


def wait_started(client: CollectorClient, req: control_pb2.StartCaptureRequest) -> control_pb2.CaptureStatus:
    """The fake agent's registration may reach the collector just after the fixture returns."""
    last: list[control_pb2.CaptureStatus] = []

    def ok() -> bool:
        try:
            last.append(client.start(req))
            return True
        except CollectorError as e:
            if "no podcap agent" in str(e) or "no pods on any connected node" in str(e):
                return False
            raise

    wait_for(ok, 10, "a start the agent's node can take")
    return last[-1]


def ops_audit(c: Collector) -> list[control_pb2.AuditRecord]:
    return list(c.captures.store.audit(limit=100, capture_id=""))


def test_payload_cap_for_users_without_the_right(cluster: tuple[KubeApiStandin, Collector]) -> None:
    kube, c = cluster
    address = f"127.0.0.1:{c.port}"
    req = control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="shop", pod_names=["web-0"]))
    with CollectorClient(address, token="t-alice") as alice:
        st = wait_started(alice, req)
        assert st.settings.snaplen == 128
        cap = st.target.payload_cap
        assert (cap.snaplen, cap.requested) == (128, 0)
        assert "namespace 'shop' caps stored packets at 128 bytes" in cap.reason and "'alice'" in cap.reason
        assert alice.get(st.id).target.payload_cap.snaplen == 128  # status shows it
        other = alice.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="open")))
        assert other.settings.snaplen == 0 and not other.target.HasField("payload_cap")
    (record,) = [r for r in ops_audit(c) if r.capture_id == st.id and r.action == "start"]
    assert "snaplen capped at 128" in record.detail and "pods/capture-payload" in record.detail
    with CollectorClient(address, token="t-sec") as sec:
        st = sec.start(req)
        assert st.settings.snaplen == 0 and not st.target.HasField("payload_cap")
        # A request that says it was capped already is not believed: the collector decides.
        forged = control_pb2.StartCaptureRequest()
        forged.CopyFrom(req)
        forged.target.payload_cap.snaplen = 1
        assert not sec.start(forged).target.HasField("payload_cap")
    kube.ensure_namespace("shop")
    kube.modify("namespaces", None, "shop", {"metadata": {"annotations": {"podcap.io/max-snaplen": "lots"}}})
    with CollectorClient(address, token="t-alice") as alice, pytest.raises(CollectorError) as e:
        alice.start(req)
    assert "annotation podcap.io/max-snaplen='lots'" in str(e.value)
