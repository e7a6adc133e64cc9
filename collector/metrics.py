"""Prometheus metrics of the collector, computed at scrape time from the capture manager (no second set of
counters to drift from what ``podcap status`` shows: both read the same state).

Per-pod series carry ``capture``, ``namespace`` and ``pod`` labels; they exist while the capture is known to the
collector. Chunk commit latency (written → durably acknowledged) is a histogram fed by the committer. Deleted
captures are counted by cause (``user``, ``keep_ended``, ``disk_budget``), next to what the data dir holds and its
budget; downloads count the pcap bytes they send (a resumed download only sends what was missing).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector as PromCollector

from podcap.collector.agents import AgentRegistry
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.recorders.manager import RecorderManager
from podcap.collector.recorders.metrics import RecorderMetrics
from podcap.drops import CAUSES

COMMIT_SECONDS = Histogram("podcap_commit_seconds", "Time to make a batch of chunks durable and acknowledge it",
                           buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


class CaptureMetrics(PromCollector):
    def __init__(self, captures: CaptureManager, registry: AgentRegistry) -> None:
        self.captures = captures
        self.registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        active = GaugeMetricFamily("podcap_captures_active", "Captures running or stopping")
        agents = GaugeMetricFamily("podcap_agents_connected", "Agents with a live session")
        paused = GaugeMetricFamily("podcap_storage_paused", "1 while storing is paused (e.g. data dir full)")
        labels = ["capture", "namespace", "pod"]
        packets = CounterMetricFamily("podcap_stored_packets", "Packets stored per pod (retention included)",
                                      labels=labels)
        nbytes = CounterMetricFamily("podcap_stored_bytes", "Bytes written per pod (retention included)",
                                     labels=labels)
        drops = CounterMetricFamily("podcap_dropped_packets", "Packets not stored per pod, by kind: kernel, "
                                    "interface, and every cause of podcap's own", labels=[*labels, "kind"])
        unaccounted = GaugeMetricFamily("podcap_unaccounted_packets", "Received by the kernel, neither stored nor "
                                        "counted as dropped (in flight while a capture runs; 0 once it ended)",
                                        labels=labels)
        backlog = GaugeMetricFamily("podcap_archive_backlog_bytes", "With object storage: bytes of every closed "
                                    "segment waiting on the collector's disk for the bucket", labels=["capture"])
        oldest = GaugeMetricFamily("podcap_archive_oldest_seconds", "With object storage: seconds since the oldest "
                                   "waiting segment closed", labels=["capture"])
        lifecycle = self.captures.lifecycle
        deleted = CounterMetricFamily("podcap_captures_deleted", "Captures deleted since the collector started, by "
                                      "cause: user (podcap delete), keep_ended, disk_budget", labels=["cause"])
        deleted_bytes = CounterMetricFamily("podcap_deleted_bytes", "Bytes of the captures deleted, by cause",
                                            labels=["cause"])
        for cause, n in lifecycle.deleted_count.items():
            deleted.add_metric([cause], n)
            deleted_bytes.add_metric([cause], lifecycle.deleted_bytes.get(cause, 0))
        data = GaugeMetricFamily("podcap_data_dir_bytes", "Bytes the captures hold in the data dir (what "
                                 "--max-data-bytes bounds)")
        data.add_metric([], lifecycle.data_bytes())
        budget = GaugeMetricFamily("podcap_data_dir_budget_bytes", "--max-data-bytes (0: none)")
        budget.add_metric([], lifecycle.policy.max_data_bytes)
        over = GaugeMetricFamily("podcap_data_dir_nothing_to_delete", "1 while the data dir is over its budget and "
                                 "every capture holding data there is running")
        over.add_metric([], 1 if lifecycle.nothing_left else 0)
        downloaded = CounterMetricFamily("podcap_download_bytes", "Pcap bytes sent by downloads (Download RPC)")
        downloaded.add_metric([], self.captures.downloaded_bytes)
        yield from (deleted, deleted_bytes, data, budget, over, downloaded)
        n_active = 0
        for cap in self.captures.all():
            st = self.captures.status(cap)
            n_active += cap.live
            if st.archive_backlog_bytes:
                backlog.add_metric([cap.id], st.archive_backlog_bytes)
                oldest.add_metric([cap.id], st.archive_oldest_seconds)
            for p in st.pods:
                key = [cap.id, p.pod.namespace, p.pod.name]
                packets.add_metric(key, p.packets + p.retired_packets)
                nbytes.add_metric(key, p.bytes + p.retired_bytes)
                drops.add_metric([*key, "kernel"], p.kernel.dropped)
                drops.add_metric([*key, "interface"], p.kernel.if_dropped)
                for cause in CAUSES:
                    drops.add_metric([*key, cause], getattr(p.drops, cause))
                unaccounted.add_metric(key, p.unaccounted)
        active.add_metric([], n_active)
        agents.add_metric([], len(self.registry.agents()))
        paused.add_metric([], 1 if self.captures.paused else 0)
        yield from (active, agents, paused, packets, nbytes, drops, unaccounted, backlog, oldest)


def serve_metrics(address: str, captures: CaptureManager, registry: AgentRegistry,
                  recorders: RecorderManager | None = None) -> int:
    """Serve /metrics on ``address`` (HOST:PORT); return the port."""
    REGISTRY.register(CaptureMetrics(captures, registry))
    if recorders is not None:
        REGISTRY.register(RecorderMetrics(recorders))
    captures.commit_seconds = COMMIT_SECONDS.observe
    host, _, port = address.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "0.0.0.0")
    return int(server.server_address[1])
