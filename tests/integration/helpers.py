"""What the integration tests share besides fixtures: the UDP sender and its port, and waiting for and reading
captures as a user would (through the podcap CLI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from podcap.collector.cli.client import CollectorClient
from podcap.collector.demo.node import DemoNode
from podcap.formats.pcap import LINKTYPE_ETHERNET, iter_records, parse_file_header, read_file
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


T = TypeVar("T")


def poll(read: Callable[[], T], ok: Callable[[T], bool], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """``read()`` every ``interval`` seconds until ``ok`` of it; fails with the last reading (as JSON) after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so after {timeout} s: {json.dumps(value, indent=1)[:3000]}")
        time.sleep(interval)


def send_udp(node: DemoNode, receivers: list[str], count: int) -> None:
    """``count`` numbered datagrams (udp_send.py) from the ``sender`` pod to each of ``receivers``."""
    ips = [node.pod(name).ip for name in receivers]
    sent = node.exec(node.pod("sender"), [sys.executable, SENDER, str(PORT), str(count), *ips])
    assert sent.returncode == 0, sent.stderr


def start_udp(address: str, node: DemoNode, receivers: list[str], *start_args: str) -> str:
    """A capture of ``receivers`` (``udp port PORT``, ``start_args``) started once ARP is resolved; its id, once
    every pod is capturing."""
    warm_up(node)
    cid = capture_id(podcap(address, "start", "-n", node.namespace, *receivers, "--filter", f"udp port {PORT}",
                            *start_args))
    wait_capturing(address, cid, len(receivers))
    return cid


def capture_udp(address: str, node: DemoNode, receivers: list[str], count: int,
                *start_args: str) -> tuple[str, dict[str, Any]]:
    """A capture of ``receivers`` (``udp port PORT``, ``start_args``) that saw ``count`` datagrams to each: started,
    sent to once every pod is capturing, stopped; its id and final status."""
    cid = start_udp(address, node, receivers, *start_args)
    send_udp(node, receivers, count)
    time.sleep(0.5)
    return cid, dict(json.loads(podcap(address, "stop", cid, "-o", "json").stdout))


@contextmanager
def small_tmpfs(tmp_path: str, size: str) -> Iterator[str]:
    """A tmpfs of ``size`` (``3m``) mounted under ``tmp_path``, for a data dir that fills; unmounted at the end."""
    mnt = os.path.join(tmp_path, "tmpfs")
    os.makedirs(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)


def interrupted(argv: list[str], ready: Callable[[], bool], act: Callable[[subprocess.Popen[str]], object], *,
                env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (a download); once ``ready()`` (within 60 s, while it still runs) freeze it (SIGSTOP), ``act``
    on it (deliver a signal, delete its capture...), thaw it, and return how it ended. Frozen first, so that what
    ``act`` does lands while it is part-way."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert proc.poll() is None, "the download ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.001)
        proc.send_signal(signal.SIGSTOP)
        act(proc)
        proc.send_signal(signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


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


def seq_datagram(frame: bytes | memoryview) -> tuple[int, int] | None:
    """(destination index, sequence number) of a PODCAPSEQ datagram (udp_send.py's payload) in an Ethernet frame;
    None for any other frame."""
    if frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    body = bytes(frame[14 + (frame[14] & 0x0F) * 4 + 8:])
    if not body.startswith(b"PODCAPSEQ"):
        return None
    return int.from_bytes(body[9:13], "big"), int.from_bytes(body[13:17], "big")


def frame_seqs(frames: Iterable[bytes | memoryview]) -> list[int]:
    """The sequence numbers of the PODCAPSEQ datagrams among ``frames``, in order."""
    return [d[1] for f in frames if (d := seq_datagram(f)) is not None]


def send_numbered(node: DemoNode, first: int, count: int) -> None:
    """Datagrams numbered first..first+count-1 from ``sender`` to ``rx-0`` (udp_send.py's payload, destination 0,
    numbered from ``first``)."""
    code = ("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for seq in range({first}, {first + count}):\n"
            "    s.sendto(b'PODCAPSEQ' + bytes(4) + seq.to_bytes(4, 'big') + b'x' * (seq % 200), "
            f"('{node.pod('rx-0').ip}', {PORT}))\n"
            "    if seq % 100 == 99:\n        time.sleep(0.002)\n")
    r = node.exec(node.pod("sender"), [sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr


def stored_seqs(cli: CollectorClient, capture_id: str) -> list[int]:
    """The sequence numbers of the PODCAPSEQ datagrams a (one-pod) capture stored, downloaded as a pcap."""
    data = bytearray()
    for msg in cli.download(capture_id):
        if msg.WhichOneof("kind") == "data":
            data += msg.data
    fmt = parse_file_header(bytes(data[:24]))
    return frame_seqs(bytes(rec.data) for rec in iter_records(memoryview(data)[24:], fmt))


def udp_payloads(path: str) -> list[tuple[int, int, int, bytes, bytes]]:
    """(dst index, seq, wire length, src ip, dst ip) of every PODCAPSEQ datagram in a pcap file."""
    fmt, recs = read_file(path)
    assert fmt.linktype == LINKTYPE_ETHERNET
    out = []
    for r in recs:
        assert r.caplen == len(r.data) <= r.wirelen
        d = seq_datagram(r.data)
        if d is not None:
            out.append((d[0], d[1], r.wirelen, r.data[26:30], r.data[30:34]))
    return out
