"""The agent's Prometheus metrics and gRPC health endpoint (for the DaemonSet's probes).

Metrics are read at scrape time from the capture engine and the upload log: active streams, packets captured and
dropped by kind (``kernel``, ``interface`` and every cause of ``podcap.drops``), spool depth; and from the flight
recorder's rings, per recorder (summed over its pods on the node, to keep the series few): bytes and packets held,
the time they span, packets evicted and not written, trigger firings, and the node's ring budget. Health is SERVING
while a session with the collector is up, NOT_SERVING otherwise (readiness), and the health server itself
answering is liveness.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import HealthServicer
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector as PromCollector

from podcap.agent.session import AgentSession
from podcap.drops import CAUSES


class AgentMetrics(PromCollector):
    def __init__(self, agent: AgentSession) -> None:
        self.agent = agent

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        streams = GaugeMetricFamily("podcap_agent_streams", "Pod capture streams open on this node")
        chunks, spooled = self.agent.out.pending()
        depth = GaugeMetricFamily("podcap_agent_spool_bytes", "Captured bytes waiting for acknowledgement")
        depth_chunks = GaugeMetricFamily("podcap_agent_spool_chunks", "Chunks waiting for acknowledgement")
        connected = GaugeMetricFamily("podcap_agent_connected", "1 while the collector session is up")
        stats = self.agent.engine.counters()
        captured = CounterMetricFamily("podcap_agent_captured_packets", "Packets captured", labels=["capture"])
        drops = CounterMetricFamily("podcap_agent_dropped_packets", "Packets lost on this node by kind",
                                    labels=["capture", "kind"])
        for cid, c in stats.items():
            captured.add_metric([cid], c.captured)
            drops.add_metric([cid, "kernel"], c.kernel_dropped)
            drops.add_metric([cid, "interface"], c.if_dropped)
            for cause in CAUSES:
                drops.add_metric([cid, cause], getattr(c.drops, cause))
        streams.add_metric([], len(self.agent.engine.active()))
        depth.add_metric([], spooled)
        depth_chunks.add_metric([], chunks)
        connected.add_metric([], 1 if self.agent.connected else 0)
        yield from (streams, depth, depth_chunks, connected, captured, drops)
        yield from self._rings()

    def _rings(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        recorder = self.agent.recorder
        if recorder is None:
            return
        held = GaugeMetricFamily("podcap_agent_ring_bytes", "Packet bytes held in flight-recorder rings on this node",
                                 labels=["recorder"])
        packets = GaugeMetricFamily("podcap_agent_ring_packets", "Packets held in flight-recorder rings",
                                    labels=["recorder"])
        span = GaugeMetricFamily("podcap_agent_ring_span_seconds",
                                 "Time from the oldest to the newest packet a recorder's rings hold on this node",
                                 labels=["recorder"])
        evicted = CounterMetricFamily("podcap_agent_ring_evicted_packets",
                                      "Packets removed from rings (oldest first: limits, node budget, free disk)",
                                      labels=["recorder"])
        unwritten = CounterMetricFamily("podcap_agent_ring_unwritten_packets",
                                        "Packets a ring could not take (no room even after evicting)",
                                        labels=["recorder"])
        fired = CounterMetricFamily("podcap_agent_ring_trigger_fired", "Packet trigger firings", labels=["recorder"])
        budget = GaugeMetricFamily("podcap_agent_ring_budget_bytes", "The node's budget for all rings")
        per: dict[str, list[int]] = {}
        for r in recorder.statuses():
            acc = per.setdefault(r.recorder_id, [0, 0, 0, 0, 0, 0, 0])
            acc[0] += r.bytes
            acc[1] += r.packets
            if r.oldest_unix_ns:
                acc[2] = min(acc[2] or r.oldest_unix_ns, r.oldest_unix_ns)
            acc[3] = max(acc[3], r.newest_unix_ns)
            acc[4] += r.drops.ring_evicted
            acc[5] += r.drops.ring_unwritten
            acc[6] += r.trigger_fired
        for rid, (b, p, oldest, newest, ev, unw, fi) in per.items():
            held.add_metric([rid], b)
            packets.add_metric([rid], p)
            span.add_metric([rid], (newest - oldest) / 1e9 if oldest and newest else 0.0)
            evicted.add_metric([rid], ev)
            unwritten.add_metric([rid], unw)
            fired.add_metric([rid], fi)
        budget.add_metric([], recorder.store.settings.budget_bytes)
        yield from (held, packets, span, evicted, unwritten, fired, budget)


def serve_metrics(address: str, agent: AgentSession) -> int:
    REGISTRY.register(AgentMetrics(agent))
    host, _, port = address.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "0.0.0.0")
    return int(server.server_address[1])


def serve_health(address: str) -> tuple[grpc.Server, HealthServicer]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
    health = HealthServicer()
    health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address} for health checks")
    server.start()
    return server, health
