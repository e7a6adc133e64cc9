"""A capture manager over a stand-in API server (its pods watched by a ``ClusterInventory``) with one agent
connected for ``node-a``: what the capture tests of this package share (each fills the stand-in first)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from podcap.collector.agents import AgentConnection, AgentRegistry
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.kube.inventory import ClusterInventory
from podcap.collector.storage.catalog import CaptureStore
from podcap.collector.storage.local import LocalStorage
from podcap.names import NodeName
from tests.kubeapi.helpers import api_for
from tests.kubeapi.standin import KubeApiStandin


@contextmanager
def capture_env(s: KubeApiStandin, tmp_path: str) -> Iterator[tuple[CaptureManager, AgentConnection]]:
    """The manager (catalog ``db`` in ``tmp_path``) and the connection of node-a's agent, once the inventory has
    listed the stand-in's pods; all closed at the end."""
    api = api_for(s, tmp_path)
    inv = ClusterInventory(api, backoff_initial_s=0.05, backoff_max_s=0.2).start()
    try:
        assert inv.wait_synced(5)
        registry = AgentRegistry()
        conn = AgentConnection(node=NodeName("node-a"), instance_id="i", version="t", pod_source="cri", pods=[])
        registry.register(conn)
        mgr = CaptureManager(LocalStorage(tmp_path), registry, CaptureStore(os.path.join(tmp_path, "db")),
                             cluster=inv)
        try:
            yield mgr, conn
        finally:
            mgr.close()
            mgr.store.close()
    finally:
        inv.stop()
        api.close()


def starts(conn: AgentConnection) -> list[str]:
    """The pods the agent was told to start capturing, by name."""
    return sorted(m.start.pod.name for m in conn.queued() if m.WhichOneof("kind") == "start")
