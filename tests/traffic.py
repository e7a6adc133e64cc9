"""Realistic traffic between netns pods, and the baseline it is judged against: shared by the traffic-shape tests
(tests/integration/test_traffic_shapes.py) and the benchmark's p10 (tests/bench/bulk.py).

Why these pieces, and why here: issue 21 came from ordinary traffic (an HTTP download between two pods, veths with
GSO/GRO handing libpcap frames of up to 64 KiB), which the synthetic floods of the other tests never produce. So
the shapes are made by real programs (``python3 -m http.server``, ``curl``, ``udp_mix.py``) on real veths, and a
capture is judged only by what its stored files hold, against a ``tcpdump -w`` on the same veth in the same run:

- ``payload_stats`` parses a pcap file (podcap's or tcpdump's) and sums the TCP and UDP payload bytes, IPv4 and
  IPv6, fragments included (IP payload past the transport header of a first fragment, all of a later one), and
  records the largest frame: a capture that lost or duplicated data shows in the payload, and frames larger than
  the MTU prove that GSO/GRO frames reached libpcap (else the shape was not exercised);
- ``Tcpdump`` runs the baseline with the ring podcap gets (``-B``), so the comparison is fair, and reports its own
  kernel drops (a baseline that dropped says nothing about duplicates);
- ``set_mtu`` and ``add_ipv6`` turn a node's pods into the MTU 9000 or dual-stack variants.

Nothing here starts a process inside a pod: callers run the argv lists these helpers build with their own
``ip netns exec`` (DemoNode.spawn in tests, Lab.spawn in the benchmark), which owns and cleans up the processes.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from podcap.collector.demo.node import DemoPod
from podcap.formats.pcap import FILE_HEADER_LEN, iter_file_records, parse_file_header

HTTP_PORT = 8000
UDP_PORT = 9100
ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
TCP, UDP, IPV6_FRAGMENT = 6, 17, 44
UDP_MIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration", "udp_mix.py")

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")


@dataclass
class PayloadStats:
    """What a pcap file holds, summed over its records."""

    frames: int = 0
    wire_bytes: int = 0
    tcp_payload: int = 0
    udp_payload: int = 0
    ipv6_frames: int = 0
    truncated: int = 0  # records whose captured length is less than the frame (the snaplen cut them)
    max_frame: int = 0
    over_9000: int = 0  # frames longer than 9000 bytes: GSO/GRO super-frames
    tcp_from_port: dict[int, int] = field(default_factory=dict)  # TCP payload by source port

    @property
    def payload(self) -> int:
        return self.tcp_payload + self.udp_payload


def payload_stats(path: str) -> PayloadStats:
    """Parse the pcap file at ``path`` (Ethernet link type) record by record; see ``PayloadStats``."""
    st = PayloadStats()
    with open(path, "rb") as f:
        fmt = parse_file_header(f.read(FILE_HEADER_LEN))
        for _block, rec in iter_file_records(f, fmt):
            st.frames += 1
            st.wire_bytes += rec.wirelen
            st.truncated += rec.caplen < rec.wirelen
            st.max_frame = max(st.max_frame, rec.wirelen)
            st.over_9000 += rec.wirelen > 9000
            _count_payload(st, rec.data, rec.wirelen)
    return st


def _count_payload(st: PayloadStats, frame: bytes, wirelen: int) -> None:
    if len(frame) < 14:
        return
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == ETH_IPV4 and len(frame) >= 34:
        vihl, _tos, total, _id, frag, _ttl, proto, _sum, _src, _dst = _IPV4.unpack_from(frame, 14)
        ihl = (vihl & 0x0F) * 4
        # A GSO super-frame carries its real total length; a zero one (never seen here) falls back to the frame's.
        ip_payload = (total or wirelen - 14) - ihl
        _count_l4(st, frame, 14 + ihl, proto, ip_payload, first_fragment=frag & 0x1FFF == 0)
    elif ethertype == ETH_IPV6 and len(frame) >= 54:
        st.ipv6_frames += 1
        _vtf, plen, nxt, _hops, _src, _dst = _IPV6.unpack_from(frame, 14)
        off, ip_payload, first = 54, plen or wirelen - 54, True
        if nxt == IPV6_FRAGMENT and len(frame) >= off + 8:
            nxt, first = frame[off], int.from_bytes(frame[off + 2:off + 4], "big") & 0xFFF8 == 0
            off, ip_payload = off + 8, ip_payload - 8
        _count_l4(st, frame, off, nxt, ip_payload, first_fragment=first)


def _count_l4(st: PayloadStats, frame: bytes, off: int, proto: int, ip_payload: int, *, first_fragment: bool) -> None:
    if proto == TCP:
        header = (frame[off + 12] >> 4) * 4 if first_fragment and len(frame) > off + 12 else 0
        st.tcp_payload += ip_payload - header
        if header:
            sport = int.from_bytes(frame[off:off + 2], "big")
            st.tcp_from_port[sport] = st.tcp_from_port.get(sport, 0) + ip_payload - header
    elif proto == UDP:
        st.udp_payload += ip_payload - (8 if first_fragment else 0)


class Tcpdump:
    """``tcpdump -w`` on one interface, the baseline of a run. ``buffer_bytes`` is its ring (``-B``): give it what
    podcap's handle gets, or the comparison measures ring sizes rather than capturers."""

    def __init__(self, interface: str, path: str, log_path: str, *, buffer_bytes: int = 32 << 20) -> None:
        self.interface, self.path, self.log_path = interface, path, log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(["tcpdump", "-i", interface, "-p", "-n", "-s", "0", "-B",
                                      str(buffer_bytes >> 10), "-w", path], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.received = self.dropped = -1

    def wait_listening(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while "listening on" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tcpdump on {self.interface} did not start (exit {self.proc.poll()}):\n"
                                   + self.log())
            time.sleep(0.05)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, timeout: float = 15) -> None:
        """SIGINT (tcpdump flushes its file and prints its counters), SIGKILL if it hangs; idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        text = self.log()
        if m := re.search(r"(\d+) packets? received by filter", text):
            self.received = int(m.group(1))
        if m := re.search(r"(\d+) packets? dropped by kernel", text):
            self.dropped = int(m.group(1))


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def set_mtu(bridge: str, pods: Iterable[DemoPod], mtu: int) -> None:
    """The MTU of every pod's eth0 and host veth, and of the bridge (after its ports, or it would refuse)."""
    for pod in pods:
        _ip("link", "set", "dev", pod.host_veth, "mtu", str(mtu))
        _ip("-n", pod.netns, "link", "set", "dev", "eth0", "mtu", str(mtu))
    _ip("link", "set", "dev", bridge, "mtu", str(mtu))


def link_mtu(interface: str, netns: str = "") -> int:
    out = subprocess.run(["ip", *(["-n", netns] if netns else []), "-o", "link", "show", "dev", interface],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"\bmtu (\d+)", out)
    assert m, out
    return int(m.group(1))


def add_ipv6(pods: Iterable[DemoPod], prefix: str) -> dict[str, str]:
    """A unique-local address per pod on its eth0 (``prefix`` like ``fd00:213:42::``; no duplicate address
    detection, so it is usable at once); returns {pod name: address}. The bridge forwards IPv6 like any frame."""
    out = {}
    for i, pod in enumerate(pods):
        addr = f"{prefix}{10 + i:x}"
        _ip("-n", pod.netns, "addr", "add", f"{addr}/64", "dev", "eth0", "nodad")
        out[pod.name] = addr
    return out


def url(ip: str, path: str, port: int = HTTP_PORT) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/{path}"


def http_server_argv(python: str, directory: str, ip: str, port: int = HTTP_PORT) -> list[str]:
    """The stock HTTP server (threaded: parallel downloads are served at once), bound to the pod's address."""
    return [python, "-m", "http.server", str(port), "--bind", ip, "--directory", directory]


def curl_argv(target: str, *, limit_rate: str = "", max_time: float = 60) -> list[str]:
    """One download to /dev/null; prints the bytes received (checked against the file's size)."""
    return ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}\n", "--max-time", str(max_time),
            *(["--limit-rate", limit_rate] if limit_rate else []), target]


def udp_mix_argv(python: str, target_ip: str, *, count: int, seconds: float, seed: int = 21,
                 port: int = UDP_PORT) -> list[str]:
    """``count`` UDP datagrams of random sizes (60..9000 bytes of payload) paced over ``seconds``; prints
    ``SENT <datagrams> <payload bytes>``."""
    return [python, UDP_MIX, "send", target_ip, str(port), str(count), str(seconds), str(seed)]


def udp_sink_argv(python: str, ip: str, *, seconds: float, port: int = UDP_PORT) -> list[str]:
    """A socket that reads and discards (so the sender's datagrams get no ICMP unreachable back)."""
    return [python, UDP_MIX, "sink", ip, str(port), str(seconds)]


def write_random_file(path: str, size: int) -> None:
    """Incompressible content, so no layer can shrink the transfer."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 << 20)
            f.write(os.urandom(n))
            left -= n
