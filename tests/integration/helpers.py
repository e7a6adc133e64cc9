"""What the integration tests share besides fixtures: the UDP sender and its port, and waiting for and reading
captures as a user would (through the podcap CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import time

from podcap.collector.demo.node import DemoNode
from podcap.formats.pcap import LINKTYPE_ETHERNET, read_file
from tests.conftest import podcap

SENDER = os.path.join(os.path.dirname(__file__), "udp_send.py")
PORT = 9999


def warm_up(node: DemoNode) -> None:
    """Resolve ARP before counting packets (the kernel queues only a few datagrams per unresolved neighbour)."""
    sender = node.pod("sender")
    for rx in node.pods[1:]:
        node.exec(sender, ["ping", "-c", "1", "-W", "2", rx.ip])


def capture_id(r: subprocess.CompletedProcess[str]) -> str:
    return r.stdout.strip().splitlines()[-1]


def wait_state(address: str, cid: str, states: set[str], timeout: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        st = json.loads(podcap(address, "status", cid, "-o", "json").stdout)
        if st["state"] in states or time.monotonic() > deadline:
            return st
        time.sleep(0.2)


def wait_capturing(address: str, cid: str, n: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        st = json.loads(podcap(address, "status", cid, "-o", "json").stdout)
        if sum(p["state"] == "capturing" for p in st["pods"]) == n:
            return
        time.sleep(0.1)
    raise AssertionError(f"pods not capturing: {st}")


def udp_payloads(path: str) -> list[tuple[int, int, int, bytes, bytes]]:
    """(dst index, seq, wire length, src ip, dst ip) of every PODCAPSEQ datagram in a pcap file."""
    fmt, recs = read_file(path)
    assert fmt.linktype == LINKTYPE_ETHERNET
    out = []
    for r in recs:
        assert r.caplen == len(r.data) <= r.wirelen
        frame = r.data
        if frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        ihl = (frame[14] & 0x0F) * 4
        udp = 14 + ihl
        body = frame[udp + 8:]
        if not body.startswith(b"PODCAPSEQ"):
            continue
        out.append((int.from_bytes(body[9:13], "big"), int.from_bytes(body[13:17], "big"), r.wirelen,
                    frame[26:30], frame[30:34]))
    return out
