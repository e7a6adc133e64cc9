"""``podcap-agent``: command line and process lifecycle of the node agent (SIGTERM/SIGINT = graceful stop)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from podcap.agent.capture import chunkbuf
from podcap.agent.capture.settings import EngineSettings
from podcap.agent.pods.netns_source import NetnsPodSource
from podcap.agent.pods.source import PodSource
from podcap.agent.session import AgentConfig, AgentSession
from podcap.malloc import tune_for_bulk_buffers
from podcap.names import InvalidNameError, NodeName, check_node_name
from podcap.tls import TlsFiles

log = logging.getLogger("podcap.agent")


def make_source(kind: str, node: NodeName, args: argparse.Namespace) -> PodSource:
    if kind == "netns":
        return NetnsPodSource(node, args.netns_dir)
    if kind == "cri":
        from podcap.agent.pods.cri_source import CriPodSource

        return CriPodSource(node, endpoint=args.cri_endpoint or None, proc_root=args.proc_root,
                            host_root=args.host_root)
    if kind == "proc":
        from podcap.agent.pods.proc_source import ProcPodSource

        return ProcPodSource(node, proc_root=args.proc_root)
    raise SystemExit(f"podcap-agent: unknown pod source {kind!r} (choose netns, cri or proc)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="podcap-agent", description="podcap node agent: captures pods on this node.")
    p.add_argument("--collector", default=os.environ.get("PODCAP_COLLECTOR", "127.0.0.1:7420"),
                   help="collector address HOST:PORT (default $PODCAP_COLLECTOR or 127.0.0.1:7420)")
    p.add_argument("--node", default=os.environ.get("NODE_NAME", ""),
                   help="this node's name (default $NODE_NAME, set from spec.nodeName by the downward API)")
    p.add_argument("--pod-source", default="cri", choices=["cri", "proc", "netns"],
                   help="where pods come from: the container runtime (cri), /proc/*/cgroup (proc) or named "
                   "network namespaces <namespace>.<pod> (netns)")
    p.add_argument("--netns-dir", default="/run/netns", help="directory of named network namespaces (netns)")
    p.add_argument("--cri-endpoint", default="", help="CRI socket, e.g. unix:///run/containerd/containerd.sock "
                   "(default: auto-detect)")
    p.add_argument("--proc-root", default="/proc", help="the host's /proc as seen by the agent (e.g. /host/proc)")
    p.add_argument("--host-root", default="", help="where the host's filesystem is mounted in the agent "
                   "(e.g. /host), to reach netns paths the runtime reports")
    p.add_argument("--ring-budget", type=int, default=128 << 20,
                   help="kernel ring memory in bytes shared by a capture's pods when it sets no buffer size "
                   "(whole 256 KiB blocks per pod, 2 to 128, at least 2 even past the budget; with only 2 the kernel "
                   "may drop a packet now and then although the agent keeps up, as it does for tcpdump)")
    p.add_argument("--upload-buffer", type=int, default=64 << 20,
                   help="bytes of unacknowledged captured data held in memory (then --spool-dir)")
    p.add_argument("--spool-dir", default="",
                   help="directory for unacknowledged chunks once --upload-buffer is full (default: memory only)")
    p.add_argument("--spool-bytes", type=int, default=1 << 30,
                   help="cap on --spool-dir; beyond it new chunks are dropped and counted (default 1 GiB)")
    p.add_argument("--tls-ca", default=os.environ.get("PODCAP_TLS_CA", ""),
                   help="CA of the collector's certificate (PEM)")
    p.add_argument("--tls-cert", default=os.environ.get("PODCAP_TLS_CERT", ""),
                   help="this agent's client certificate (PEM, CN podcap-agent)")
    p.add_argument("--tls-key", default=os.environ.get("PODCAP_TLS_KEY", ""), help="its private key (PEM)")
    p.add_argument("--insecure", action="store_true",
                   help="talk to the collector in plaintext (local testing only; logs a warning)")
    p.add_argument("--metrics-listen", default="", help="serve Prometheus /metrics on HOST:PORT (e.g. :9421)")
    p.add_argument("--health-listen", default="",
                   help="serve gRPC health checking on HOST:PORT (e.g. 0.0.0.0:9422): SERVING while connected")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_for_bulk_buffers()
    if not args.node:
        sys.exit("podcap-agent: --node is required (or set NODE_NAME)")
    try:
        node = check_node_name(args.node)
    except InvalidNameError as e:
        sys.exit(f"podcap-agent: {e}")
    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key:
        if not (args.tls_ca and args.tls_cert and args.tls_key):
            sys.exit("podcap-agent: mutual TLS needs all of --tls-ca, --tls-cert and --tls-key")
        tls = TlsFiles(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    elif not args.insecure:
        sys.exit("podcap-agent: no TLS configured: pass --tls-ca/--tls-cert/--tls-key, or --insecure")
    else:
        log.warning("--insecure: plaintext connection to the collector; captured packets cross the network "
                    "unencrypted")
    if chunkbuf.available():
        log.info("per-packet path: podcap_chunk_handler (podcap's C library)")
    else:
        log.warning("per-packet path: libpcap's pcap_dump (podcap's C library is not built: slower)")
    source = make_source(args.pod_source, node, args)
    cfg = AgentConfig(
        collector=args.collector, node=node, upload_buffer_bytes=args.upload_buffer,
        spool_dir=args.spool_dir or None, spool_disk_bytes=args.spool_bytes, tls=tls,
        engine=EngineSettings(ring_budget_bytes=args.ring_budget),
    )
    # Handlers before anything starts: a SIGTERM during start-up still ends the agent cleanly.
    stopping = threading.Event()
    agents: list[AgentSession] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if not stopping.is_set():
            stopping.set()
            log.info("signal %d: stopping", signum)
            for a in agents:
                threading.Thread(target=a.shutdown, name="shutdown").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent = AgentSession(cfg, source)
    agents.append(agent)
    if args.metrics_listen:
        from podcap.agent.metrics import serve_metrics

        log.info("metrics on port %d", serve_metrics(args.metrics_listen, agent))
    if args.health_listen:
        from grpc_health.v1 import health_pb2

        from podcap.agent.metrics import serve_health

        _health_server, health = serve_health(args.health_listen)
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        agent.on_connected = lambda up: health.set("", serving if up else not_serving)
    if stopping.is_set():  # a signal arrived while starting up
        return
    log.info("podcap-agent on node %s, pod source %s, collector %s", node, source.name, args.collector)
    agent.run()


if __name__ == "__main__":
    main()
