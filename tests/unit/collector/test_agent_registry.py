"""One live agent per node: a second agent claiming a connected node is refused; a silent one is replaced."""

from __future__ import annotations

import pytest

from podcap.collector import agents
from podcap.collector.agents import AgentConflictError, AgentConnection, AgentRegistry
from podcap.names import NodeName


def conn(instance: str) -> AgentConnection:
    return AgentConnection(node=NodeName("node-1"), instance_id=instance, version="t", pod_source="netns", pods=[])


class Listener(agents.AgentListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def agent_registered(self, c: AgentConnection) -> None:
        self.events.append(("registered", c.instance_id))

    def agent_gone(self, c: AgentConnection) -> None:
        self.events.append(("gone", c.instance_id))


def test_second_agent_for_a_connected_node_is_refused() -> None:
    reg = AgentRegistry()
    first = conn("a")
    reg.register(first)
    with pytest.raises(AgentConflictError, match="already has a connected agent"):
        reg.register(conn("b"))
    assert reg.get(NodeName("node-1")) is first


def test_silent_agent_is_replaced_and_reported_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = AgentRegistry()
    lis = Listener()
    reg.subscribe(lis)
    first = conn("a")
    reg.register(first)
    first.last_seen -= agents.HEARTBEAT_INTERVAL_S * agents.MISSED_HEARTBEATS + 1  # three heartbeats missed
    second = conn("b")
    reg.register(second)
    assert reg.get(NodeName("node-1")) is second and first.closed
    assert lis.events == [("registered", "a"), ("gone", "a"), ("registered", "b")]
    reg.unregister(first)  # the old session's late end does not remove the new agent
    assert reg.get(NodeName("node-1")) is second
