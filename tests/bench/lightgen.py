"""Light traffic generator for the many-pods phase; runs as its own process (pinned by the caller).

usage: python lightgen.py --pps N --duration S [--size BYTES] [--seq] NETNS_PATH...

For each pod namespace it enters the namespace (``setns`` on this thread), opens an AF_PACKET socket bound to the
pod's ``eth0`` and returns to its own namespace; then it sends one UDP frame of ``size`` bytes (128) per pod every
``1/pps`` seconds (in 10 ms bursts) for ``duration`` seconds. With ``--seq`` the 8 bytes after the UDP header are
a per-pod sequence number (big-endian, from 0), so a reader can tell exactly which frames a file holds.
The destination MAC is a locally administered address that is no host's, so the receiving host veth discards
each frame right after the packet taps. Prints ``SENT <n>``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import struct
import time

CLONE_NEWNET = 0x40000000
FRAME = (
    bytes.fromhex("029900000002") + bytes.fromhex("020000000001") + b"\x08\x00"
    + bytes.fromhex("4500007200004000401100000a6300010a630002")
    + bytes.fromhex("0fa0000900620000") + b"A" * 86
)
assert len(FRAME) == 128
UDP_PAYLOAD_AT = 42  # Ethernet 14 + IPv4 20 + UDP 8


def frame(size: int) -> bytes:
    """The 128-byte frame stretched or cut to ``size`` bytes, IPv4 and UDP lengths made to match."""
    if size < UDP_PAYLOAD_AT + 8:
        raise SystemExit(f"--size {size}: at least {UDP_PAYLOAD_AT + 8} bytes")
    f = bytearray(FRAME[:UDP_PAYLOAD_AT] + b"A" * (size - UDP_PAYLOAD_AT))
    struct.pack_into("!H", f, 16, size - 14)  # IPv4 total length
    struct.pack_into("!H", f, 38, size - 34)  # UDP length
    return bytes(f)


def seq_of(record: bytes) -> int:
    """The sequence number a ``--seq`` frame carries (readers of the capture files use it)."""
    return int.from_bytes(record[UDP_PAYLOAD_AT:UDP_PAYLOAD_AT + 8], "big")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pps", type=float, required=True, help="frames per second per pod")
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--size", type=int, default=len(FRAME), help="frame bytes (128)")
    ap.add_argument("--seq", action="store_true", help="number each pod's frames")
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
    base = frame(a.size)
    head, tail = base[:UDP_PAYLOAD_AT], base[UDP_PAYLOAD_AT + 8:]
    seqs = [0] * len(socks)
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
            for i, s in enumerate(socks):
                try:
                    if a.seq:
                        s.send(head + seqs[i].to_bytes(8, "big") + tail)
                        seqs[i] += 1
                    else:
                        s.send(base)
                    sent += 1
                except OSError:
                    pass
        k_tick += 1
        time.sleep(max(0.0, t0 + k_tick * tick - time.monotonic()))
    print("SENT", sent, flush=True)


if __name__ == "__main__":
    main()
