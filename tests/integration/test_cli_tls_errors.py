"""When the CLI cannot reach a collector for a reason of transport security, it says which (issue 26, item 8):
a TLS collector dialled without a CA, a certificate that does not name the host dialled (and the names it has),
a CA that did not sign it, a CA given for a collector without TLS. Real collectors in this process over TLS on
loopback, the podcap CLI as a user runs it; no root needed."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from podcap.collector.server import Collector, start_collector
from podcap.tls import TlsFiles
from tests.conftest import tool
from tests.integration.pki import write_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    files, _, _ = write_pki(str(tmp_path_factory.mktemp("pki")), server_hosts=["localhost"])
    return files


@pytest.fixture
def tls_collector(tmp_path: str, pki: dict[str, str]) -> Iterator[Collector]:
    c = start_collector("127.0.0.1:0", os.path.join(tmp_path, "data"),
                        tls=TlsFiles(ca=pki["ca"], cert=pki["server"], key=pki["server-key"]))
    try:
        yield c
    finally:
        c.stop(0)


@pytest.fixture
def plain_collector(tmp_path: str) -> Iterator[Collector]:
    c = start_collector("127.0.0.1:0", os.path.join(tmp_path, "plain"))
    try:
        yield c
    finally:
        c.stop(0)


def podcap(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PODCAP_", "GRPC_"))}
    return subprocess.run([tool("podcap"), *args], capture_output=True, text=True, timeout=60, env=env)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr  # gRPC's own logging silenced
    return lines[0]


def test_the_cli_says_what_is_wrong_with_tls(tls_collector: Collector, plain_collector: Collector,
                                             pki: dict[str, str]) -> None:
    port = tls_collector.port
    assert podcap("--collector", f"localhost:{port}", "--tls-ca", pki["ca"], "list").returncode == 0
    line = one_line(podcap("--collector", f"localhost:{port}", "list"))
    assert f"the collector at localhost:{port} speaks TLS: give its CA certificate with --tls-ca" in line
    line = one_line(podcap("--collector", f"127.0.0.1:{port}", "--tls-ca", pki["ca"], "list"))
    assert "the collector's certificate does not name 127.0.0.1 (it names localhost)" in line
    line = one_line(podcap("--collector", f"localhost:{port}", "--tls-ca", pki["other-ca"], "list"))
    assert f"is not signed by the CA in {pki['other-ca']}" in line
    line = one_line(podcap("--collector", f"localhost:{plain_collector.port}", "--tls-ca", pki["ca"], "list"))
    assert "does not speak TLS (it runs with --insecure): leave out --tls-ca" in line
    for r in (podcap("--collector", f"localhost:{port}", "list"),):
        assert "is podcap-collector running?" not in r.stderr
