"""``podcap demo``: the whole product on a throwaway node, through the code paths a user's CLI uses.

Builds a demo node (bridge + N network-namespace pods), starts a collector and an agent (``--pod-source netns``)
in this process on loopback, starts light HTTP and ping traffic, captures every pod of the demo namespace via the
gRPC control API for ``seconds``, downloads one pcap per pod into ``out`` and reports what the files hold (counted
by parsing them). Everything it created is removed at the end, also on Ctrl+C, SIGTERM or an error.

The files are ``<out>/<pod>.pcap``: the demo's namespace is made up afresh for every run (so that runs never
collide), and files under it would make a new directory each time. Each run replaces the files of the run before
(``<out>/.podcap-demo`` lists them), and touches nothing else in ``out``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from podcap.agent.pods import NetnsPodSource
from podcap.agent.session import AgentConfig, AgentSession
from podcap.collector.cli.capture.progress import wait_for_end
from podcap.collector.cli.client import CollectorClient
from podcap.collector.cli.get.download import download_files
from podcap.collector.demo.node import DemoNode
from podcap.collector.server import start_collector
from podcap.drops import total_of
from podcap.errors import PreconditionError
from podcap.formats.pcap import read_file
from podcap.names import NodeName
from podcap.v1 import control_pb2

HTTP_PORT = 8080


@dataclass(frozen=True)
class DemoRow:
    pod: str
    packets: int
    bytes: int
    kernel_drops: int
    podcap_drops: int
    file: str


@dataclass(frozen=True)
class DemoResult:
    capture_id: str
    state: str
    rows: list[DemoRow]



class DemoError(PreconditionError):
    """The demo cannot run here (not root, too few pods, its agent did not come up)."""


def _pod_names(n: int) -> list[str]:
    servers = max(1, n // 2)
    return [f"web-{i}" for i in range(servers)] + [f"client-{i}" for i in range(n - servers)]


RUN_LIST = ".podcap-demo"


def _forget_last_run(out: str) -> None:
    """Remove the files the previous demo wrote into ``out`` (and only those)."""
    try:
        with open(os.path.join(out, RUN_LIST)) as f:
            names = [n for n in f.read().split("\n") if n and os.path.basename(n) == n]
    except OSError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(out, name))
        except FileNotFoundError:
            pass


def _remember_run(out: str, paths: list[str]) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, RUN_LIST), "w") as f:
        f.write("".join(os.path.basename(p) + "\n" for p in paths))


def run_demo(pods: int, seconds: float, out: str, *, say: Callable[[str], None] = print) -> DemoResult:
    if os.geteuid() != 0:
        raise DemoError("podcap demo needs root (it creates network namespaces, veths and a bridge)")
    if pods < 2:
        raise DemoError("the demo needs at least 2 pods")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    node = DemoNode()
    collector = None
    agent = None
    agent_thread = None
    data_dir = tempfile.mkdtemp(prefix="podcap-demo-")
    try:
        say(f"creating demo node: bridge {node.bridge}, {pods} pods in namespace {node.namespace}")
        node.create(_pod_names(pods))
        collector = start_collector("127.0.0.1:0", data_dir)
        address = f"127.0.0.1:{collector.port}"
        agent = AgentSession(AgentConfig(collector=address, node=NodeName("demo-node")),
                             NetnsPodSource(NodeName("demo-node")))
        agent_thread = threading.Thread(target=agent.run, name="demo-agent", daemon=True)
        agent_thread.start()
        deadline = time.monotonic() + 10
        while sum(p.namespace == node.namespace for p in collector.registry.pods()) < pods:
            if time.monotonic() > deadline:
                raise DemoError("the demo agent did not register its pods within 10 s")
            time.sleep(0.05)
        servers = [p for p in node.pods if p.name.startswith("web-")]
        clients = [p for p in node.pods if p.name.startswith("client-")]
        for s in servers:
            node.spawn(s, [sys.executable, "-m", "podcap.collector.demo.traffic", "serve", str(HTTP_PORT),
                           str(seconds + 5)])
        with CollectorClient(address) as client:
            status = client.start(control_pb2.StartCaptureRequest(
                target=control_pb2.Target(namespace=node.namespace),
                limits=control_pb2.Limits(duration_seconds=max(1, int(round(seconds)))),
                note="podcap demo",
            ))
            say(f"capture {status.id}: {len(status.pods)} pods for {seconds:g}s; traffic: HTTP + ping")
            time.sleep(0.5)
            for i, c in enumerate(clients):
                peer = servers[i % len(servers)]
                node.spawn(c, [sys.executable, "-m", "podcap.collector.demo.traffic", "client",
                               f"http://{peer.ip}:{HTTP_PORT}/", peer.ip, str(max(0.5, seconds - 1.0))])
            final = wait_for_end(client, status.id, live=False)
            _forget_last_run(out)
            downloaded = download_files(client, status.id, [], lambda pod: os.path.join(out, f"{pod.name}.pcap"))
            _remember_run(out, [f.path for f in downloaded])
            files = {f"{f.pod.namespace}/{f.pod.name}": f.path for f in downloaded}
        rows = []
        for p in final.pods:
            key = f"{p.pod.namespace}/{p.pod.name}"
            path = files.get(key, "")
            packets = len(read_file(path)[1]) if path else 0
            rows.append(DemoRow(key, packets, os.path.getsize(path) if path else 0,
                                p.kernel.dropped + p.kernel.if_dropped, total_of(p.drops), path))
        state = control_pb2.CaptureState.Name(final.state).removeprefix("CAPTURE_STATE_").lower()
        return DemoResult(final.id, state, rows)
    finally:
        say("cleaning up the demo node")
        node.stop_processes()
        if agent is not None:
            agent.shutdown()
        if agent_thread is not None:
            agent_thread.join(timeout=10)
        if collector is not None:
            collector.stop()
        node.destroy()
        shutil.rmtree(data_dir, ignore_errors=True)
        signal.signal(signal.SIGTERM, old_term)
