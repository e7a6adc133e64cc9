"""The capture manager with object targets against the stand-in API server: a Deployment's pods (one created
mid-capture attached, another workload's not), a Service's endpoints followed through EndpointSlice changes, a
Service without a selector, missing objects named with what exists, a node target, and a restarted collector that
follows the same workload and Service again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from podcap.collector.agents import AgentConnection, AgentRegistry
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.captures.target_objects import NeedsKubernetesError, ObjectNotFoundError
from podcap.collector.kube.inventory import ClusterInventory
from podcap.collector.kube.workloads import ServiceWithoutSelectorError
from podcap.collector.storage.catalog import CaptureStore
from podcap.collector.storage.local import LocalStorage
from podcap.nodes import node_uid
from podcap.v1 import control_pb2
from tests.kubeapi.helpers import wait_for
from tests.kubeapi.standin import KubeApiStandin
from tests.unit.collector.kube.capture_env import capture_env, starts

Env = tuple[CaptureManager, AgentConnection, KubeApiStandin]


def deployment(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "shop"},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c",
                                                                                           "image": "x"}]}}}}


def endpoint_slice(name: str, service: str, pods: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [p["status"]["podIP"] or "10.9.9.9"], "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": "shop",
                                         "uid": p["metadata"]["uid"]}} for p in pods],
            "ports": [{"port": 80, "protocol": "TCP"}]}


def manager(tmp_path: str, registry: AgentRegistry, inv: ClusterInventory | None, db: str = "db") -> CaptureManager:
    store = CaptureStore(os.path.join(tmp_path, db))
    return CaptureManager(LocalStorage(tmp_path), registry, store, cluster=inv)


@pytest.fixture
def env(tmp_path: Any) -> Iterator[Env]:
    with KubeApiStandin(bookmark_interval=0.2) as s:
        s.add_pod("shop", "web-0", labels={"app": "web"}, node="node-a", ip="10.0.0.1")
        s.add_pod("shop", "web-1", labels={"app": "web"}, node="node-a", ip="10.0.0.2")
        s.add_pod("shop", "db-0", labels={"app": "db"}, node="node-a", ip="10.0.0.3")
        s.create("deployments", deployment("web", {"app": "web"}))
        s.create("deployments", deployment("db", {"app": "db"}))
        with capture_env(s, str(tmp_path)) as (mgr, conn):
            yield mgr, conn, s


def request(kind: str, name: str, namespace: str = "shop", **kw: Any) -> control_pb2.StartCaptureRequest:
    return control_pb2.StartCaptureRequest(target=control_pb2.Target(
        namespace=namespace, object=control_pb2.TargetObject(kind=kind, name=name), **kw))


def names(cap: Any) -> list[str]:
    return sorted(p.pod.name for p in cap.pods.values())


def test_a_deployment_follows_its_pods(env: Env) -> None:
    mgr, conn, s = env
    cap = mgr.start(request("deploy", "web"))
    assert names(cap) == ["web-0", "web-1"] and starts(conn) == ["web-0", "web-1"]
    assert cap.request.target.object_selector == "app=web"
    s.add_pod("shop", "web-2", labels={"app": "web"}, node="node-a", ip="10.0.0.4")  # a scale-up
    s.add_pod("shop", "db-1", labels={"app": "db"}, node="node-a", ip="10.0.0.5")
    wait_for(lambda: "web-2" in names(cap), 5, "web-2 attached")
    assert starts(conn) == ["web-2"] and "db-1" not in names(cap)


def test_a_service_follows_its_endpoint_slices(env: Env) -> None:
    mgr, conn, s = env
    s.create("services", {"metadata": {"name": "api", "namespace": "shop"},
                          "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})
    web0 = s.get("pods", "shop", "web-0")
    s.create("endpointslices", endpoint_slice("api-1", "api", [web0]))
    cap = mgr.start(request("svc", "api"))
    assert names(cap) == ["web-0"] and starts(conn) == ["web-0"]
    # The controller publishes web-1 (and later a pod that is not even selected by labels: slices decide).
    s.modify("endpointslices", "shop", "api-1", lambda o: o.update(endpoint_slice(
        "api-1", "api", [web0, s.get("pods", "shop", "web-1")])))
    wait_for(lambda: "web-1" in names(cap), 5, "web-1 attached after the slice changed")
    s.create("endpointslices", endpoint_slice("api-2", "api", [s.get("pods", "shop", "db-0")]))
    wait_for(lambda: "db-0" in names(cap), 5, "db-0 attached from a second slice")
    assert starts(conn) == ["db-0", "web-1"]
    watch = mgr.objects._watches[cap.id]
    assert watch._thread.is_alive()
    mgr.delete(cap.id, by="test", force=True)  # the capture ends: its watch goes
    wait_for(lambda: not watch._thread.is_alive(), 5, "the EndpointSlice watch to end with the capture")
    assert cap.id not in mgr.objects._watches


def test_bad_objects_are_one_line_with_what_exists(env: Env) -> None:
    mgr, _conn, s = env
    s.create("services", {"metadata": {"name": "external", "namespace": "shop"},
                          "spec": {"type": "ExternalName", "externalName": "example.com"}})
    with pytest.raises(ServiceWithoutSelectorError, match="service 'external' .* has no selector"):
        mgr.start(request("svc", "external"))
    with pytest.raises(ObjectNotFoundError, match="no deployment 'nope' in namespace 'shop'; deployments there: db, "
                                                  "web"):
        mgr.start(request("deploy", "nope"))
    with pytest.raises(ObjectNotFoundError, match="node 'node-z' has no podcap agent .*nodes with agents: node-a"):
        mgr.start(request("node", "node-z", namespace=""))
    s.create("jobs", {"metadata": {"name": "idle", "namespace": "shop"},
                      "spec": {"selector": {"matchLabels": {"job": "idle"}}, "template": {}}})
    with pytest.raises(Exception, match="job/idle in namespace 'shop' has no running pods .*selector job=idle"):
        mgr.start(request("job", "idle"))


def test_a_node_target_is_the_nodes_stand_in_pod(env: Env) -> None:
    mgr, conn, _s = env
    cap = mgr.start(request("node", "node-a", namespace=""))
    (ps,) = cap.pods.values()
    assert (ps.pod.namespace, ps.pod.name, ps.pod.uid) == ("node", "node-a", node_uid("node-a"))
    assert cap.request.settings.interface == 3  # every interface of the node's namespace
    assert [m.start.pod.uid for m in conn.queued() if m.WhichOneof("kind") == "start"] == [node_uid("node-a")]


def test_without_kubernetes_workloads_say_so(tmp_path: Any) -> None:
    registry = AgentRegistry()
    mgr = manager(str(tmp_path), registry, None)
    try:
        with pytest.raises(NeedsKubernetesError, match="deploy/web needs the collector to read it"):
            mgr.start(request("deploy", "web"))
    finally:
        mgr.close()
        mgr.store.close()


def test_a_restarted_collector_follows_the_same_objects(env: Env, tmp_path: Any) -> None:
    mgr, conn, s = env
    s.create("services", {"metadata": {"name": "api", "namespace": "shop"},
                          "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})
    s.create("endpointslices", endpoint_slice("api-1", "api", [s.get("pods", "shop", "web-0")]))
    web = mgr.start(request("deploy", "web"))
    api = mgr.start(request("svc", "api"))
    mgr.close()
    # The workload's selector changed meanwhile (it cannot in the API; the stored one is what counts).
    s.modify("deployments", "shop", "web", {"spec": {"selector": {"matchLabels": {"app": "db"}}}})
    again = CaptureManager(LocalStorage(str(tmp_path)), mgr.registry, mgr.store, cluster=mgr.placement.cluster)
    try:
        web2, api2 = again.get(web.id), again.get(api.id)
        assert web2.target.object_selector is not None and str(web2.target.object_selector) == "app=web"
        s.add_pod("shop", "web-7", labels={"app": "web"}, node="node-a", ip="10.0.0.7")
        wait_for(lambda: "web-7" in names(web2), 5, "web-7 attached after the restart")
        s.modify("endpointslices", "shop", "api-1", lambda o: o.update(endpoint_slice(
            "api-1", "api", [s.get("pods", "shop", "web-0"), s.get("pods", "shop", "web-1")])))
        wait_for(lambda: "web-1" in names(api2), 5, "web-1 attached to the Service capture after the restart")
    finally:
        again.close()
