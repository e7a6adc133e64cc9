"""HTTP between containerd pods: the web server and client loop commands, and reading the stored TCP segments back
to check an exchange (what the containerd end-to-end and deployed-pods tests share)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from podcap.formats.pcap import LINKTYPE_ETHERNET, read_file

HTTP_PORT = 8080
# A web server any uid can run: busybox httpd on an unprivileged port, serving a file under the world-writable /tmp.
WEB = ("/bin/sh", "-c", f"mkdir -p /tmp/www && echo podcap-e2e > /tmp/www/index.html && "
       f"exec httpd -f -p {HTTP_PORT} -h /tmp/www")


def wget_loop(ip: str, times: int = 600, pause: str = "0.1") -> tuple[str, ...]:
    """A client container's command: a bounded loop of HTTP GETs against ``ip`` (a minute or so; every test removes
    its pods long before). No ``-T``: Debian's static busybox 1.35 wget crashes (SIGSEGV) when given a timeout."""
    return ("/bin/sh", "-c", f"i=0; while [ $i -lt {times} ]; do wget -q -O /dev/null "
            f"http://{ip}:{HTTP_PORT}/; i=$((i+1)); sleep {pause}; done")


@dataclass(frozen=True)
class Segment:
    """One IPv4 TCP segment of a stored frame."""

    ts_ns: int
    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes


def ip_text(b: bytes) -> str:
    return ".".join(map(str, b))


def ipv4_frames(path: str, *, unicast_only: bool = False) -> list[tuple[int, bytes]]:
    """(timestamp, IPv4 packet) of every IPv4 frame in an Ethernet pcap file."""
    fmt, recs = read_file(path)
    assert fmt.linktype == LINKTYPE_ETHERNET
    out = []
    for r in recs:
        assert r.caplen == len(r.data) <= r.wirelen
        if unicast_only and r.data[0] & 1:
            continue  # broadcast or multicast: every port of the bridge sees those
        if r.data[12:14] == b"\x08\x00":
            total = int.from_bytes(r.data[16:18], "big")
            out.append((r.ts_ns, r.data[14 : 14 + total]))  # without Ethernet padding
    return out


def tcp_segments(path: str) -> list[Segment]:
    out = []
    for ts, ip in ipv4_frames(path):
        if ip[9] != 6:
            continue
        t = (ip[0] & 0x0F) * 4
        sport, dport = struct.unpack_from("!HH", ip, t)
        offset = (ip[t + 12] >> 4) * 4
        out.append(Segment(ts, ip_text(ip[12:16]), ip_text(ip[16:20]), sport, dport, ip[t + offset :]))
    return out


def http_gets(segments: Sequence[Segment], client: str, web: str) -> list[Segment]:
    return [s for s in segments
            if (s.src, s.dst, s.dport) == (client, web, HTTP_PORT) and s.payload.startswith(b"GET / HTTP/1.")]


def http_answers(segments: Sequence[Segment], web: str, client: str) -> list[Segment]:
    return [s for s in segments
            if (s.src, s.dst, s.sport) == (web, client, HTTP_PORT) and s.payload.startswith(b"HTTP/1.")]


def assert_http_exchange(path: str, client: str, web: str) -> list[Segment]:
    """The file holds GETs from ``client`` to ``web``:8080 and their answers; returns the GETs."""
    segments = tcp_segments(path)
    gets = http_gets(segments, client, web)
    assert gets, f"{path}: no HTTP GET {client} -> {web}:{HTTP_PORT} among {len(segments)} TCP segments"
    assert http_answers(segments, web, client), f"{path}: no HTTP answer {web}:{HTTP_PORT} -> {client}"
    return gets
