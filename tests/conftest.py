"""Shared fixtures: root detection, a throwaway netns node, a collector and an agent as real processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

pytest_plugins = ["tests.node.fixtures", "tests.s3.fixtures"]

VENV_BIN = os.path.dirname(sys.executable)
IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root: creates network namespaces, veths and opens packet sockets "
                                   "(CI runs as root)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool(name: str) -> str:
    path = os.path.join(VENV_BIN, name)
    return path if os.path.exists(path) else shutil.which(name) or name


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log_path: str

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, sig: int = 15, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_proc(argv: list[str], log_path: str, env: dict[str, str] | None = None) -> Proc:
    log = open(log_path, "wb")  # noqa: SIM115 (owned by the process for its lifetime)
    return Proc(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                 env=None if env is None else {**os.environ, **env}), log_path)


@pytest.fixture
def collector(tmp_path: os.PathLike[str]) -> Iterator[tuple[str, str, Proc]]:
    """A podcap-collector process: (address, data dir, process)."""
    yield from collector_process(str(tmp_path))


def collector_process(tmp_path: str, *args: str, env: dict[str, str] | None = None,
                      ) -> Iterator[tuple[str, str, Proc]]:
    """Run a podcap-collector (with extra ``args``) until the generator is closed: (address, data dir, process)."""
    port = free_port()
    data = os.path.join(tmp_path, "data")
    p = start_proc([tool("podcap-collector"), "--insecure", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
                    *args], os.path.join(tmp_path, "collector.log"), env)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or p.proc.poll() is not None:
                p.stop()
                raise RuntimeError("collector did not start:\n" + p.log()) from None
            time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}", data, p
    finally:
        p.stop()


def podcap(address: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the podcap CLI as a user would."""
    r = subprocess.run([tool("podcap"), "--collector", address, *args], capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"podcap {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r
