"""One live agent per node: a second agent claiming a connected node is refused; a silent one is replaced. A node
whose agent disconnected keeps its pods for a grace (a flapping session must not make them uncapturable), says
why it is away, and is forgotten after it, with listeners told."""

from __future__ import annotations

import pytest

from podcap.collector import agents
from podcap.collector.agents import AgentAbsence, AgentConflictError, AgentConnection, AgentRegistry
from podcap.names import NodeName, PodUid
from podcap.pods import PodRef

NODE = NodeName("node-1")
PODS = [PodRef("bk", "bulk-0", PodUid("uid-0"), NODE)]


def conn(instance: str, pods: list[PodRef] | None = None) -> AgentConnection:
    return AgentConnection(node=NODE, instance_id=instance, version="t", pod_source="netns", pods=pods or [])


class Listener(agents.AgentListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def agent_registered(self, c: AgentConnection) -> None:
        self.events.append(("registered", c.instance_id))

    def agent_gone(self, c: AgentConnection) -> None:
        self.events.append(("gone", c.instance_id))

    def agent_expired(self, absence: AgentAbsence) -> None:
        self.events.append(("expired", absence.node))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_second_agent_for_a_connected_node_is_refused() -> None:
    reg = AgentRegistry()
    first = conn("a")
    reg.register(first)
    with pytest.raises(AgentConflictError, match="already has a connected agent"):
        reg.register(conn("b"))
    assert reg.get(NODE) is first


def test_silent_agent_is_replaced_and_reported_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = AgentRegistry()
    lis = Listener()
    reg.subscribe(lis)
    first = conn("a")
    reg.register(first)
    first.last_seen -= agents.HEARTBEAT_INTERVAL_S * agents.MISSED_HEARTBEATS + 1  # three heartbeats missed
    second = conn("b")
    reg.register(second)
    assert reg.get(NODE) is second and first.closed
    assert first.end_reason.startswith("replaced by session")
    assert lis.events == [("registered", "a"), ("gone", "a"), ("registered", "b")]
    reg.unregister(first)  # the old session's late end does not remove the new agent
    assert reg.get(NODE) is second and reg.absence(NODE) is None


def test_a_disconnected_nodes_pods_stay_known_for_the_grace_then_go(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    reg = AgentRegistry(clock=clock)
    lis = Listener()
    reg.subscribe(lis)
    c = conn("a", PODS)
    reg.register(c)
    assert reg.describe(NODE) == "connected"
    clock.now += 4
    reg.unregister(c, "the call was cancelled")
    assert c.closed and reg.get(NODE) is None
    # Known, with its pods, and what is known of why.
    assert reg.known(NODE) and reg.pods() == PODS
    clock.now += 12
    assert reg.describe(NODE) == "disconnected 12s ago: the call was cancelled"
    assert "stay known for 30 s" in caplog.text and "the call was cancelled" in caplog.text
    assert reg.expire() == [] and ("expired", NODE) not in lis.events
    clock.now += agents.ABSENCE_GRACE_S
    # Past the grace: not known any more, and the listeners are told once.
    assert not reg.known(NODE) and reg.pods() == []
    assert [a.node for a in reg.expire()] == [NODE] and reg.expire() == []
    assert lis.events[-1] == ("expired", NODE)
    assert reg.describe(NODE).startswith("no agent (disconnected 42s ago: the call was cancelled")
    assert reg.describe(NodeName("never-seen")) == "no agent"


def test_an_agent_that_comes_back_ends_the_absence() -> None:
    clock = Clock()
    reg = AgentRegistry(clock=clock)
    lis = Listener()
    reg.subscribe(lis)
    first = conn("a", PODS)
    reg.register(first)
    reg.unregister(first, "gRPC status UNAVAILABLE: connection reset")
    clock.now += 5
    again = conn("a", PODS)
    reg.register(again)
    assert reg.get(NODE) is again and reg.absence(NODE) is None and reg.pods() == PODS
    clock.now += agents.ABSENCE_GRACE_S + 1
    assert reg.expire() == [] and ("expired", NODE) not in lis.events  # nothing left to expire
    assert reg.describe(NODE) == "connected"


def test_the_first_reason_a_session_ends_for_is_kept() -> None:
    c = conn("a")
    c.close("the agent ended the session")
    c.close("the call was cancelled")
    assert c.end_reason == "the agent ended the session"


def test_a_silent_connected_agent_is_described_as_such() -> None:
    clock = Clock()
    reg = AgentRegistry(clock=clock)
    c = conn("a")
    c.last_seen = clock.now - 40
    reg.register(c)
    assert reg.describe(NODE) == "connected, silent for 40s (no heartbeat)"
