"""``get --merge`` merging while it downloads (one Download stream per pod, fed to the C merge core): the same file
as the merge of downloaded files whatever the block boundaries, memory bounded by the blocks (not the data), and a
stream that breaks or ends short fails the merge and leaves no output."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from podcap.collector.cli import main
from podcap.collector.cli.get import command as get_cmd
from podcap.collector.cli.get import pcapmerge, pod_streams
from podcap.collector.cli.get.merge import StreamInput, merge_pcaps, merge_streams
from podcap.formats.pcap import FILE_HEADER_LEN, PcapFormatError, parse_file_header
from podcap.formats.pcapng import InterfaceInfo, SectionInfo
from podcap.v1 import control_pb2
from tests.pcapng_reader import read_pcapng
from tests.unit.collector.cli.test_cli import CID, FakeClient, capture, pcap_bytes
from tests.unit.collector.cli.test_merge_native import _random_pods

pytestmark = pytest.mark.skipif(not pcapmerge.available(), reason="podcap's C library is not built (no C compiler)")
SECTION = SectionInfo(comments=("podcap capture abc123def456",), hardware="x", os="y")


def cut(blob: bytes, rnd: random.Random) -> Iterator[bytes]:
    """``blob`` in blocks of random sizes (1 byte to 64 KiB), with empty blocks here and there."""
    off = 0
    while off < len(blob):
        n = rnd.choice((1, 7, 16, 17, 1000, 65536))
        if rnd.random() < 0.05:
            yield b""
        yield blob[off:off + n]
        off += n


@pytest.mark.parametrize("seed", range(5))
def test_streams_merge_to_the_same_file_as_downloaded_files(tmp_path: str, seed: int) -> None:
    inputs = _random_pods(str(tmp_path), 200 + seed, 1 + seed % 4, unordered=seed % 2 == 1)
    rnd = random.Random(seed)
    streams = []
    for inp in inputs:
        with open(inp.path, "rb") as f:
            blob = f.read()
        streams.append(StreamInput(inp.path, inp.interface, parse_file_header(blob), cut(blob[FILE_HEADER_LEN:], rnd)))
    from_files, from_streams = (os.path.join(tmp_path, n) for n in ("files.pcapng", "streams.pcapng"))
    with open(from_files, "wb") as out:
        want = merge_pcaps(inputs, out, section=SECTION)
    with open(from_streams, "wb") as out:
        got = merge_streams(streams, out, section=SECTION, stats=lambda: [i.stats for i in inputs])
    assert got == want
    with open(from_files, "rb") as a, open(from_streams, "rb") as b:
        assert a.read() == b.read()


def test_a_stream_ending_inside_a_record_is_a_damaged_input(tmp_path: str) -> None:
    blob = pcap_bytes(10**18, 5)
    stream = StreamInput("shop/web-0", InterfaceInfo("shop/web-0"), parse_file_header(blob),
                         iter([blob[FILE_HEADER_LEN:-3]]))
    with open(os.path.join(tmp_path, "o"), "wb") as out, pytest.raises(PcapFormatError, match="shop/web-0"):
        merge_streams([stream], out)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()
    client.files = {"web-0": pcap_bytes(1_700_000_001 * 10**9, 300), "web-1": pcap_bytes(1_700_000_001 * 10**9 + 500,
                                                                                         200)}
    client.get = lambda cid: capture(control_pb2.CAPTURE_STATE_DONE)
    monkeypatch.setattr(get_cmd, "CollectorClient", client)
    return client


def test_get_merge_streams_each_pod_and_writes_what_the_file_path_writes(fake: FakeClient, tmp_path: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    requests: list[list[str]] = []
    download = fake.download

    def counting(capture_id: str, pods: list[str] | None = None, **kw: object) -> Iterator[control_pb2.DownloadChunk]:
        requests.append(list(pods or []))
        return download(capture_id, pods, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fake, "download", counting)
    streamed = os.path.join(tmp_path, "streamed.pcapng")
    r = CliRunner().invoke(main.cli, ["get", CID, "--merge", streamed], prog_name="podcap", catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert requests == [["uid-web-0"], ["uid-web-1"]]  # one stream per pod
    assert os.listdir(tmp_path) == ["streamed.pcapng"]  # no per-pod files, no temporary directory

    requests.clear()
    monkeypatch.setattr(get_cmd, "MAX_STREAMS", 1)  # two pods: through files
    through_files = os.path.join(tmp_path, "files.pcapng")
    r = CliRunner().invoke(main.cli, ["get", CID, "--merge", through_files], prog_name="podcap",
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert requests == [[]]
    with open(streamed, "rb") as a, open(through_files, "rb") as b:
        assert a.read() == b.read()
    assert len(read_pcapng(streamed).packets) == 500


def test_a_stream_cut_short_fails_and_leaves_no_output(fake: FakeClient, tmp_path: str) -> None:
    fake.truncate = 100
    out = os.path.join(tmp_path, "m.pcapng")
    r = CliRunner().invoke(main.cli, ["get", CID, "--merge", out], prog_name="podcap")
    assert r.exit_code == 1 and "incomplete" in r.output
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("why", ["many pods", "no C library"])
def test_many_pods_or_no_c_go_through_files(fake: FakeClient, tmp_path: str, monkeypatch: pytest.MonkeyPatch,
                                             why: str) -> None:
    if why == "many pods":
        monkeypatch.setattr(get_cmd, "MAX_STREAMS", 0)
    else:
        monkeypatch.setattr(pcapmerge, "_LIB", None)
    opened: list[int] = []
    monkeypatch.setattr(pod_streams.PodStreams, "__enter__", lambda self: opened.append(1) or self)
    out = os.path.join(tmp_path, "m.pcapng")
    r = CliRunner().invoke(main.cli, ["get", CID, "--merge", out], prog_name="podcap", catch_exceptions=False)
    assert r.exit_code == 0 and opened == []
    assert len(read_pcapng(out).packets) == 500



MEMORY_SCRIPT = """
import struct
from podcap.collector.cli.get.merge import StreamInput, merge_streams
from podcap.formats.pcapng import InterfaceInfo
from podcap.formats.pcap import FileFormat

def pod(k):
    frame = bytes([k]) * 1000
    block = b"".join(struct.pack("<IIII", 1_700_000_000 + i // 100, (i % 100) * 1000 + k, len(frame), len(frame))
                     + frame for i in range(1000))  # ~1 MiB of records
    for _ in range(200):
        yield block  # the same times again and again: an input that is not time-ordered is merged as it is

fmt = FileFormat(1, 65535, True)
with open("/dev/null", "wb") as out:
    counts = merge_streams([StreamInput(f"ns/p{k}", InterfaceInfo(f"ns/p{k}"), fmt, pod(k)) for k in range(4)], out)
# VmHWM: this process's own peak (ru_maxrss would also count the parent it was forked from, up to the exec)
with open("/proc/self/status") as f:
    peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(sum(counts), peak_kib // 1024)
"""


def test_memory_stays_bounded_whatever_the_size() -> None:
    """800 MB of records from 4 streams merge in a few MiB of buffers (the process peaks far below the data)."""
    r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    packets, peak_mib = (int(x) for x in r.stdout.split())
    assert packets == 4 * 200 * 1000
    assert peak_mib < 64, f"peak RSS {peak_mib} MiB for 800 MB merged"
