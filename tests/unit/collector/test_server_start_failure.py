"""``podcap-collector`` failing at start-up ends with its one line and status 1, also when a thread it started is
still stuck (a watch inside a connect to an API server that does not answer): the process does not wait for it,
and does not finalize it (Debian's Python 3.11 aborted doing that inside OpenSSL: status 139)."""

from __future__ import annotations

import subprocess
import sys
import time

PROGRAM = """
import threading, time
from podcap.collector.server import _fail
threading.Thread(target=time.sleep, args=(60,)).start()  # not a daemon: an exit would wait for it
_fail("cannot reach the Kubernetes API server at https://10.0.0.1:443", None)
"""


def test_a_start_up_failure_with_a_stuck_thread_is_one_line_and_status_1() -> None:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=30)
    assert time.monotonic() - t0 < 20
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "podcap-collector: cannot reach the Kubernetes API server at https://10.0.0.1:443")


def test_an_s3_endpoint_that_is_not_a_url_is_one_line(tmp_path: str) -> None:
    """``--s3-endpoint 127.0.0.1:58515`` (no http://) was a traceback from botocore (issue 26, item 6)."""
    import os

    exe = os.path.join(os.path.dirname(sys.executable), "podcap-collector")
    r = subprocess.run([exe, "--insecure", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(tmp_path, "d"),
                        "--storage", "s3://bucket/x", "--s3-endpoint", "127.0.0.1:58515"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("podcap-collector: --s3-endpoint '127.0.0.1:58515' is not a URL: "
                                                 "give http://127.0.0.1:58515 or https://…")


def test_reconciling_podcaptures_without_the_kubernetes_api_is_one_line(tmp_path: str) -> None:
    """``--reconcile-podcaptures`` needs an API server: without one (the demo, --no-kubernetes) it is refused."""
    import os

    exe = os.path.join(os.path.dirname(sys.executable), "podcap-collector")
    r = subprocess.run([exe, "--insecure", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(tmp_path, "d"),
                        "--no-kubernetes", "--reconcile-podcaptures"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "podcap-collector: --reconcile-podcaptures needs the Kubernetes API (--kubeconfig or in-cluster)")


def test_an_agent_port_without_tls_is_one_line(tmp_path: str) -> None:
    """``--insecure --agent-listen`` was ignored: the collector served agents on --listen only, and an agent given
    the --agent-listen port retried a refused connection for ever."""
    import os

    exe = os.path.join(os.path.dirname(sys.executable), "podcap-collector")
    r = subprocess.run([exe, "--insecure", "--listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0",
                        "--data-dir", os.path.join(tmp_path, "d"), "--no-kubernetes"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "podcap-collector: --agent-listen 127.0.0.1:0 needs TLS: with --insecure agents connect to --listen "
        "127.0.0.1:0")
