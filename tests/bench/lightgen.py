"""Light traffic generator for the many-pods phase; runs as its own process (pinned by the caller).

usage: python lightgen.py --pps N --duration S NETNS_PATH...

For each pod namespace it enters the namespace (``setns`` on this thread), opens an AF_PACKET socket bound to the
pod's ``eth0`` and returns to its own namespace; then it sends one 128-byte UDP frame per pod every ``1/pps``
seconds (in 10 ms bursts) for ``duration`` seconds. The destination MAC is a locally administered address that is
no host's, so the receiving host veth discards each frame right after the packet taps. Prints ``SENT <n>``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import time

CLONE_NEWNET = 0x40000000
FRAME = (
    bytes.fromhex("029900000002") + bytes.fromhex("020000000001") + b"\x08\x00"
    + bytes.fromhex("4500007200004000401100000a6300010a630002")
    + bytes.fromhex("0fa0000900620000") + b"A" * 86
)
assert len(FRAME) == 128


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pps", type=float, required=True, help="frames per second per pod")
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("netns", nargs="+")
    a = ap.parse_args()
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    socks = []
    try:
        for path in a.netns:
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {path}")
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                s.bind(("eth0", 0))
                socks.append(s)
            finally:
                os.close(fd)
                libc.setns(home, CLONE_NEWNET)
    finally:
        os.close(home)
    print("READY", flush=True)
    sent = 0
    tick = 0.01
    per_tick = a.pps * tick
    acc = 0.0
    t0 = time.monotonic()
    k_tick = 0
    while time.monotonic() - t0 < a.duration:
        acc += per_tick
        k = int(acc)
        acc -= k
        for _ in range(k):
            for s in socks:
                try:
                    s.send(FRAME)
                    sent += 1
                except OSError:
                    pass
        k_tick += 1
        time.sleep(max(0.0, t0 + k_tick * tick - time.monotonic()))
    print("SENT", sent, flush=True)


if __name__ == "__main__":
    main()
