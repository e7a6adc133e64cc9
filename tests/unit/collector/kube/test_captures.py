"""The capture manager with an API server: targets resolve from the watched cache (with --field-selector), pods
that become Running during a dynamic capture are attached, and a collector that cannot list pods says why."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from podcap.collector.agents import AgentConnection, AgentRegistry
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.kube.inventory import ClusterInventory, ClusterNotSyncedError
from podcap.collector.kube.selectors import SelectorError
from podcap.collector.storage.catalog import CaptureStore
from podcap.collector.storage.local import LocalStorage
from podcap.collector.targets import NoMatchError
from podcap.v1 import control_pb2
from tests.kubeapi.helpers import api_for, wait_for
from tests.kubeapi.standin import KubeApiStandin
from tests.unit.collector.kube.capture_env import capture_env, starts


@pytest.fixture
def env(tmp_path: Any) -> Iterator[tuple[CaptureManager, AgentConnection, KubeApiStandin]]:
    with KubeApiStandin(bookmark_interval=0.2) as s:
        s.add_pod("shop", "web-0", labels={"app": "web"}, node="node-a", ip="10.0.0.1")
        s.add_pod("shop", "web-1", labels={"app": "web"}, node="node-b", ip="10.0.0.2")
        with capture_env(s, str(tmp_path)) as (mgr, conn):
            yield mgr, conn, s


def test_field_selector_and_dynamic_attach(env: tuple[CaptureManager, AgentConnection, KubeApiStandin]) -> None:
    mgr, conn, s = env
    cap = mgr.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(
        namespace="shop", selector="app=web", field_selector="spec.nodeName=node-a")))
    assert sorted(p.pod.name for p in cap.pods.values()) == ["web-0"]  # the agent's inventory is empty: API's view
    assert starts(conn) == ["web-0"]
    s.add_pod("shop", "web-2", labels={"app": "web"}, node="node-a", phase="Pending")
    s.add_pod("shop", "web-3", labels={"app": "web"}, node="node-b")  # other node: field selector says no
    import time
    time.sleep(0.3)
    assert starts(conn) == []  # Pending: no sandbox yet, not attached
    s.modify_pod("shop", "web-2", phase="Running", ip="10.0.0.3")
    wait_for(lambda: "web-2" in {p.pod.name for p in cap.pods.values()}, 5, "web-2 attached")
    assert starts(conn) == ["web-2"]
    assert sorted(p.pod.name for p in cap.pods.values()) == ["web-0", "web-2"]


def test_errors(env: tuple[CaptureManager, AgentConnection, KubeApiStandin]) -> None:
    mgr, conn, s = env
    with pytest.raises(SelectorError):
        mgr.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="shop", field_selector="x=1")))
    with pytest.raises(NoMatchError, match="with field selector 'spec.nodeName=node-z'"):
        mgr.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(
            namespace="shop", field_selector="spec.nodeName=node-z")))


def test_not_synced(tmp_path: Any) -> None:
    with KubeApiStandin() as s:
        s.deny("list", None)
        api = api_for(s, str(tmp_path))
        inv = ClusterInventory(api, backoff_initial_s=0.05).start()
        store = CaptureStore(os.path.join(str(tmp_path), "db"))
        mgr = CaptureManager(LocalStorage(str(tmp_path)), AgentRegistry(), store, cluster=inv)
        try:
            wait_for(lambda: inv.error is not None, 5)
            with pytest.raises(ClusterNotSyncedError, match="not allowed to list pods"):
                mgr.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="shop")))
        finally:
            mgr.close()
            store.close()
            inv.stop()
            api.close()
