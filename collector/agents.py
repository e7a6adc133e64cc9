"""Registry of agents, one per node: connected ones, and for a while those whose session just ended.

Each agent holds one ``Ingest.Attach`` stream. ``AgentConnection`` is the collector's end of it: the node's pod
inventory and an outbound queue the servicer drains into the response stream. The registry enforces one live
agent per node — a second agent claiming a node is refused unless the first one has gone silent (three missed
heartbeats), in which case it is replaced — and tells listeners (the capture manager) when agents come, go, or
report new inventories.

A session that ends does not make its node forget its pods at once. A flapping session (a network blip, a
message the transport refused, an agent restarting under its DaemonSet) is the common case, and a node whose
pods vanish from the registry makes every start on it fail with "no pods" until the agent is back. So the node's
last inventory is kept as an ``AgentAbsence`` (since when, and why the session ended) for ``ABSENCE_GRACE_S``:
meanwhile its pods stay capturable and a start for them waits (PENDING) for the agent's return, which gets the
start like any re-registering agent. ``ABSENCE_GRACE_S`` is 30 s: three missed heartbeats (15 s, when the
collector would call a silent agent unavailable anyway) are not enough, since the agent's reconnect backoff grows
to 10 s, so an agent that retries a few times would lose its node in between; 30 s covers three retries at the
longest backoff, and is short enough that a start for a node whose agent is gone for good fails (no agent) after
half a minute, not after a long wait. ``expire`` ends absences past the grace (the capture manager's ticker calls
it) and tells listeners, so pods waiting for that node become NO_AGENT as they always did. ``describe`` says in
words what the registry knows of a node's agent, for ``podcap status``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import methodcaller

from podcap.closable import ClosableQueue
from podcap.errors import ConflictError
from podcap.names import NodeName
from podcap.pods import PodRef
from podcap.v1 import ingest_pb2

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0
MISSED_HEARTBEATS = 3
# How long a node whose agent disconnected keeps its pods (see the module docstring for why 30 s).
ABSENCE_GRACE_S = 6 * HEARTBEAT_INTERVAL_S


class AgentConflictError(ConflictError):
    """Another live agent already serves this node."""


@dataclass
class AgentConnection:
    node: NodeName
    instance_id: str
    version: str
    pod_source: str
    pods: list[PodRef]
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    last_seen: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    # Why the session ended, in words (the first cause noted wins: what the servicer saw, or who closed it).
    end_reason: str = ""

    def __post_init__(self) -> None:
        self._outbound: ClosableQueue[ingest_pb2.CollectorMessage] = ClosableQueue()

    @property
    def closed(self) -> bool:
        return self._outbound.closed

    def send(self, msg: ingest_pb2.CollectorMessage) -> None:
        """Queue a message for the agent (dropped once the connection is closed); never blocks."""
        self._outbound.put(msg)

    def close(self, reason: str = "") -> None:
        """The response stream ends after what is queued; ``reason`` is kept if it is the first one given."""
        if reason and not self.end_reason:
            self.end_reason = reason
        self._outbound.close()

    def outgoing(self) -> Iterator[ingest_pb2.CollectorMessage]:
        return iter(self._outbound)

    def queued(self) -> list[ingest_pb2.CollectorMessage]:
        """Take what is queued now without waiting (for tests and diagnostics: the servicer iterates ``outgoing``)."""
        return self._outbound.take_all()

    def stale(self, now: float) -> bool:
        return now - self.last_seen > HEARTBEAT_INTERVAL_S * MISSED_HEARTBEATS


@dataclass(frozen=True)
class AgentAbsence:
    """A node whose agent's session ended: its last inventory, since when (monotonic) and why."""

    node: NodeName
    pods: tuple[PodRef, ...]
    session_id: str
    since: float
    reason: str
    wall: float = field(default_factory=time.time)  # ``since`` on the wall clock, for people

    def ago(self, now: float) -> str:
        return f"{max(0.0, now - self.since):.0f}s ago"


class AgentListener:
    """Callbacks of the capture manager. Called without registry locks held."""

    def agent_registered(self, conn: AgentConnection) -> None: ...

    def agent_inventory(self, conn: AgentConnection) -> None: ...

    def agent_gone(self, conn: AgentConnection) -> None: ...

    def agent_expired(self, absence: AgentAbsence) -> None:
        """The node's agent did not come back within ``ABSENCE_GRACE_S``: its pods are no longer known."""


class AgentRegistry:
    def __init__(self, *, absence_grace_s: float = ABSENCE_GRACE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._agents: dict[NodeName, AgentConnection] = {}
        self._absent: dict[NodeName, AgentAbsence] = {}
        # Absences past their grace, for ``describe`` only (one per node ever seen: bounded by the cluster).
        self._expired: dict[NodeName, AgentAbsence] = {}
        self._listeners: list[AgentListener] = []
        self.absence_grace_s = absence_grace_s
        self._clock = clock

    def subscribe(self, listener: AgentListener) -> None:
        self._listeners.append(listener)

    def _notify(self, fn: Callable[[AgentListener], None]) -> None:
        for listener in self._listeners:
            try:
                fn(listener)
            except Exception:
                log.exception("agent listener failed")

    def register(self, conn: AgentConnection) -> None:
        replaced = None
        with self._lock:
            old = self._agents.get(conn.node)
            if old is not None and not old.closed:
                if not old.stale(self._clock()) and old.instance_id != conn.instance_id:
                    raise AgentConflictError(
                        f"node {conn.node} already has a connected agent (instance {old.instance_id}, "
                        f"session {old.session_id}); is a second agent running with the same --node?"
                    )
                replaced = old
            self._agents[conn.node] = conn
            away = self._absent.pop(conn.node, None)
            self._expired.pop(conn.node, None)
        if replaced is not None:
            log.warning("agent for node %s replaced (old session %s)", conn.node, replaced.session_id)
            replaced.close(f"replaced by session {conn.session_id} of instance {conn.instance_id}")
            self._notify(lambda lis: lis.agent_gone(replaced))
        back = f", back after {self._clock() - away.since:.1f} s" if away is not None else ""
        log.info("agent registered: node %s, instance %s, session %s, %d pods, source %s%s",
                 conn.node, conn.instance_id, conn.session_id, len(conn.pods), conn.pod_source, back)
        self._notify(lambda lis: lis.agent_registered(conn))

    def unregister(self, conn: AgentConnection, reason: str = "") -> None:
        """The session ended (``reason``: what ended it, else the connection's own ``end_reason``). Its node keeps
        its pods for ``absence_grace_s``."""
        conn.close(reason)
        why = conn.end_reason or "the session ended"
        with self._lock:
            if self._agents.get(conn.node) is not conn:
                return  # replaced by a newer session: that one speaks for the node
            del self._agents[conn.node]
            now = self._clock()
            self._absent[conn.node] = AgentAbsence(conn.node, tuple(conn.pods), conn.session_id, now, why)
        log.warning("agent for node %s disconnected (session %s, up %.1f s, last message %.1f s before): %s; its "
                    "%d pods stay known for %.0f s, captures wait for it", conn.node, conn.session_id,
                    now - conn.started, now - conn.last_seen, why, len(conn.pods), self.absence_grace_s)
        self._notify(lambda lis: lis.agent_gone(conn))

    def expire(self) -> list[AgentAbsence]:
        """End the absences past their grace (listeners are told); the ones ended."""
        now = self._clock()
        with self._lock:
            gone = [a for a in self._absent.values() if now - a.since >= self.absence_grace_s]
            for a in gone:
                del self._absent[a.node]
                self._expired[a.node] = a
        for a in gone:
            log.warning("agent for node %s did not come back within %.0f s (disconnected: %s): its %d pods are no "
                        "longer capturable; captures of them wait as no-agent", a.node, self.absence_grace_s,
                        a.reason, len(a.pods))
            self._notify(methodcaller("agent_expired", a))
        return gone

    def update_inventory(self, conn: AgentConnection, pods: list[PodRef]) -> None:
        with self._lock:
            conn.pods = pods
        self._notify(lambda lis: lis.agent_inventory(conn))

    def get(self, node: NodeName) -> AgentConnection | None:
        """The node's connected agent, if any."""
        with self._lock:
            return self._agents.get(node)

    def absence(self, node: NodeName) -> AgentAbsence | None:
        """The node's absence within its grace: its agent disconnected lately and may come back."""
        with self._lock:
            away = self._absent.get(node)
        if away is not None and self._clock() - away.since >= self.absence_grace_s:
            return None  # past its grace; ``expire`` tells the listeners at its next call
        return away

    def known(self, node: NodeName) -> bool:
        """The node has an agent, connected or away within its grace: a capture started now may cover its pods."""
        return self.get(node) is not None or self.absence(node) is not None

    def describe(self, node: NodeName) -> str:
        """The node's agent in words: "connected", "disconnected 42s ago: <why>", or "no agent"."""
        now = self._clock()
        with self._lock:
            conn = self._agents.get(node)
            away = self._absent.get(node) or self._expired.get(node)
        if conn is not None:
            if conn.stale(now):
                return f"connected, silent for {now - conn.last_seen:.0f}s (no heartbeat)"
            return "connected"
        if away is None:
            return "no agent"
        text = f"disconnected {away.ago(now)}: {away.reason}"
        return text if now - away.since < self.absence_grace_s else f"no agent ({text})"

    def agents(self) -> list[AgentConnection]:
        with self._lock:
            return list(self._agents.values())

    def pods(self) -> list[PodRef]:
        """Pods of connected agents and of agents away within their grace."""
        now = self._clock()
        with self._lock:
            return [p for conn in self._agents.values() for p in conn.pods] + [
                p for a in self._absent.values() if now - a.since < self.absence_grace_s for p in a.pods]

    def close_all(self, reason: str = "collector shutting down") -> None:
        for conn in self.agents():
            conn.close(reason)
