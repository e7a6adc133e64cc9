"""Fixtures and helpers shared by integration test modules: an agent process for a module's ``node`` (a DemoNode),
started against the ``collector`` fixture of tests/conftest.py, and reading a capture's status through the CLI.

A module provides ``node`` (and may override ``agent_args``); ``netns_agent`` runs ``podcap-agent --pod-source
netns`` for it and returns once the collector knows the node's pods (a capture of them can start), so a test never
races the agent's registration.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from podcap.collector.demo.node import DemoNode
from tests.conftest import Proc, podcap, start_proc, tool

Status = dict[str, Any]


def capture_id(r: subprocess.CompletedProcess[str]) -> str:
    """The id ``podcap start`` prints last."""
    return r.stdout.strip().splitlines()[-1]


def status(address: str, cid: str) -> Status:
    return dict(json.loads(podcap(address, "status", cid, "-o", "json").stdout))


def wait_status(address: str, cid: str, ok: Callable[[Status], bool], *, timeout: float, what: str) -> Status:
    """Poll ``podcap status`` until ``ok``; fails with the last status after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(address, cid)
        if ok(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"capture {cid}: not {what} after {timeout} s: {json.dumps(st)[:3000]}")
        time.sleep(0.2)


def capturing(n: int) -> Callable[[Status], bool]:
    return lambda st: sum(p["state"] == "capturing" for p in st["pods"]) >= n


def done(st: Status) -> bool:
    return bool(st["state"] == "done")


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
        deadline = time.monotonic() + 20
        while True:  # wait until the collector knows the node's pods
            r = podcap(address, "start", "-n", node.namespace, "--duration", "1", "--max-packets", "1", check=False)
            if r.returncode == 0:
                podcap(address, "stop", capture_id(r))
                break
            if time.monotonic() > deadline or p.proc.poll() is not None:
                raise AssertionError("agent never registered its pods:\n" + p.log())
            time.sleep(0.2)
    except BaseException:
        p.stop()
        raise
    yield p
    assert p.stop() == 0, "agent did not stop cleanly on SIGTERM:\n" + p.log()[-5000:]
