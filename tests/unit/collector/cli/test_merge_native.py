"""The C merge core (``proto/podcap/native/merge.c``) against the Python merge and against Wireshark's ``mergecap``: the
same bytes as the Python path for every input shape (ties, unordered inputs, empty pods, records longer than a read
block, microsecond and nanosecond inputs), the same errors for damaged inputs, and the same packets in the same order as
``mergecap -F pcapng`` (both files parsed)."""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
from collections.abc import Sequence

import pytest

from podcap.collector.cli.get import merge, pcapmerge
from podcap.collector.cli.get.merge import Mark, MergeInput, merge_pcaps
from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat, PcapFormatError
from podcap.formats.pcapng import InterfaceInfo, SectionInfo
from tests.pcapng_reader import read_pcapng
from tests.unit.collector.cli.test_pcapng import BASE_NS, stats, write_damaged_pcap, write_pcap

pytestmark = pytest.mark.skipif(not pcapmerge.available(), reason="podcap's C library is not built (no C compiler)")


def merge_both(tmp_path: str, inputs: list[MergeInput], monkeypatch: pytest.MonkeyPatch, *,
               marks: Sequence[Mark] = (), one_copy_ns: int = 0) -> tuple[bytes, bytes]:
    """The merged file as the C core writes it, and as the Python path writes it."""
    section = SectionInfo(comments=("podcap capture abc123def456",), hardware="x", os="y")
    out = []
    for native in (True, False):
        path = os.path.join(tmp_path, f"merged-{native}.pcapng")
        with monkeypatch.context() as m:
            if not native:
                m.setattr(pcapmerge, "_LIB", None)
            with open(path, "wb") as f:
                merge_pcaps(inputs, f, section=section, marks=marks, one_copy_ns=one_copy_ns)
        with open(path, "rb") as f:
            out.append(f.read())
        os.unlink(path)
    return out[0], out[1]


def _random_pods(tmp_path: str, seed: int, n_pods: int, *, unordered: bool = False) -> list[MergeInput]:
    rnd = random.Random(seed)
    inputs = []
    for k in range(n_pods):
        path = os.path.join(tmp_path, f"pod{k}.pcap")
        n = rnd.choice((0, 1, 50, 400))
        ts = [BASE_NS + rnd.randrange(0, 10**6, rnd.choice((1, 1000, 100_000))) for _ in range(n)]
        if not unordered:
            ts.sort()
        write_pcap(path, ts, pod=k, nanosecond=rnd.random() < 0.7, cut=rnd.choice((0, 0, 5)), snaplen=65535)
        inputs.append(MergeInput(path, InterfaceInfo(f"ns/pod-{k}"), stats(n) if k % 2 else None))
    return inputs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("unordered", [False, True])
def test_the_c_merge_writes_the_same_bytes_as_the_python_merge(tmp_path: str, monkeypatch: pytest.MonkeyPatch,
                                                                seed: int, unordered: bool) -> None:
    inputs = _random_pods(str(tmp_path), seed, 1 + seed % 5, unordered=unordered)
    native, python = merge_both(str(tmp_path), inputs, monkeypatch)
    assert native == python
    assert len(read_pcapng_bytes(str(tmp_path), native).packets) == sum(
        sum(1 for _ in _records(i.path)) for i in inputs)


def read_pcapng_bytes(tmp_path: str, blob: bytes) -> object:
    path = os.path.join(tmp_path, "check.pcapng")
    with open(path, "wb") as f:
        f.write(blob)
    try:
        return read_pcapng(path)
    finally:
        os.unlink(path)


def _records(path: str) -> list[bytes]:
    from podcap.formats.pcap import read_file
    return [r.data for r in read_file(path)[1]]


def test_records_longer_than_a_read_block_and_small_steps(tmp_path: str) -> None:
    """A record larger than the input's read block grows the block; a merge called in small steps resumes."""
    big = os.path.join(tmp_path, "big.pcap")
    small = os.path.join(tmp_path, "small.pcap")
    with open(big, "wb") as f:
        f.write(FileFormat(1, 262144, True).header())
        for i in range(3):
            data = bytes([i]) * (100_000 + i)
            f.write(struct.pack("<IIII", 1_700_000_000, 10 * i, len(data), len(data)) + data)
    write_pcap(small, [1_700_000_000 * 10**9 + 5 + 10 * i for i in range(20)], pod=1)
    fmt_big, fmt_small = FileFormat(1, 262144, True), FileFormat(1, 65535, True)
    out = os.path.join(tmp_path, "out.epb")
    with open(big, "rb") as a, open(small, "rb") as b, open(out, "wb") as o:
        counts = pcapmerge.merge_records([pcapmerge.NativeInput(a.fileno(), big, fmt_big, FILE_HEADER_LEN),
                                          pcapmerge.NativeInput(b.fileno(), small, fmt_small, FILE_HEADER_LEN)],
                                         o.fileno(), block=4096, out_block=4096, step=1)
    assert counts == [3, 20]
    with open(out, "rb") as f:
        blob = f.read()
    sizes, off, order = [], 0, []
    while off < len(blob):
        _typ, total, iface = struct.unpack_from("<III", blob, off)
        caplen = struct.unpack_from("<I", blob, off + 20)[0]
        sizes.append(caplen)
        order.append(iface)
        off += total
    assert off == len(blob)
    assert order == [0] + [1] * 1 + [0] + [1] + [0] + [1] * 18  # ts 0, 5, 10, 15, 20, 25, ...
    assert sorted(s for s in sizes if s >= 100_000) == [100_000, 100_001, 100_002]


@pytest.mark.parametrize("damage", ["magic", "truncated", "truncated-header", "caplen", "wirelen"])
def test_damaged_inputs_fail_as_in_python(tmp_path: str, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    good = os.path.join(tmp_path, "good.pcap")
    src = os.path.join(tmp_path, "bad.pcap")
    write_pcap(good, [BASE_NS + i for i in range(50)], pod=1)
    write_damaged_pcap(src, damage)
    inputs = [MergeInput(good, InterfaceInfo("ns/good")), MergeInput(src, InterfaceInfo("ns/bad"))]
    errors = []
    for native in (True, False):
        with monkeypatch.context() as m:
            if not native:
                m.setattr(pcapmerge, "_LIB", None)
            with pytest.raises(PcapFormatError, match="bad.pcap") as e, open(os.path.join(tmp_path, "o"), "wb") as f:
                merge_pcaps(inputs, f)
        errors.append(str(e.value))
    assert errors[0] == errors[1]


def test_a_reader_that_goes_away_is_a_broken_pipe(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "a.pcap")
    write_pcap(path, [BASE_NS + i for i in range(100)], pod=0)
    r, w = os.pipe()
    os.close(r)
    try:
        with open(path, "rb") as f, pytest.raises(BrokenPipeError):
            pcapmerge.merge_records([pcapmerge.NativeInput(f.fileno(), path, FileFormat(1, 65535, True),
                                                           FILE_HEADER_LEN)], w)
    finally:
        os.close(w)


def _packets(path: str) -> list[tuple[int, int, bytes]]:
    return [(p.ts_ns, p.wirelen, p.data) for p in read_pcapng(path).packets]


def _mergecap() -> str:
    path = shutil.which("mergecap")
    if path is None:
        if os.environ.get("PODCAP_REQUIRE_NODE"):
            pytest.fail("mergecap is required in CI (apt-get install tshark, which brings wireshark-common)")
        pytest.skip("mergecap not installed (Debian package wireshark-common, pulled in by tshark)")
    return path


@pytest.mark.parametrize("seed", range(4))
def test_packets_and_order_match_mergecap(tmp_path: str, seed: int) -> None:
    inputs = [i for i in _random_pods(str(tmp_path), 100 + seed, 4) if os.path.getsize(i.path) > FILE_HEADER_LEN]
    ours = os.path.join(tmp_path, "ours.pcapng")
    theirs = os.path.join(tmp_path, "mergecap.pcapng")
    with open(ours, "wb") as f:
        counts = merge_pcaps(inputs, f)
    r = subprocess.run([_mergecap(), "-F", "pcapng", "-I", "none", "-w", theirs, *[i.path for i in inputs]],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got, want = read_pcapng(ours), read_pcapng(theirs)
    assert [(p.interface_id, p.ts_ns, p.wirelen, p.data) for p in got.packets] == \
        [(p.interface_id, p.ts_ns, p.wirelen, p.data) for p in want.packets]
    assert sum(counts) == len(want.packets)
    assert [i.name for i in got.interfaces] == [i.interface.name for i in inputs]


def test_merge_module_uses_the_c_core_for_real_files(tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard against the fast path silently turning off: a file output goes through ``merge_records``."""
    calls = []
    real = pcapmerge.merge_records

    def spy(*args: object, **kwargs: object) -> list[int]:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(merge.pcapmerge, "merge_records", spy)
    inputs = _random_pods(str(tmp_path), 7, 3)
    with open(os.path.join(tmp_path, "o.pcapng"), "wb") as f:
        merge_pcaps(inputs, f)
    assert calls == [1]


def test_ties_follow_mergecap(tmp_path: str) -> None:
    """Equal timestamps across pods (coarse clocks, one frame seen on two veths): mergecap's order, not input order."""
    paths = [os.path.join(tmp_path, f"t{k}.pcap") for k in range(3)]
    for k, path in enumerate(paths):
        write_pcap(path, [BASE_NS // 1000 * 1000 + (i // 2) * 1000 for i in range(6 + k)], pod=k, nanosecond=k != 1)
    inputs = [MergeInput(p, InterfaceInfo(f"ns/t{k}")) for k, p in enumerate(paths)]
    ours = os.path.join(tmp_path, "ours.pcapng")
    theirs = os.path.join(tmp_path, "mergecap.pcapng")
    with open(ours, "wb") as f:
        merge_pcaps(inputs, f)
    r = subprocess.run([_mergecap(), "-F", "pcapng", "-I", "none", "-w", theirs, *paths], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = [(p.interface_id, p.ts_ns, p.data) for p in read_pcapng(ours).packets]
    assert got == [(p.interface_id, p.ts_ns, p.data) for p in read_pcapng(theirs).packets]
    assert [i for i, _, _ in got[:6]] == [2, 2, 1, 1, 0, 0]  # the first tie: the last input first
