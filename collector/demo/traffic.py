"""Light, bounded demo traffic between demo pods: an HTTP server, and a client doing HTTP GETs and pings.

Run inside a pod's namespace: ``python -m podcap.collector.demo.traffic serve PORT SECONDS`` or
``... client URL PEER_IP SECONDS``. Every loop is bounded in time; nothing leaves the demo's bridge.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
import urllib.request


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        body = b"hello from a podcap demo pod\n" * 8
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(port: int, seconds: float) -> None:
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), _Quiet)
    threading.Timer(seconds, server.shutdown).start()
    server.serve_forever()


def client(url: str, peer: str, seconds: float, interval: float = 0.2) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
        except OSError:
            pass
        try:
            subprocess.run(["ping", "-c", "1", "-W", "1", peer], capture_output=True)
        except FileNotFoundError:
            pass  # no ping installed: HTTP only
        time.sleep(interval)


def main(argv: list[str]) -> None:
    if argv[:1] == ["serve"]:
        serve(int(argv[1]), float(argv[2]))
    elif argv[:1] == ["client"]:
        client(argv[1], argv[2], float(argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
