"""Views across pods (issue 26, item 2): ``podcap follow`` writes pcapng with one interface per pod in time order,
and merged and live views show a packet seen on two pods once (the second sighting left out and counted), while
``--all-copies`` and the per-pod files keep every copy. The C paths (merge, live view) and their Python twins take
the same decisions and write the same bytes."""

from __future__ import annotations

import os
import random
import struct
from typing import Any

import pytest

from podcap.collector.cli.dedup import WINDOW_NS, OneCopy, packet_key
from podcap.collector.cli.get import merge, pcapmerge
from podcap.collector.cli.get.merge import MergeInput, merge_pcaps
from podcap.collector.cli.live.order import PyLiveOrder
from podcap.collector.cli.live.stream import PcapngStream
from podcap.formats.pcap import LINKTYPE_ETHERNET, FileFormat
from podcap.formats.pcapng import OPT_COMMENT, InterfaceInfo, InterfaceStats
from podcap.v1 import common_pb2, control_pb2
from tests.pcapng_reader import read_pcapng
from tests.unit.collector.cli.fakes import CID, FakeClient, capture, invoke

MAC_A, MAC_B, MAC_R = b"\x02\0\0\0\0\x0a", b"\x02\0\0\0\0\x0b", b"\x02\0\0\0\0\x01"


def ip_packet(seq: int, *, ttl: int = 64, src: int = 1, dst: int = 2, payload: bytes = b"") -> bytes:
    """An IPv4/UDP packet (with a real header checksum, which a router changes with the TTL)."""
    body = struct.pack(">HHHH", 40000 + src, 9999, 8 + 4 + len(payload), 0) + seq.to_bytes(4, "big") + payload
    head = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(body), seq & 0xFFFF, 0x4000, ttl, 17, 0,
                                 bytes([10, 0, 0, src]), bytes([10, 0, 0, dst])))
    csum = sum(struct.unpack(">10H", head))
    csum = (csum & 0xFFFF) + (csum >> 16)
    head[10:12] = (~csum & 0xFFFF).to_bytes(2, "big")
    return bytes(head) + body


def frame(ip: bytes, dst: bytes = MAC_B, src: bytes = MAC_A) -> bytes:
    return dst + src + b"\x08\x00" + ip


def arp() -> bytes:
    return b"\xff" * 6 + MAC_A + b"\x08\x06" + bytes(28)


def record(ts_ns: int, data: bytes) -> bytes:
    return struct.pack("<IIII", ts_ns // 10**9, ts_ns % 10**9, len(data), len(data)) + data


FMT = FileFormat(LINKTYPE_ETHERNET, 65535, True)


def pcap(path: str, recs: list[tuple[int, bytes]]) -> str:
    with open(path, "wb") as f:
        f.write(FMT.header() + b"".join(record(ts, d) for ts, d in recs))
    return path


# ---- the rule ----


def test_the_same_ip_packet_routed_between_pods_has_one_key() -> None:
    ip = ip_packet(7)
    routed = ip_packet(7, ttl=63)  # one hop later: TTL and checksum differ, and so do the MAC addresses
    assert routed != ip
    assert packet_key(LINKTYPE_ETHERNET, frame(ip), 14 + len(ip)) == \
        packet_key(LINKTYPE_ETHERNET, frame(routed, MAC_R, MAC_B), 14 + len(routed))
    assert packet_key(LINKTYPE_ETHERNET, frame(ip_packet(8)), 14 + len(ip)) != \
        packet_key(LINKTYPE_ETHERNET, frame(ip), 14 + len(ip))
    assert packet_key(LINKTYPE_ETHERNET, arp(), 42) is None  # not IP: always kept
    vlan = MAC_B + MAC_A + b"\x81\x00\x00\x05\x08\x00" + ip
    assert packet_key(LINKTYPE_ETHERNET, vlan, len(vlan)) == packet_key(LINKTYPE_ETHERNET, frame(ip), 14 + len(ip))


def test_only_another_pods_sighting_within_the_window_is_left_out() -> None:
    one = OneCopy()
    f = frame(ip_packet(1))
    assert not one.drop(LINKTYPE_ETHERNET, f, len(f), 1000, 0)
    assert one.drop(LINKTYPE_ETHERNET, f, len(f), 2000, 1)  # the other pod's copy
    assert not one.drop(LINKTYPE_ETHERNET, f, len(f), 3000, 0)  # the same pod again: a real second packet
    assert not one.drop(LINKTYPE_ETHERNET, f, len(f), 3000 + WINDOW_NS + 1, 1)  # too far apart: another packet
    assert not one.drop(LINKTYPE_ETHERNET, arp(), 42, 4000, 1) and one.dropped == {1: 1}


# ---- get --merge ----


def two_pods(tmp: str) -> tuple[str, str]:
    """Client and server of one UDP exchange, each capturing both directions; the server also gets ARP and a packet
    of its own twice (a retransmission the client never saw)."""
    t0 = 1_700_000_000 * 10**9
    client, server = [], []
    for i in range(50):
        ip = ip_packet(i, payload=bytes(i))
        client.append((t0 + i * 10**6, frame(ip)))
        server.append((t0 + i * 10**6 + 30_000, frame(ip_packet(i, ttl=63, payload=bytes(i)), MAC_R, MAC_B)))
    lone = frame(ip_packet(999, src=2, dst=7))
    server += [(t0 + 60 * 10**6, arp()), (t0 + 61 * 10**6, lone), (t0 + 62 * 10**6, lone)]
    return pcap(os.path.join(tmp, "client.pcap"), client), pcap(os.path.join(tmp, "server.pcap"), server)


@pytest.mark.parametrize("native", [True, False], ids=["c", "python"])
def test_a_merge_writes_each_packet_once_and_counts_the_rest(tmp_path: str, native: bool,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if native and not pcapmerge.one_copy_available():
        pytest.skip("podcap's C library is not built")
    if not native:
        monkeypatch.setattr(merge.pcapmerge, "available", lambda: False)
    client, server = two_pods(str(tmp_path))
    stats = InterfaceStats(start_ns=0, end_ns=1, received=53, delivered=53)
    inputs = [MergeInput(client, InterfaceInfo("shop/client")), MergeInput(server, InterfaceInfo("shop/server"), stats)]
    out = os.path.join(tmp_path, f"one-{native}.pcapng")
    dropped: list[int] = []
    with open(out, "wb") as f:
        counts = merge_pcaps(inputs, f, one_copy_ns=WINDOW_NS, dropped=dropped)
    assert counts == [50, 3] and dropped == [0, 50]  # the server's ARP and its own packet twice are kept
    got = read_pcapng(out)
    assert [p.interface_id for p in got.packets] == [0] * 50 + [1, 1, 1]
    assert "50 packets seen first on another pod left out" in got.stats[0].options[OPT_COMMENT][0].decode()
    every = os.path.join(tmp_path, f"all-{native}.pcapng")
    with open(every, "wb") as f:
        assert merge_pcaps(inputs, f) == [50, 53]


def test_the_c_merge_and_the_python_one_leave_out_the_same_packets(tmp_path: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    if not pcapmerge.one_copy_available():
        pytest.skip("podcap's C library is not built")
    rng = random.Random(26)
    t0 = 1_700_000_000 * 10**9
    pods: list[list[tuple[int, bytes]]] = [[], [], []]
    for i in range(3000):
        ip = ip_packet(i % 400, src=rng.randrange(1, 4), payload=rng.randbytes(rng.randrange(0, 40)))
        for k in rng.sample(range(3), rng.randrange(1, 4)):
            pods[k].append((t0 + i * 10**5 + rng.randrange(0, 5000), frame(ip)))
    for p in pods:
        p.sort(key=lambda r: r[0])
    inputs = [MergeInput(pcap(os.path.join(tmp_path, f"{k}.pcap"), p), InterfaceInfo(f"ns/p{k}"))
              for k, p in enumerate(pods)]
    results = []
    for native in (True, False):
        if not native:
            monkeypatch.setattr(merge.pcapmerge, "available", lambda: False)
        out = os.path.join(tmp_path, f"m{native}.pcapng")
        dropped: list[int] = []
        with open(out, "wb") as f:
            counts = merge_pcaps(inputs, f, one_copy_ns=WINDOW_NS, dropped=dropped)
        with open(out, "rb") as f:
            results.append((counts, dropped, f.read()))
    assert results[0] == results[1] and sum(results[0][1]) > 1000


def test_get_merge_says_what_it_left_out_and_all_copies_keeps_it(fake: FakeClient, tmp_path: str) -> None:
    client, server = two_pods(str(tmp_path))
    with open(client, "rb") as a, open(server, "rb") as b:
        fake.files = {"web-0": a.read(), "web-1": b.read()}
    fake.get = lambda cid: capture(control_pb2.CAPTURE_STATE_DONE)
    out = os.path.join(tmp_path, "m.pcapng")
    r = invoke("get", CID, "--merge", out)
    assert r.exit_code == 0, r.output
    assert "53 packets from 2 pod(s) (50 second sightings of packets seen on two pods left out" in r.output
    assert len(read_pcapng(out).packets) == 53
    r = invoke("get", CID, "--merge", out, "--all-copies")
    assert r.exit_code == 0 and "left out" not in r.output and len(read_pcapng(out).packets) == 103


# ---- live views ----


def _live_orders() -> list[Any]:
    return [PyLiveOrder, *([pcapmerge.NativeLive] if pcapmerge.one_copy_available() else [])]


@pytest.mark.parametrize("order", _live_orders())
def test_a_live_view_holds_records_until_no_pod_can_send_older_ones(order: Any) -> None:
    live = order(WINDOW_NS)
    a, b = live.add(0, FMT), live.add(1, FMT)
    s = 10**9
    live.push(a, record(10 * s, arp()) + record(12 * s, arp()), arrival_ns=0)
    assert live.release(0, 10 * s) == 0  # b has delivered nothing yet: it may still deliver anything
    live.push(b, record(11 * s, arp()), arrival_ns=0)  # b's older packet, after a's newer ones
    until = live.release(0, 10 * s)
    assert until == 11 * s  # each pod's records come in order: nothing older than 11 s can come any more
    first = live.pop(until)
    assert len(first) == 2 * (32 + 44)  # a@10, b@11; a@12 held
    assert live.release(5 * s, 5 * s) == 12 * s  # what arrived 5 s ago goes now (a quiet pod holds nothing back)
    assert len(live.pop(12 * s)) == 32 + 44 and live.buffered == 0
    live.close()


def test_the_c_live_view_and_the_python_one_write_the_same_bytes() -> None:
    if not pcapmerge.one_copy_available():
        pytest.skip("podcap's C library is not built")
    rng = random.Random(11)
    t0 = 1_700_000_000 * 10**9
    pods: list[list[bytes]] = [[], [], []]
    for i in range(4000):
        data = frame(ip_packet(i % 300, src=rng.randrange(1, 4), payload=rng.randbytes(rng.randrange(0, 30))))
        if rng.random() < 0.1:
            data = arp()
        for k in rng.sample(range(3), rng.randrange(1, 3)):
            pods[k].append(record(t0 + i * 10**5 + k * 1000, data))
    outputs = []
    for order in (pcapmerge.NativeLive, PyLiveOrder):
        live = order(WINDOW_NS)
        fmts = [FMT, FileFormat(LINKTYPE_ETHERNET, 65535, False), FMT]
        for k in range(3):
            live.add(k + 2, fmts[k])
        out = []
        rng2 = random.Random(5)
        pos = [0, 0, 0]
        clock = 0
        while any(pos[k] < len(pods[k]) for k in range(3)):
            k = rng2.randrange(3)
            n = rng2.randrange(1, 50)
            chunk = pods[k][pos[k]:pos[k] + n]
            pos[k] += n
            clock += rng2.randrange(0, 10**9)
            if chunk:
                if fmts[k] is not FMT:  # microsecond records: convert the fractions
                    chunk = [c[:4] + struct.pack("<I", struct.unpack_from("<I", c, 4)[0] // 1000) + c[8:]
                             for c in chunk]
                live.push(k, b"".join(chunk), clock)
            out.append(live.pop(live.release(clock, 2 * 10**9)))
        out.append(live.pop((1 << 64) - 1))
        outputs.append((b"".join(out), live.counts()))
        live.close()
    assert outputs[0] == outputs[1]
    assert sum(outputs[0][1][1]) > 500


def _pod(index: int, name: str) -> control_pb2.FollowMessage:
    return control_pb2.FollowMessage(pod=control_pb2.FollowPod(
        index=index, pod=common_pb2.Pod(namespace="shop", name=name, uid=f"uid-{name}", node="node-1"),
        format=common_pb2.PcapFormat(linktype=LINKTYPE_ETHERNET, snaplen=65535, nanosecond=True)))


def _records(index: int, *recs: tuple[int, bytes]) -> control_pb2.FollowMessage:
    return control_pb2.FollowMessage(records=control_pb2.FollowRecords(
        index=index, records=b"".join(record(ts, d) for ts, d in recs)))


def follow_messages() -> list[control_pb2.FollowMessage]:
    """A client and a server pod, the server's chunk of older packets arriving after the client's newer ones (as the
    issue saw, time going back up to 1.27 s), every packet seen by both."""
    t0 = 1_700_000_000 * 10**9
    ips = [ip_packet(i) for i in range(6)]
    ended = capture(control_pb2.CAPTURE_STATE_DONE)
    ended.end_reason = "stopped by user"
    return [
        _pod(0, "web-0"), _pod(1, "web-1"),
        _records(0, *[(t0 + i * 400_000_000, frame(ips[i])) for i in range(6)]),
        _records(1, *[(t0 + i * 400_000_000 + 50_000, frame(ips[i], MAC_A, MAC_B)) for i in range(6)]),
        control_pb2.FollowMessage(ended=ended),
    ]


def test_follow_of_several_pods_is_pcapng_in_time_order_each_packet_once(fake: FakeClient, tmp_path: str) -> None:
    fake.follow_messages = follow_messages()
    r = invoke("follow", CID)
    assert r.exit_code == 0, r.stderr
    path = os.path.join(tmp_path, "follow.pcapng")
    with open(path, "wb") as f:
        f.write(r.stdout_bytes)
    got = read_pcapng(path)
    assert [i.name for i in got.interfaces] == ["shop/web-0", "shop/web-1"]
    assert [p.ts_ns for p in got.packets] == sorted(p.ts_ns for p in got.packets)
    assert len(got.packets) == 6 and {p.interface_id for p in got.packets} == {0}
    assert "capture abc123def456 ended (stopped by user); 2 pod(s) followed, 6 second sightings" in r.stderr
    r = invoke("follow", CID, "--all-copies")
    with open(path, "wb") as f:
        f.write(r.stdout_bytes)
    got = read_pcapng(path)
    assert len(got.packets) == 12 and [p.ts_ns for p in got.packets] == sorted(p.ts_ns for p in got.packets)


def test_a_live_view_writes_held_packets_when_the_stream_is_quiet(tmp_path: str) -> None:
    """``tick`` releases what waited long enough, without a message to prompt it."""
    now = [0]
    path = os.path.join(tmp_path, "live.pcapng")
    with open(path, "wb") as out:
        stream = PcapngStream(out, capture(), clock=lambda: now[0])
        for msg in follow_messages()[:3]:
            stream.write(msg)  # web-0's packets; web-1 has delivered nothing: only web-0 holds the watermark
        size = out.tell()
        assert size > 0
        stream.write(follow_messages()[3])
        now[0] = 3 * 10**9
        stream.tick()
        assert out.tell() > size
        stream.close()


def test_a_view_started_with_its_capture_waits_for_pods_not_announced_yet(tmp_path: str) -> None:
    """The extcap follows a capture it just started: the collector announces each pod when its stream starts, so
    the client's records can come before the server is announced. The capture's own list of pods holds the view
    back until then (seen through Wireshark: every packet twice and out of order)."""
    msgs = follow_messages()
    late = [msgs[0], msgs[2], msgs[1], msgs[3], msgs[4]]  # web-1 announced after web-0's records
    path = os.path.join(tmp_path, "late.pcapng")
    with open(path, "wb") as out:
        stream = PcapngStream(out, capture(), clock=lambda: 0)
        for msg in late:
            stream.write(msg)
        stream.close()
    got = read_pcapng(path)
    assert [p.ts_ns for p in got.packets] == sorted(p.ts_ns for p in got.packets)
    assert len(got.packets) == 6 and stream.left_out == 6
