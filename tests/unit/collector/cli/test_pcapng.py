"""Merging per-pod pcap files into one pcapng: what Wireshark's own tools (tshark, capinfos) read back, and the
blocks themselves through our reader (ISB counters, section comments, timestamp resolution per interface)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections import Counter

import pytest

from podcap.collector.cli.get.merge import MergeInput, merge_pcaps, pcap_to_pcapng
from podcap.drops import Drops
from podcap.formats.pcap import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, FileFormat, PcapFormatError
from podcap.formats.pcapng import (
    ISB_ENDTIME,
    ISB_IFDROP,
    ISB_IFRECV,
    ISB_OSDROP,
    ISB_STARTTIME,
    ISB_USRDELIV,
    SHB_USERAPPL,
    InterfaceInfo,
    InterfaceStats,
    PcapngError,
    PcapngWriter,
    SectionInfo,
)
from tests.pcapng_reader import read_pcapng

BASE_NS = 1_700_000_000_123_456_789


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("PODCAP_REQUIRE_NODE"):
            pytest.fail(f"{tool} is required in CI (apt-get install tshark)")
        pytest.skip(f"{tool} not installed (Debian package tshark); it checks that Wireshark reads our files")
    return path


def _stderr_warnings(stderr: str) -> list[str]:
    # tshark always says so when run as root; that is not about the file.
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("Running as user")]


def tshark(path: str, *fields: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
    args = [_require("tshark"), "-r", path, *extra, "-T", "fields"]
    for f in fields:
        args += ["-e", f]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert _stderr_warnings(r.stderr) == [], r.stderr
    return [line.split("\t") for line in r.stdout.splitlines()]


def udp_ipv4(seq: int, pod: int) -> bytes:
    payload = b"PODCAPSEQ" + pod.to_bytes(4, "big") + seq.to_bytes(4, "big") + b"x" * (seq % 13)
    udp = struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp) + len(payload), seq & 0xFFFF, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2 + pod]))
    return ip + udp + payload


def frame(linktype: int, seq: int, pod: int) -> bytes:
    if linktype == LINKTYPE_ETHERNET:
        return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + udp_ipv4(seq, pod)
    # LINUX_SLL2: protocol, reserved, ifindex, ARPHRD_ETHER, packet type (host), address length, address.
    sll2 = struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00")
    return sll2 + udp_ipv4(seq, pod)


def write_pcap(path: str, timestamps: list[int], *, pod: int, nanosecond: bool = True,
               linktype: int = LINKTYPE_ETHERNET, snaplen: int = 65535, cut: int = 0) -> None:
    """A pod's pcap file as the collector stores it; ``cut`` bytes of each frame are left out (caplen < len)."""
    with open(path, "wb") as f:
        f.write(FileFormat(linktype, snaplen, nanosecond).header())
        for seq, ts in enumerate(timestamps):
            data = frame(linktype, seq, pod)
            kept = data[: len(data) - cut] if cut else data
            frac = ts % 1_000_000_000 if nanosecond else ts % 1_000_000_000 // 1000
            f.write(struct.pack("<IIII", ts // 1_000_000_000, frac, len(kept), len(data)) + kept)


def write_damaged_pcap(path: str, damage: str) -> None:
    """Five records (snaplen 200) with one ``damage``: a bad ``magic``, ``truncated`` in the last record,
    ``truncated-header`` (a partial record header at the end), a ``caplen`` over the snaplen, else a wire length
    under the caplen (in the first record)."""
    write_pcap(path, [BASE_NS + i for i in range(5)], pod=0, snaplen=200)
    blob = bytearray(open(path, "rb").read())
    if damage == "magic":
        blob[0:4] = b"\0\0\0\0"
    elif damage == "truncated":
        del blob[-7:]
    elif damage == "truncated-header":
        blob += b"\1\2\3"
    elif damage == "caplen":
        struct.pack_into("<I", blob, 24 + 8, 5000)
    else:
        struct.pack_into("<I", blob, 24 + 12, 3)
    open(path, "wb").write(bytes(blob))


def stats(n: int, kernel: int = 0, ifd: int = 0, agent: int = 0, late: int = 0, retired: int = 0) -> InterfaceStats:
    return InterfaceStats(start_ns=BASE_NS - 10**9, end_ns=BASE_NS + 10**9, received=n + kernel, kernel_dropped=kernel,
                          if_dropped=ifd, drops=Drops(buffer_full=agent, late=late), delivered=n, retired=retired)


@pytest.fixture
def three_pods(tmp_path: str) -> list[MergeInput]:
    """Three pods with interleaved packets: nanosecond Ethernet, microsecond Ethernet, nanosecond LINUX_SLL2."""
    a, b, c = (os.path.join(tmp_path, f"{x}.pcap") for x in "abc")
    write_pcap(a, [BASE_NS + i * 3000 + 1 for i in range(40)], pod=0)
    write_pcap(b, [BASE_NS + i * 5000 for i in range(25)], pod=1, nanosecond=False)
    write_pcap(c, [BASE_NS + i * 7000 + 2 for i in range(15)], pod=2, linktype=LINKTYPE_LINUX_SLL2, snaplen=96,
               cut=10)
    return [
        MergeInput(a, InterfaceInfo("shop/web-0", "pod shop/web-0: node n1, uid u-a", "udp port 9999"), stats(40, 3)),
        MergeInput(b, InterfaceInfo("shop/web-1", "pod shop/web-1: node n2, uid u-b", "udp port 9999"),
                   stats(25, 0, 1, 7)),
        MergeInput(c, InterfaceInfo("db/pg-0", "pod db/pg-0: node n1, uid u-c", "udp port 9999"),
                   stats(15, late=2, retired=30)),
    ]


def merged(tmp_path: str, inputs: list[MergeInput], name: str = "all.pcapng") -> tuple[str, list[int]]:
    path = os.path.join(tmp_path, name)
    with open(path, "wb") as out:
        counts = merge_pcaps(inputs, out, section=SectionInfo(comments=("podcap capture abc123def456",)))
    return path, counts


def test_tshark_sees_every_pod_as_its_interface_in_time_order(tmp_path: str, three_pods: list[MergeInput]) -> None:
    path, counts = merged(tmp_path, three_pods)
    assert counts == [40, 25, 15]
    rows = tshark(path, "frame.interface_name", "frame.time_epoch", "frame.interface_id")
    assert Counter(r[0] for r in rows) == {"shop/web-0": 40, "shop/web-1": 25, "db/pg-0": 15}
    times = [int(r[1].replace(".", "")) for r in rows]
    assert times == sorted(times), "packets are not in time order"
    assert {r[0]: r[2] for r in rows} == {"shop/web-0": "0", "shop/web-1": "1", "db/pg-0": "2"}


def test_nanosecond_timestamps_are_kept_and_microseconds_are_exact(tmp_path: str,
                                                                    three_pods: list[MergeInput]) -> None:
    path, _ = merged(tmp_path, three_pods)
    rows = tshark(path, "frame.interface_name", "frame.time_epoch")
    web0 = [r[1] for r in rows if r[0] == "shop/web-0"]
    web1 = [r[1] for r in rows if r[0] == "shop/web-1"]
    assert web0[:2] == ["1700000000.123456790", "1700000000.123459790"]  # BASE + 1, BASE + 3001: ns kept
    assert web1[:2] == ["1700000000.123456000", "1700000000.123461000"]  # µs input, µs resolution
    f = read_pcapng(path)
    assert [i.tsresol for i in f.interfaces] == [9, 6, 9]
    assert [p.ts_ns for p in f.packets if p.interface_id == 0][:2] == [BASE_NS + 1, BASE_NS + 3001]


def test_link_types_lengths_and_payloads_per_pod(tmp_path: str, three_pods: list[MergeInput]) -> None:
    path, _ = merged(tmp_path, three_pods)
    rows = tshark(path, "frame.interface_name", "frame.len", "frame.cap_len", "ip.dst", "udp.dstport")
    for name, length, caplen, dst, port in rows:
        assert port == "9999"
        assert dst == {"shop/web-0": "10.0.0.2", "shop/web-1": "10.0.0.3", "db/pg-0": "10.0.0.4"}[name]
        assert int(caplen) == int(length) - (10 if name == "db/pg-0" else 0)
    f = read_pcapng(path)
    assert [(i.linktype, i.snaplen) for i in f.interfaces] == [(1, 65535), (1, 65535), (276, 96)]


def test_capinfos_reads_section_and_interface_metadata(tmp_path: str, three_pods: list[MergeInput]) -> None:
    path, _ = merged(tmp_path, three_pods)
    r = subprocess.run([_require("capinfos"), path], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and _stderr_warnings(r.stderr) == [], r.stderr
    out = r.stdout
    assert "Number of packets:   80" in out
    assert "Strict time order:   True" in out
    assert "Capture comment:     podcap capture abc123def456" in out
    assert "Capture application: podcap" in out
    assert "Number of interfaces in file: 3" in out
    for name in ("shop/web-0", "shop/web-1", "db/pg-0"):
        assert f"Name = {name}" in out
    assert "Description = pod shop/web-0: node n1, uid u-a" in out
    assert out.count("Filter string = udp port 9999") == 3
    assert "Time precision = nanoseconds (9)" in out and "Time precision = microseconds (6)" in out
    assert out.count("Number of stat entries = 1") == 3


def test_interface_statistics_carry_drops_per_pod(tmp_path: str, three_pods: list[MergeInput]) -> None:
    path, _ = merged(tmp_path, three_pods)
    f = read_pcapng(path)
    assert f.comments == ["podcap capture abc123def456"]
    assert f.section_options[SHB_USERAPPL][0].startswith(b"podcap ")
    assert [s.interface_id for s in f.stats] == [0, 1, 2]
    web0, web1, pg0 = f.stats
    assert (web0.counter(ISB_IFDROP), web0.counter(ISB_OSDROP), web0.counter(ISB_IFRECV),
            web0.counter(ISB_USRDELIV)) == (3, 3, 43, 40)
    # Every loss is in isb_ifdrop (Wireshark's "Dropped packets"); osdrop is the kernel ring's part alone.
    assert (web1.counter(ISB_IFDROP), web1.counter(ISB_OSDROP)) == (8, 0)
    assert pg0.counter(ISB_IFDROP) == 2
    assert web1.time_ns(ISB_STARTTIME, 6) == BASE_NS // 1000 * 1000 - 10**9
    assert web0.time_ns(ISB_ENDTIME, 9) == BASE_NS + 10**9
    assert web0.options[1] == [b"dropped 3: kernel ring full 3, interface 0; stored 40"]
    # Every cause is named, and what retention deleted: received = stored + deleted + every drop.
    assert web1.options[1] == [b"dropped 8: kernel ring full 0, interface 1, agent buffer full 7; stored 25"]
    assert pg0.options[1] == [b"dropped 2: kernel ring full 0, interface 0, arrived after the end 2; stored 15; "
                              b"deleted by retention 30"]
    # The ISBs come after the last packet (at the end of the file).
    assert all(p.ts_ns <= BASE_NS + 200_000 for p in f.packets)


def test_equal_timestamps_go_to_the_later_input_first_and_empty_pods_keep_their_interface(tmp_path: str) -> None:
    """mergecap's tie rule (its is_earlier() holds on equality): of equal timestamps, the later input's packet
    first; each input's own order is kept."""
    a, b, empty = (os.path.join(tmp_path, f"{x}.pcap") for x in ("a", "b", "empty"))
    write_pcap(a, [BASE_NS] * 3, pod=0)
    write_pcap(b, [BASE_NS] * 3, pod=1)
    write_pcap(empty, [], pod=2)
    path, counts = merged(tmp_path, [MergeInput(p, InterfaceInfo(f"ns/{n}")) for p, n in
                                     ((empty, "empty"), (a, "a"), (b, "b"))])
    assert counts == [0, 3, 3]
    rows = tshark(path, "frame.interface_name")
    assert [r[0] for r in rows] == ["ns/b"] * 3 + ["ns/a"] * 3
    assert [i.name for i in read_pcapng(path).interfaces] == ["ns/empty", "ns/a", "ns/b"]


def test_merge_streams_into_a_pipe(tmp_path: str, three_pods: list[MergeInput]) -> None:
    """The writer never seeks: ``podcap get ID --merge - | wireshark -k -i -`` works."""
    proc = subprocess.Popen([_require("tshark"), "-r", "-", "-T", "fields", "-e", "frame.interface_name"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    counts = merge_pcaps(three_pods, proc.stdin)
    proc.stdin.close()
    out, err = proc.stdout.read(), proc.stderr.read()  # 80 short lines: tshark never blocks on a full pipe
    proc.wait(timeout=60)
    assert proc.returncode == 0 and _stderr_warnings(err.decode()) == [], err
    assert Counter(out.decode().split()) == {"shop/web-0": counts[0], "shop/web-1": counts[1], "db/pg-0": counts[2]}


def test_single_pod_conversion(tmp_path: str, three_pods: list[MergeInput]) -> None:
    dst = os.path.join(tmp_path, "web-0.pcapng")
    inp = three_pods[0]
    assert pcap_to_pcapng(inp.path, dst, inp.interface, stats=inp.stats) == 40
    assert not os.path.exists(dst + ".part")
    rows = tshark(dst, "frame.interface_name", "frame.time_epoch")
    assert len(rows) == 40 and {r[0] for r in rows} == {"shop/web-0"}


@pytest.mark.parametrize("damage", ["magic", "truncated", "caplen"])
def test_damaged_input_names_the_file_and_leaves_no_output(tmp_path: str, damage: str) -> None:
    src = os.path.join(tmp_path, "bad.pcap")
    write_damaged_pcap(src, damage)
    dst = os.path.join(tmp_path, "bad.pcapng")
    with pytest.raises(PcapFormatError, match="bad.pcap"):
        pcap_to_pcapng(src, dst, InterfaceInfo("ns/bad"))
    assert not os.path.exists(dst) and not os.path.exists(dst + ".part")


def test_long_texts_are_cut_to_one_option(tmp_path: str) -> None:
    src = os.path.join(tmp_path, "a.pcap")
    write_pcap(src, [BASE_NS], pod=0)
    path, _ = merged(tmp_path, [MergeInput(src, InterfaceInfo("ns/a", "é" * 40000, "udp"))])
    desc = read_pcapng(path).interfaces[0].description
    assert len(desc.encode()) <= 0xFFFF and set(desc) == {"é"}
    assert len(tshark(path, "frame.interface_name")) == 1


def test_a_file_wants_every_interface_first_a_live_view_may_add_one_later(tmp_path: str) -> None:
    """One encoder for both: a file's writer refuses an IDB after a packet (readers want them up front); the live
    view's writer (``interfaces_first=False``) adds it, and its blocks read back on their interfaces."""
    for interfaces_first in (True, False):
        path = os.path.join(tmp_path, f"live-{interfaces_first}.pcapng")
        out = open(path, "wb")  # noqa: SIM115 (closed below)
        w = PcapngWriter(out, SectionInfo(comments=("live",)), interfaces_first=interfaces_first)
        first = w.add_interface(InterfaceInfo("shop/web-0"), linktype=LINKTYPE_ETHERNET, snaplen=96, nanosecond=True)
        w.write_packet(first, BASE_NS, b"\xaa" * 60, 60)
        if interfaces_first:
            with pytest.raises(PcapngError, match="before the first packet"):
                w.add_interface(InterfaceInfo("shop/web-1"), linktype=LINKTYPE_ETHERNET, snaplen=96, nanosecond=True)
            out.close()
            continue
        second = w.add_interface(InterfaceInfo("shop/web-1"), linktype=LINKTYPE_LINUX_SLL2, snaplen=96,
                                 nanosecond=False)
        w.write_packet(second, BASE_NS + 1000, b"\xbb" * 61, 70)
        w.write_stats(second, InterfaceStats(start_ns=BASE_NS, end_ns=BASE_NS + 5000, received=2, delivered=1))
        out.close()
        f = read_pcapng(path)
        assert [i.linktype for i in f.interfaces] == [LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2]
        assert [(p.interface_id, p.ts_ns, p.wirelen) for p in f.packets] == [(0, BASE_NS, 60),
                                                                               (1, (BASE_NS + 1000) // 1000 * 1000, 70)]
        assert [(s.interface_id, s.counter(ISB_IFRECV), s.counter(ISB_USRDELIV)) for s in f.stats] == [(1, 2, 1)]
