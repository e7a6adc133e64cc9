"""A node never loses its pods because one session failed: a start for pods of a node whose agent just
disconnected is accepted, waits (PENDING) and is sent when the agent registers again; a node whose agent does not
come back within its grace ends as before (no agent)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from podcap.collector.agents import AgentConnection, AgentRegistry
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.captures.placement import NoAgentError
from podcap.collector.storage.catalog import CaptureStore
from podcap.collector.storage.local import LocalStorage
from podcap.collector.targets import NoMatchError
from podcap.v1 import common_pb2, control_pb2
from tests.unit.collector.captures.test_capture_manager import NODE, PODS, sent


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(tmp_path: str) -> Iterator[tuple[CaptureManager, AgentRegistry, Clock]]:
    clock = Clock()
    registry = AgentRegistry(clock=clock)
    store = CaptureStore(os.path.join(tmp_path, "db"))
    mgr = CaptureManager(LocalStorage(str(tmp_path)), registry, store)
    yield mgr, registry, clock
    mgr.close()
    store.close()


def agent() -> AgentConnection:
    return AgentConnection(node=NODE, instance_id="inst", version="t", pod_source="netns", pods=list(PODS))


def start_req() -> control_pb2.StartCaptureRequest:
    return control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="shop", selector="app=web"))


def starts(conn: AgentConnection) -> list[str]:
    return sorted(f"{m.start.capture_id}/{m.start.pod.name}" for m in sent(conn) if m.WhichOneof("kind") == "start")


def test_a_start_for_a_node_whose_agent_just_left_waits_and_is_sent_when_it_returns(
        env: tuple[CaptureManager, AgentRegistry, Clock]) -> None:
    mgr, registry, clock = env
    first = agent()
    registry.register(first)
    registry.unregister(first, "gRPC status RESOURCE_EXHAUSTED: Received message larger than max")
    clock.now += 3
    cap = mgr.start(start_req())  # accepted: the node's pods are still known
    st = mgr.status(cap)
    assert [p.state for p in st.pods] == [common_pb2.POD_CAPTURE_STATE_PENDING] * 2
    assert "waiting for the agent of node node-a" in st.pods[0].message
    assert st.pods[0].agent == "disconnected 3s ago: gRPC status RESOURCE_EXHAUSTED: Received message larger than max"
    assert starts(first) == []  # nothing goes to the closed session
    back = agent()
    registry.register(back)
    assert starts(back) == [f"{cap.id}/web-0", f"{cap.id}/web-1"]  # sent once it is back
    assert mgr.status(cap).pods[0].agent == "connected"
    # New captures on the node work as soon as a session is up.
    cap2 = mgr.start(start_req())
    assert starts(back) == [f"{cap2.id}/web-0", f"{cap2.id}/web-1"]


def test_a_node_whose_agent_never_returns_ends_as_before(env: tuple[CaptureManager, AgentRegistry, Clock]) -> None:
    mgr, registry, clock = env
    first = agent()
    registry.register(first)
    registry.unregister(first, "the call was cancelled")
    waiting = mgr.start(start_req())
    clock.now += registry.absence_grace_s
    registry.expire()  # (the manager's ticker does this every 0.2 s)
    st = mgr.status(waiting)
    assert [p.state for p in st.pods] == [common_pb2.POD_CAPTURE_STATE_NO_AGENT] * 2
    assert "did not come back: the call was cancelled" in st.pods[0].message
    assert st.pods[0].agent.startswith("no agent (disconnected")
    # Its pods are gone with it: without an API server nothing names them any more.
    with pytest.raises(NoMatchError, match="has no pods"):
        mgr.start(start_req())
    assert mgr.capturable_pods() == []


def test_with_an_api_server_a_pod_on_a_node_without_agent_is_refused_after_the_grace(
        env: tuple[CaptureManager, AgentRegistry, Clock], monkeypatch: pytest.MonkeyPatch) -> None:
    """Pods come from the API server's cache: the node's agent decides."""
    mgr, registry, clock = env
    first = agent()
    registry.register(first)
    registry.unregister(first, "the call was cancelled")
    monkeypatch.setattr(mgr.placement, "_candidates", lambda fields: list(PODS))
    assert [p.name for p in mgr.capturable_pods()] == ["web-0", "web-1"]
    mgr.start(start_req())
    clock.now += registry.absence_grace_s
    with pytest.raises(NoAgentError, match=r"no connected podcap agent \(its agent disconnected 30s ago: the call "
                                           r"was cancelled\)$"):
        mgr.start(start_req())
