"""``podcap-agent``: command line and process lifecycle of the node agent (SIGTERM/SIGINT = graceful stop)."""

from __future__ import annotations

import logging
import os
import sys
import threading

import click

from podcap import daemon
from podcap.agent.capture import chunkbuf
from podcap.agent.capture.settings import EngineSettings
from podcap.agent.pods.netns_source import NetnsPodSource
from podcap.agent.pods.source import PodSource
from podcap.agent.session import AgentConfig, AgentSession
from podcap.names import InvalidNameError, NodeName, check_node_name

log = logging.getLogger("podcap.agent")


def make_source(kind: str, node: NodeName, *, netns_dir: str, cri_endpoint: str, proc_root: str,
                host_root: str) -> PodSource:
    if kind == "netns":
        return NetnsPodSource(node, netns_dir)
    if kind == "cri":
        from podcap.agent.pods.cri_source import CriPodSource

        return CriPodSource(node, endpoint=cri_endpoint or None, proc_root=proc_root, host_root=host_root)
    from podcap.agent.pods.proc_source import ProcPodSource

    return ProcPodSource(node, proc_root=proc_root)


def usable_ring_dir(path: str) -> str | None:
    """The flight recorder's directory if the agent can use it (created if missing); None, with a warning, if not:
    the agent still captures, and recordings on this node fail with the reason."""
    if not path:
        return None
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as e:
        log.warning("flight recorder disabled: cannot use --ring-dir %s: %s", path, e)
        return None
    return path


@click.command(name="podcap-agent", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--collector", envvar="PODCAP_COLLECTOR", default="127.0.0.1:7420", show_default=True,
              show_envvar=True, help="collector address HOST:PORT")
@click.option("--node", envvar="NODE_NAME", default="", show_envvar=True,
              help="this node's name (set from spec.nodeName by the downward API)")
@click.option("--pod-source", default="cri", show_default=True, type=click.Choice(["cri", "proc", "netns"]),
              help="where pods come from: the container runtime (cri), /proc/*/cgroup (proc) or named network "
              "namespaces <namespace>.<pod> (netns)")
@click.option("--netns-dir", default="/run/netns", show_default=True,
              help="directory of named network namespaces (netns)")
@click.option("--cri-endpoint", default="", help="CRI socket, e.g. unix:///run/containerd/containerd.sock "
              "(default: auto-detect)")
@click.option("--proc-root", default="/proc", show_default=True,
              help="the host's /proc as seen by the agent (e.g. /host/proc)")
@click.option("--host-root", default="", help="where the host's filesystem is mounted in the agent (e.g. /host), "
              "to reach netns paths the runtime reports")
@click.option("--ring-budget", type=int, default=128 << 20, show_default=True,
              help="kernel ring memory in bytes shared by a capture's pods when it sets no buffer size (whole 256 "
              "KiB blocks per pod, 2 to 128, at least 2 even past the budget; with only 2 the kernel may drop a "
              "packet now and then although the agent keeps up, as it does for tcpdump)")
@click.option("--upload-buffer", type=int, default=64 << 20, show_default=True,
              help="bytes of unacknowledged captured data held in memory (then --spool-dir)")
@click.option("--spool-dir", default="",
              help="directory for unacknowledged chunks once --upload-buffer is full (default: memory only)")
@click.option("--spool-bytes", type=int, default=1 << 30, show_default=True,
              help="cap on --spool-dir; beyond it new chunks are dropped and counted")
@click.option("--ring-dir", default="/var/lib/podcap/rings", show_default=True,
              help="directory of the flight recorder's rings (a hostPath: rings outlive the agent's pod); '' keeps "
              "no rings (recordings on this node fail)")
@click.option("--ring-disk-bytes", type=int, default=4 << 30, show_default=True,
              help="bytes of packets all flight-recorder rings on this node may hold together (oldest data goes "
              "first)")
@click.option("--ring-min-free", type=int, default=None,
              help="bytes the --ring-dir filesystem must keep free; rings shrink (oldest first) to keep it "
              "[default: 5% of the filesystem, at most 2 GiB]")
@daemon.tls_options(ca="CA of the collector's certificate (PEM)",
                    cert="this agent's client certificate (PEM, CN podcap-agent)", key="its private key (PEM)",
                    insecure="talk to the collector in plaintext (local testing only; logs a warning)")
@click.option("--health-listen", default="",
              help="serve gRPC health checking on HOST:PORT (e.g. 0.0.0.0:9422): SERVING while connected")
@daemon.common_options(metrics_example=":9421")
def main(collector: str, node: str, pod_source: str, netns_dir: str, cri_endpoint: str, proc_root: str,
         host_root: str, ring_budget: int, upload_buffer: int, spool_dir: str, spool_bytes: int, ring_dir: str,
         ring_disk_bytes: int, ring_min_free: int | None, tls_ca: str,
         tls_cert: str, tls_key: str, insecure: bool, health_listen: str, metrics_listen: str,
         log_level: str) -> None:
    """podcap node agent: captures pods on this node."""
    daemon.start(log_level)
    if not node:
        sys.exit("podcap-agent: --node is required (or set NODE_NAME)")
    try:
        node_name = check_node_name(node)
    except InvalidNameError as e:
        sys.exit(f"podcap-agent: {e}")
    tls = daemon.tls_files("podcap-agent", ca=tls_ca, cert=tls_cert, key=tls_key, insecure=insecure,
                           plaintext_warning="plaintext connection to the collector; captured packets cross the "
                           "network unencrypted")
    if chunkbuf.available():
        log.info("per-packet path: podcap_chunk_handler (podcap's C library)")
    else:
        log.warning("per-packet path: libpcap's pcap_dump (podcap's C library is not built: slower)")
    source = make_source(pod_source, node_name, netns_dir=netns_dir, cri_endpoint=cri_endpoint,
                         proc_root=proc_root, host_root=host_root)
    cfg = AgentConfig(
        collector=collector, node=node_name, upload_buffer_bytes=upload_buffer, spool_dir=spool_dir or None,
        spool_disk_bytes=spool_bytes, tls=tls, engine=EngineSettings(ring_budget_bytes=ring_budget),
        ring_dir=usable_ring_dir(ring_dir), ring_budget_bytes=ring_disk_bytes, ring_min_free_bytes=ring_min_free,
    )
    # Handlers before anything starts: a SIGTERM during start-up still ends the agent cleanly.
    stopping = threading.Event()
    agents: list[AgentSession] = []
    shutdowns: list[threading.Thread] = []

    def on_signal(signum: int) -> None:
        if not stopping.is_set():
            stopping.set()
            log.info("signal %d: stopping", signum)
            for a in agents:
                t = threading.Thread(target=a.shutdown, name="shutdown")
                shutdowns.append(t)
                t.start()

    daemon.on_stop_signals(on_signal)
    agent = AgentSession(cfg, source)
    agents.append(agent)
    if metrics_listen:
        from podcap.agent.metrics import serve_metrics

        log.info("metrics on port %d", serve_metrics(metrics_listen, agent))
    if health_listen:
        from grpc_health.v1 import health_pb2

        from podcap.agent.metrics import serve_health

        _health_server, health = serve_health(health_listen)
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        agent.on_connected = lambda up: health.set("", serving if up else not_serving)
    if stopping.is_set():  # a signal arrived while starting up
        return
    log.info("podcap-agent on node %s, pod source %s, collector %s", node_name, source.name, collector)
    agent.run()
    # The session loop ends as soon as a stop is asked for; the graceful stop (final chunks and counters, the
    # collector's last acknowledgements) finishes before the interpreter does, which would refuse its thread pools
    # new work half-way.
    for t in shutdowns:
        t.join()


if __name__ == "__main__":
    main()
