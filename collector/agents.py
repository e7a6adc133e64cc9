"""Registry of connected agents, one per node.

Each agent holds one ``Ingest.Attach`` stream. ``AgentConnection`` is the collector's end of it: the node's pod
inventory and an outbound queue the servicer drains into the response stream. The registry enforces one live
agent per node — a second agent claiming a node is refused unless the first one has gone silent (three missed
heartbeats), in which case it is replaced — and tells listeners (the capture manager) when agents come, go, or
report new inventories.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from podcap.closable import ClosableQueue
from podcap.errors import ConflictError
from podcap.names import NodeName
from podcap.pods import PodRef
from podcap.v1 import ingest_pb2

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0
MISSED_HEARTBEATS = 3


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

    def __post_init__(self) -> None:
        self._outbound: ClosableQueue[ingest_pb2.CollectorMessage] = ClosableQueue()

    @property
    def closed(self) -> bool:
        return self._outbound.closed

    def send(self, msg: ingest_pb2.CollectorMessage) -> None:
        """Queue a message for the agent (dropped once the connection is closed); never blocks."""
        self._outbound.put(msg)

    def close(self) -> None:
        """The response stream ends after what is queued."""
        self._outbound.close()

    def outgoing(self) -> Iterator[ingest_pb2.CollectorMessage]:
        return iter(self._outbound)

    def queued(self) -> list[ingest_pb2.CollectorMessage]:
        """Take what is queued now without waiting (for tests and diagnostics: the servicer iterates ``outgoing``)."""
        return self._outbound.take_all()

    def stale(self, now: float) -> bool:
        return now - self.last_seen > HEARTBEAT_INTERVAL_S * MISSED_HEARTBEATS


class AgentListener:
    """Callbacks of the capture manager. Called without registry locks held."""

    def agent_registered(self, conn: AgentConnection) -> None: ...

    def agent_inventory(self, conn: AgentConnection) -> None: ...

    def agent_gone(self, conn: AgentConnection) -> None: ...


class AgentRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._agents: dict[NodeName, AgentConnection] = {}
        self._listeners: list[AgentListener] = []

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
                if not old.stale(time.monotonic()) and old.instance_id != conn.instance_id:
                    raise AgentConflictError(
                        f"node {conn.node} already has a connected agent (instance {old.instance_id}, "
                        f"session {old.session_id}); is a second agent running with the same --node?"
                    )
                replaced = old
            self._agents[conn.node] = conn
        if replaced is not None:
            log.warning("agent for node %s replaced (old session %s)", conn.node, replaced.session_id)
            replaced.close()
            self._notify(lambda lis: lis.agent_gone(replaced))
        log.info("agent registered: node %s, instance %s, %d pods, source %s",
                 conn.node, conn.instance_id, len(conn.pods), conn.pod_source)
        self._notify(lambda lis: lis.agent_registered(conn))

    def unregister(self, conn: AgentConnection) -> None:
        with self._lock:
            if self._agents.get(conn.node) is conn:
                del self._agents[conn.node]
            else:
                conn.close()
                return
        conn.close()
        log.warning("agent for node %s disconnected (session %s)", conn.node, conn.session_id)
        self._notify(lambda lis: lis.agent_gone(conn))

    def update_inventory(self, conn: AgentConnection, pods: list[PodRef]) -> None:
        with self._lock:
            conn.pods = pods
        self._notify(lambda lis: lis.agent_inventory(conn))

    def get(self, node: NodeName) -> AgentConnection | None:
        with self._lock:
            return self._agents.get(node)

    def agents(self) -> list[AgentConnection]:
        with self._lock:
            return list(self._agents.values())

    def pods(self) -> list[PodRef]:
        with self._lock:
            return [p for conn in self._agents.values() for p in conn.pods]

    def close_all(self) -> None:
        for conn in self.agents():
            conn.close()
