"""Placement: which agent captures which pod, as agents and pods come and go.

A start request resolves to pods through the Kubernetes API's watched cache (``ClusterInventory``) when the
collector has one, else through the agents' own inventories; every chosen pod must sit on a node with an agent,
connected or disconnected within its grace (``AgentRegistry.known``: one failed session must not make a node's
pods uncapturable). Each node's agent gets one start command per pod; pods of a node whose agent is away wait
(``PENDING``) and get theirs when it registers again, or become ``NO_AGENT`` when its grace runs out. Afterwards
placement follows events: an agent that (re)connects is given its pods again (or told to stop those of a stopping
capture); an agent that goes leaves its pods waiting (``NO_AGENT``) with their streams kept for its return; a pod
that appears and matches a running dynamic capture (label selector, namespace) is attached; a captured pod's IP
is kept current.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from functools import lru_cache

from podcap.collector.agents import AgentAbsence, AgentConnection, AgentListener, AgentRegistry
from podcap.collector.captures.model import ACTIVE, MIN_SEGMENT_BYTES, TERMINAL, Capture, PodState
from podcap.collector.captures.table import CaptureTable
from podcap.collector.kube.inventory import ClusterInventory, ClusterListener
from podcap.collector.kube.selectors import Selector, parse_field_selector, pod_fields
from podcap.collector.storage.base import pod_path
from podcap.collector.targets import NoMatchError, TargetSpec, resolve
from podcap.errors import InvalidInputError, PreconditionError
from podcap.names import NodeName
from podcap.pods import PodRef
from podcap.v1 import common_pb2, control_pb2, ingest_pb2

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 4 << 20


class NoAgentError(PreconditionError):
    """A pod's node has no connected agent."""


class HostNetworkPodError(InvalidInputError):
    """The user named a pod that shares its node's network: it has no interface of its own."""


def _clock(absence: AgentAbsence) -> str:
    """When an absence began, as a wall-clock time of day."""
    return "at " + time.strftime("%H:%M:%S", time.localtime(absence.wall))


def _waiting(absence: AgentAbsence) -> str:
    return (f"waiting for the agent of node {absence.node}, disconnected {_clock(absence)}: {absence.reason}; the "
            "start is sent when it registers again")


@lru_cache(maxsize=256)
def field_selector(text: str) -> Selector:
    """A target's parsed --field-selector (cached: dynamic attachment checks it for every pod event)."""
    return parse_field_selector(text)


def new_pod_state(cap: Capture, pod: PodRef) -> PodState:
    # A pod re-created under the same name (a StatefulSet pod, say) is another pod: its own directory.
    name = pod.name
    if any(p.pod.namespace == pod.namespace and p.pod.name == pod.name for p in cap.pods.values()):
        name = f"{pod.name}.{pod.uid[:8].lower()}"
    return PodState(pod, pod_path(cap.id, pod.namespace, name))


class Placement(AgentListener, ClusterListener):
    def __init__(self, table: CaptureTable, registry: AgentRegistry, cluster: ClusterInventory | None) -> None:
        self.table = table
        self.registry = registry
        # With an API server, pods come from its watched cache; without one, from the agents' inventories.
        self.cluster = cluster

    def choose(self, req: control_pb2.StartCaptureRequest, spec: TargetSpec) -> list[PodRef]:
        """The pods a new capture covers. Raises NoMatchError, HostNetworkPodError, NoAgentError."""
        fields = field_selector(req.target.field_selector)
        try:
            pods = resolve(spec, self._candidates(fields))
        except NoMatchError as e:
            if fields:
                raise NoMatchError(f"{e} (with field selector {str(fields)!r})") from e
            raise
        # A hostNetwork pod shares the node's network: nothing of its own to capture. Naming one is an error; a
        # selector skips them (as _attach_new does for pods that appear later) unless it matches nothing else.
        host_network = [p for p in pods if p.host_network]
        if host_network and (spec.pod_names or len(host_network) == len(pods)):
            raise HostNetworkPodError(f"pod {host_network[0].display} uses hostNetwork: it shares the node's network "
                                      "and has no interface of its own to capture")
        pods = [p for p in pods if not p.host_network]
        for pod in pods:
            if not self.registry.known(pod.node):
                known = self.registry.describe(pod.node)  # "no agent", or "no agent (disconnected ...)"
                last = f" (its agent {known[len('no agent ('):-1]})" if known.startswith("no agent (") else ""
                raise NoAgentError(f"pod {pod.display} runs on node {pod.node}, which has no connected podcap agent"
                                   f"{last}")
        return pods

    def capturable(self) -> list[PodRef]:
        """The pods a new capture could cover now, in every namespace: what ``choose`` picks from (Running, from the
        API's cache or the agents' inventories), less hostNetwork pods and pods on nodes without a connected agent
        (``choose`` refuses both; a node whose agent is away within its grace counts as having one). Raises
        ClusterNotSyncedError while the API's cache is not filled."""
        return [p for p in self._candidates(field_selector(""))
                if not p.host_network and self.registry.known(p.node)]

    def _candidates(self, fields: Selector) -> list[PodRef]:
        """The pods a new capture can cover now: with an API server, every Running pod in its watched cache (on
        nodes with or without an agent); without one, the agents' inventories."""
        if self.cluster is not None:
            self.cluster.require_synced()
            return self.cluster.select(fields, running_only=True)
        return [p for p in self.registry.pods() if fields.matches(pod_fields(p))]

    def _fields_match(self, cap: Capture, pod: PodRef) -> bool:
        fields = field_selector(cap.request.target.field_selector)
        if not fields:
            return True
        return fields.matches(self.cluster.fields(pod) if self.cluster is not None else pod_fields(pod))

    def dispatch_starts(self, cap: Capture, pods: list[PodState]) -> None:
        """Tell each pod's agent to capture it (pods on a node whose agent is away wait as PENDING for its return,
        on a node without one as NO_AGENT)."""
        by_node: dict[NodeName, list[PodState]] = {}
        for ps in pods:
            by_node.setdefault(ps.pod.node, []).append(ps)
        for node, node_pods in by_node.items():
            conn = self.registry.get(node)
            away = self.registry.absence(node) if conn is None else None
            with cap.lock:
                for ps in node_pods:
                    if away is not None:
                        ps.state = common_pb2.POD_CAPTURE_STATE_PENDING
                        ps.message = _waiting(away)
                    elif conn is None:
                        ps.state = common_pb2.POD_CAPTURE_STATE_NO_AGENT
                        ps.message = f"node {node} has no connected agent"
                    else:
                        ps.state = common_pb2.POD_CAPTURE_STATE_PENDING
                    ps.dirty = True
                cap.dirty = True
            if conn is None:
                continue
            settings = common_pb2.CaptureSettings()
            settings.CopyFrom(cap.request.settings)
            # Chunks no larger than half a segment: a pod's kept bytes stay within its retention target.
            settings.max_chunk_bytes = min(MAX_CHUNK_BYTES, max(MIN_SEGMENT_BYTES // 2, cap.segment_bytes() // 2))
            for ps in node_pods:
                conn.send(ingest_pb2.CollectorMessage(start=ingest_pb2.StartPodCapture(
                    capture_id=cap.id, pod=ps.pod.to_proto(), settings=settings, pods_on_node=len(node_pods),
                )))

    def stop_on(self, cap: Capture, nodes: set[NodeName]) -> None:
        for node in nodes:
            conn = self.registry.get(node)
            if conn is not None:
                conn.send(ingest_pb2.CollectorMessage(stop=ingest_pb2.StopPodCapture(capture_id=cap.id,
                                                                                     reason=cap.end_reason)))

    # ---- agents coming and going ----

    def agent_registered(self, conn: AgentConnection) -> None:
        for cap in self.table.live():
            if cap.request.HasField("save"):
                continue  # a recorder's save: its agents get SavePodWindow again from the recorder manager
            with cap.lock:
                want = [ps for ps in cap.pods.values() if ps.pod.node == conn.node and ps.state not in TERMINAL]
            if cap.state == control_pb2.CAPTURE_STATE_RUNNING:
                self.dispatch_starts(cap, want)
            elif want:
                conn.send(ingest_pb2.CollectorMessage(stop=ingest_pb2.StopPodCapture(capture_id=cap.id,
                                                                                     reason=cap.end_reason)))
        self.agent_inventory(conn)

    def agent_gone(self, conn: AgentConnection) -> None:
        for cap in self.table.all():
            with cap.lock:
                if not cap.live:
                    continue
                for ps in cap.pods.values():
                    for st in ps.streams.values():
                        if st.ack_conn is conn:
                            st.ack_conn = None
                    if ps.pod.node == conn.node and ps.state in ACTIVE:
                        # Keep the stream: a reconnecting agent continues it from its spool.
                        ps.state = common_pb2.POD_CAPTURE_STATE_NO_AGENT
                        ps.message = f"agent of node {conn.node} disconnected; waiting for it to return"
                        ps.gap_since_ns = ps.gap_since_ns or time.time_ns()
                        ps.dirty = True
                        cap.dirty = True

    def agent_expired(self, absence: AgentAbsence) -> None:
        """The node's agent did not come back in time: pods that waited for it (PENDING) are NO_AGENT now, as if
        the capture had started without it."""
        for cap in self.table.live():
            with cap.lock:
                for ps in cap.pods.values():
                    if ps.pod.node == absence.node and ps.state == common_pb2.POD_CAPTURE_STATE_PENDING:
                        ps.state = common_pb2.POD_CAPTURE_STATE_NO_AGENT
                        ps.message = (f"node {absence.node} has no connected agent (it disconnected "
                                      f"{_clock(absence)} and did not come back: {absence.reason})")
                        ps.gap_since_ns = ps.gap_since_ns or time.time_ns()
                        ps.dirty = True
                        cap.dirty = True

    def agent_inventory(self, conn: AgentConnection) -> None:
        """Attach pods that appeared on the node and match a running dynamic capture; keep the IP of captured pods
        current (a restarted sandbox usually has a new one)."""
        self._refresh_ips(conn.pods)
        self._attach_new(conn.pods)

    def _refresh_ips(self, pods: list[PodRef]) -> None:
        for cap in self.table.all():
            if cap.state != control_pb2.CAPTURE_STATE_RUNNING:
                continue
            with cap.lock:
                for pod in pods:
                    ps = cap.pods.get(pod.uid)
                    if (ps is not None and pod.ip and pod.ip != ps.pod.ip
                            and (ps.pod.node, ps.pod.namespace, ps.pod.name) == (pod.node, pod.namespace, pod.name)):
                        ps.pod = dataclasses.replace(ps.pod, ip=pod.ip)
                        ps.dirty = True
                        cap.dirty = True

    # ---- cluster events (with an API server) ----

    def pod_added(self, pod: PodRef) -> None:
        """A pod appeared in the API; attached once Running (its sandbox exists, its agent can find it)."""
        if self.cluster is not None and self.cluster.running(pod):
            self._attach_new([pod])

    def pod_changed(self, pod: PodRef) -> None:
        """A pod became Running or changed labels: it may match a dynamic capture now."""
        self.pod_added(pod)

    def pod_deleted(self, pod: PodRef) -> None:
        """Nothing to do: the pod's agent reports its stream ending when the sandbox goes."""

    def reconsider(self, cap: Capture) -> None:
        """Attach the Running pods that match the capture now (its Service's endpoints changed)."""
        if self.cluster is None or cap.state != control_pb2.CAPTURE_STATE_RUNNING:
            return
        self._attach_new([p for p in self.cluster.select(field_selector(""), running_only=True)
                          if p.uid not in cap.pods and cap.target.matches(p)])

    def _attach_new(self, pods: list[PodRef]) -> None:
        for cap in self.table.all():
            if cap.state != control_pb2.CAPTURE_STATE_RUNNING or not cap.target.dynamic:
                continue
            new: list[PodState] = []
            with cap.lock:
                for pod in pods:
                    if (pod.uid not in cap.pods and cap.target.matches(pod) and not pod.host_network
                            and self._fields_match(cap, pod)):
                        ps = new_pod_state(cap, pod)
                        cap.pods[pod.uid] = ps
                        new.append(ps)
                        log.info("capture %s: attaching new pod %s", cap.id, pod.display)
            if new:
                self.dispatch_starts(cap, new)
