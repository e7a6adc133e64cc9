"""``podcap-collector``: wiring and process lifecycle of the collector.

One gRPC server on one port serves both services: ``Ingest`` for agents and ``Control`` for the CLI. SIGTERM or
SIGINT stops it cleanly: the server stops accepting, sessions end, captures' counters are persisted (running
captures resume when the collector starts again on the same data dir).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from types import FrameType

import grpc

from podcap.collector.agents import AgentRegistry
from podcap.collector.captures import CaptureManager
from podcap.collector.control import ControlServicer
from podcap.collector.ingest import IngestServicer
from podcap.collector.store import CaptureStore
from podcap.v1 import control_pb2_grpc, ingest_pb2_grpc

log = logging.getLogger("podcap.collector")

MAX_MESSAGE_BYTES = 16 << 20  # chunks are cut near 4 MiB; one dispatch may add a little more


@dataclass
class Collector:
    """A running collector: its gRPC server and the objects behind it."""

    server: grpc.Server
    port: int
    registry: AgentRegistry
    captures: CaptureManager
    store: CaptureStore

    def stop(self, grace: float = 5.0) -> None:
        self.registry.close_all()
        self.server.stop(grace).wait()
        self.captures.close()
        self.store.close()


def start_collector(listen: str, data_dir: str, *, max_workers: int = 64) -> Collector:
    """Open the data dir and serve on ``listen`` (HOST:PORT; port 0 picks a free port)."""
    os.makedirs(os.path.join(data_dir, "captures"), mode=0o750, exist_ok=True)
    store = CaptureStore(os.path.join(data_dir, "podcap.db"))
    registry = AgentRegistry()
    captures = CaptureManager(data_dir, registry, store)
    # Every agent session holds a worker thread for its lifetime: size the pool for nodes + CLI calls.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)],
        maximum_concurrent_rpcs=max_workers,
    )
    ingest_pb2_grpc.add_IngestServicer_to_server(IngestServicer(registry, captures), server)
    control_pb2_grpc.add_ControlServicer_to_server(ControlServicer(captures), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        captures.close()
        store.close()
        raise OSError(f"cannot listen on {listen}")
    server.start()
    return Collector(server, port, registry, captures, store)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="podcap-collector", description="podcap collector: stores pod captures.")
    p.add_argument("--listen", default="0.0.0.0:7420", help="HOST:PORT for agents and the CLI (default 0.0.0.0:7420)")
    p.add_argument("--data-dir", default="/var/lib/podcap", help="where pcap files and the database live")
    p.add_argument("--max-workers", type=int, default=256, help="gRPC worker threads (one per connected agent)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        collector = start_collector(args.listen, args.data_dir, max_workers=args.max_workers)
    except OSError as e:
        sys.exit(f"podcap-collector: {e}")
    log.info("podcap-collector listening on %s (port %d), data dir %s", args.listen, collector.port, args.data_dir)
    done = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    collector.stop()
    log.info("stopped")


if __name__ == "__main__":
    main()
