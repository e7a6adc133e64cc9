"""Prometheus metrics of the flight recorders, computed at scrape time from the recorder manager.

``podcap_recorder_saves_total{reason}``: saves started since the collector started, by the trigger that started
them (restart, oomkilled, unhealthy, notready, deleted, packets, manual); triggers that joined a save or were held
back are not saves. Per node, from the agents' last ring reports: ``podcap_recorder_ring_bytes{node}`` (every ring
on the node's disk) and ``podcap_recorder_ring_span_seconds{node}`` (how far back *every* recording ring of the
node reaches: the shortest span among them, the past a save there can count on).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector as PromCollector

from podcap.collector.recorders.manager import RecorderManager
from podcap.v1 import ingest_pb2


class RecorderMetrics(PromCollector):
    def __init__(self, recorders: RecorderManager) -> None:
        self.recorders = recorders

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        saves = CounterMetricFamily("podcap_recorder_saves", "Saves started by recorders, by trigger",
                                    labels=["reason"])
        for reason, n in sorted(self.recorders.saves_total.items()):
            saves.add_metric([reason], n)
        active = GaugeMetricFamily("podcap_recorders_active", "Recorders recording")
        ring_bytes = GaugeMetricFamily("podcap_recorder_ring_bytes", "Bytes in the recorders' rings on the node's "
                                       "disk, as its agent last reported", labels=["node"])
        span = GaugeMetricFamily("podcap_recorder_ring_span_seconds", "Shortest time span held by a recording ring "
                                 "of the node (how far back a save there reaches)", labels=["node"])
        by_node: dict[str, int] = {}
        spans: dict[str, float] = {}
        n_active = 0
        for rec in self.recorders.all():
            with rec.lock:
                n_active += rec.recording
                rings = [(str(rp.pod.node), rp.ring) for rp in rec.pods.values() if rp.ring is not None]
            for node, ring in rings:
                assert ring is not None
                by_node[node] = by_node.get(node, 0) + ring.bytes
                if ring.state == ingest_pb2.RING_STATE_RECORDING and ring.oldest_unix_ns:
                    s = (ring.newest_unix_ns - ring.oldest_unix_ns) / 1e9
                    spans[node] = min(spans.get(node, s), s)
        for node, n in sorted(by_node.items()):
            ring_bytes.add_metric([node], n)
        for node, s in sorted(spans.items()):
            span.add_metric([node], s)
        active.add_metric([], n_active)
        yield from (saves, active, ring_bytes, span)
