"""``ClusterInventory``: the collector's pod source with an API server — one shared watched cache that answers
``pods()`` like ``AgentRegistry.pods()``, field selectors applied locally (the API server's grammar), listeners
told about pods that come, change and go, and a sync wait that reports why it cannot sync."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from podcap.collector.kube.client import KubeApi
from podcap.collector.kube.errors import KubeForbiddenError
from podcap.collector.kube.inventory import ClusterInventory, ClusterNotSyncedError
from podcap.collector.kube.selectors import parse_field_selector
from podcap.collector.targets import NoMatchError, parse_target, resolve
from podcap.pods import PodRef
from podcap.v1 import control_pb2
from tests.kubeapi.helpers import Recorder, list_pods, wait_for
from tests.kubeapi.standin import KubeApiStandin


@pytest.fixture
def standin() -> Iterator[KubeApiStandin]:
    with KubeApiStandin(bookmark_interval=0.2) as s:
        s.add_pod("default", "web-1", labels={"app": "web"}, node="node-1", ip="10.1.0.1")
        s.add_pod("prod", "web-2", labels={"app": "web"}, node="node-2", ip="10.1.0.2")
        s.add_pod("prod", "web-3", labels={"app": "web"}, node="node-1", ip="10.1.0.3", phase="Pending")
        s.add_pod("prod", "db-1", labels={"app": "db"}, node="node-2", ip="10.1.0.4")
        yield s


@pytest.fixture
def inventory(api: KubeApi) -> Iterator[ClusterInventory]:
    inv = ClusterInventory(api, backoff_initial_s=0.05, backoff_max_s=0.3).start()
    assert inv.wait_synced(5)
    yield inv
    inv.stop()


def displays(pods: list[PodRef]) -> list[str]:
    return sorted(p.display for p in pods)


def test_pods_like_the_agent_registry(inventory: ClusterInventory) -> None:
    pods = inventory.pods()
    assert displays(pods) == ["default/web-1", "prod/db-1", "prod/web-2", "prod/web-3"]
    assert all(isinstance(p, PodRef) and p.node and p.uid for p in pods)
    spec = parse_target(control_pb2.Target(namespace="prod", selector="app=web"))
    assert [p.name for p in resolve(spec, pods)] == ["web-2", "web-3"]


@pytest.mark.parametrize(("selector", "expected"), [
    ("", ["default/web-1", "prod/db-1", "prod/web-2", "prod/web-3"]),
    ("spec.nodeName=node-1", ["default/web-1", "prod/web-3"]),
    ("spec.nodeName==node-2,metadata.name!=db-1", ["prod/web-2"]),
    ("metadata.namespace=prod,status.phase=Running", ["prod/db-1", "prod/web-2"]),
    ("status.phase!=Running", ["prod/web-3"]),
    ("metadata.name=web-1", ["default/web-1"]),
    ("spec.hostNetwork=false,status.podIP=10.1.0.4", ["prod/db-1"]),
    ("status.phase=Succeeded", []),  # finished pods are not in the cache: nothing to capture
])
def test_field_selectors_applied_to_the_cache(inventory: ClusterInventory, standin: KubeApiStandin,
                                              selector: str, expected: list[str]) -> None:
    assert displays(inventory.select(parse_field_selector(selector))) == expected
    # The same answer as the API server gives for the same selector (over the pods the cache holds).
    on_server = {p.display for p in list_pods(inventory.api, None, field_selector=selector)[0]}
    assert on_server == set(expected)


def test_resolution_with_a_field_selector_as_the_capture_manager_does_it(inventory: ClusterInventory) -> None:
    spec = parse_target(control_pb2.Target(all_namespaces=True, selector="app=web"))
    pods = inventory.select(parse_field_selector("spec.nodeName=node-1"))
    assert displays(resolve(spec, pods)) == ["default/web-1", "prod/web-3"]
    # What a capture can start on now: Running pods (web-3 is Pending: no sandbox for its agent to find yet).
    pods = inventory.select(parse_field_selector("spec.nodeName=node-1"), running_only=True)
    assert displays(resolve(spec, pods)) == ["default/web-1"]
    assert [inventory.running(p) for p in sorted(inventory.pods(), key=lambda p: p.name)] == [
        True, True, True, False]  # db-1, web-1, web-2, web-3
    with pytest.raises(NoMatchError):
        resolve(spec, inventory.select(parse_field_selector("spec.nodeName=node-9")))


def test_listeners_hear_pods_come_change_and_go(inventory: ClusterInventory, standin: KubeApiStandin) -> None:
    rec = Recorder()
    inventory.subscribe(rec)
    standin.add_pod("prod", "web-4", labels={"app": "web"}, node=None, phase="Pending")  # unscheduled: not yet
    standin.modify_pod("prod", "web-4", node="node-1")
    standin.modify_pod("prod", "web-3", phase="Running")
    standin.delete_pod("prod", "db-1")
    assert rec.wait_count(3) == [("added", "prod/web-4"), ("modified", "prod/web-3"), ("deleted", "prod/db-1")]
    assert inventory.fields(rec.pods["prod/web-3"])["status.phase"] == "Running"
    assert displays(inventory.pods()) == ["default/web-1", "prod/web-2", "prod/web-3", "prod/web-4"]


def test_a_failing_listener_does_not_stop_the_others(inventory: ClusterInventory, standin: KubeApiStandin) -> None:
    class Broken(Recorder):
        def pod_added(self, pod: PodRef) -> None:
            raise RuntimeError("boom")

    rec = Recorder()
    inventory.subscribe(Broken())
    inventory.subscribe(rec)
    standin.add_pod("prod", "x")
    standin.add_pod("prod", "y")
    assert rec.wait_count(2) == [("added", "prod/x"), ("added", "prod/y")]


def test_wait_synced_raises_why_it_cannot_sync(api: KubeApi, standin: KubeApiStandin) -> None:
    standin.deny("list", None)
    inv = ClusterInventory(api, backoff_initial_s=0.05, backoff_max_s=0.2).start()
    try:
        with pytest.raises(KubeForbiddenError, match="grant the collector's service account"):
            inv.wait_synced(1.0)
        with pytest.raises(ClusterNotSyncedError, match="not allowed to list pods"):
            inv.require_synced()
        standin.allow_all()
        assert inv.wait_synced(5)
        inv.require_synced()
        assert len(inv.pods()) == 4
    finally:
        inv.stop()


def test_one_list_and_one_watch_serve_every_query(inventory: ClusterInventory, standin: KubeApiStandin) -> None:
    wait_for(lambda: standin.open_watches() == 1, 5, "the watch to open")
    for sel in ("spec.nodeName=node-1", "metadata.namespace=prod", ""):
        inventory.select(parse_field_selector(sel))
        inventory.pods()
    assert standin.count("list") == 1 and standin.count("watch") == 1
