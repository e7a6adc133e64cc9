"""Fixtures and helpers shared by integration test modules: an agent process for a module's ``node`` (a DemoNode),
started against the ``collector`` fixture of tests/conftest.py, and reading a capture's status through the CLI.

``containerd_pods`` runs pods on the real containerd node of tests/node/fixtures.py and removes them after the
test. ``node`` is a node of four pods (``sender``, ``rx-0``..``rx-2``) unless a module overrides ``node_pods``;
``agent`` runs ``podcap-agent --pod-source netns`` for it (indirect parametrization: extra environment variables), as
does ``netns_agent`` (a module may override ``agent_args``); both return once the collector knows the node's pods (a
capture of them can start), so a test never races the agent's registration. ``cluster`` is a restartable
collector and agent over such a node (tests/integration/cluster.py); ``env`` an in-process capture manager over the
S3 testbed (tests/integration/tiered_env.py). Helpers that are not fixtures are in helpers.py (the UDP sender,
reading stored datagrams), cluster.py, tiered_env.py, http_pods.py (HTTP between containerd pods) and
podcapture_env.py (the API stand-in, kubectl and the PodCapture controller): test modules import those, never each
other.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from podcap.collector.demo.node import DemoNode
from tests.conftest import Proc, podcap, start_proc, tool
from tests.integration.cluster import Cluster
from tests.integration.helpers import capture_id, poll
from tests.integration.tiered_env import Env
from tests.node.harness import Pod, TestNode
from tests.s3.testbed import Testbed

Status = dict[str, Any]


def status(address: str, cid: str) -> Status:
    return dict(json.loads(podcap(address, "status", cid, "-o", "json").stdout))


def wait_status(address: str, cid: str, ok: Callable[[Status], bool], *, timeout: float, what: str) -> Status:
    """Poll ``podcap status`` until ``ok``; fails with the last status after ``timeout`` seconds."""
    return poll(lambda: status(address, cid), ok, timeout=timeout, what=f"capture {cid}: {what}")


def capturing(n: int) -> Callable[[Status], bool]:
    return lambda st: sum(p["state"] == "capturing" for p in st["pods"]) >= n


def done(st: Status) -> bool:
    return bool(st["state"] == "done")


def wait_registered(address: str, node: DemoNode, agent: Proc, *, timeout: float) -> None:
    """Wait until the collector knows ``node``'s pods (a capture of them starts), so a test never races the agent's
    registration."""
    deadline = time.monotonic() + timeout
    while True:
        r = podcap(address, "start", "-n", node.namespace, "--duration", "1", "--max-packets", "1", check=False)
        if r.returncode == 0:
            podcap(address, "stop", capture_id(r))
            return
        if time.monotonic() > deadline or agent.proc.poll() is not None:
            raise AssertionError("agent never registered its pods:\n" + agent.log())
        time.sleep(0.2)


@pytest.fixture
def agent_args() -> tuple[str, ...]:
    """Extra podcap-agent arguments for ``netns_agent`` (a module overrides this fixture to change them)."""
    return ()


@pytest.fixture
def netns_agent(collector: tuple[str, str, Proc], node: DemoNode, agent_args: tuple[str, ...],
                tmp_path: str) -> Iterator[Proc]:
    """A podcap-agent process for ``node`` (with ``agent_args``), its pods known to the collector; stopped with
    SIGTERM (cleanly)."""
    address = collector[0]
    p = start_proc([tool("podcap-agent"), "--insecure", "--collector", address, "--node", "node-" + node.tag,
                    "--pod-source", "netns", *agent_args], os.path.join(tmp_path, "agent.log"))
    try:
        wait_registered(address, node, p, timeout=20)
    except BaseException:
        p.stop()
        raise
    yield p
    assert p.stop() == 0, "agent did not stop cleanly on SIGTERM:\n" + p.log()[-5000:]


@pytest.fixture
def node_pods() -> list[str]:
    """The pods of ``node`` (a module overrides this fixture for other pods)."""
    return ["sender", "rx-0", "rx-1", "rx-2"]


@pytest.fixture
def node(node_pods: list[str]) -> Iterator[DemoNode]:
    n = DemoNode()
    n.create(node_pods)
    try:
        yield n
    finally:
        n.destroy()


@pytest.fixture
def agent(collector: tuple[str, str, Proc], node: DemoNode, tmp_path: str,
          request: pytest.FixtureRequest) -> Iterator[Proc]:
    """A podcap-agent process (indirect parametrization: extra environment variables)."""
    address = collector[0]
    p = start_proc([tool("podcap-agent"), "--insecure", "--collector", address, "--node", "node-" + node.tag,
                    "--pod-source", "netns"], os.path.join(tmp_path, "agent.log"), env=getattr(request, "param", None))
    wait_registered(address, node, p, timeout=15)
    try:
        yield p
    finally:
        assert p.stop() == 0, "agent did not stop cleanly on SIGTERM:\n" + p.log()


@pytest.fixture
def containerd_pods(containerd_node: TestNode) -> Iterator[Callable[..., Pod]]:
    """``run_pod`` on the real containerd node (tests/node) that removes every pod it made after the test, whatever
    its outcome."""
    made: list[Pod] = []

    def run(*args: Any, **kwargs: Any) -> Pod:
        pod = containerd_node.run_pod(*args, **kwargs)
        made.append(pod)
        return pod

    yield run
    for pod in made:
        if pod.sandbox_id in containerd_node.pods:
            containerd_node.remove_pod(pod)


@pytest.fixture
def cluster(tmp_path: str) -> Iterator[Cluster]:
    """A ``Cluster`` (collector and agent processes, started by the test) over a node of four pods."""
    node = DemoNode()
    node.create(["sender", "rx-0", "rx-1", "rx-2"])
    c = Cluster(str(tmp_path), node)
    try:
        yield c
    finally:
        c.close()
        node.destroy()


@pytest.fixture
def env(s3: Testbed, s3_prefix: str, tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """An in-process capture manager over local disk and the S3 testbed's bucket (tests/integration/tiered_env.py)."""
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    e = Env(s3, s3_prefix, str(tmp_path))
    yield e
    e.close()
