"""``podcap.formats.selection``, the one rule for what a read means: which pods selectors name, which time ranges
overlap a window (0: unknown or unbounded), and which records a window and a filter keep — read from segment files
in blocks, a torn tail ending the walk, a segment's walk ending at its first record after the window."""

from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO

import pytest

from podcap.formats import selection
from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat, count_file_records, iter_records, parse_file_header
from podcap.formats.selection import Window, names_pod, overlaps, pod_selected, select_records
from podcap.names import NodeName, PodUid
from podcap.pods import PodRef
from podcap.v1 import common_pb2

FMT = FileFormat(linktype=1, snaplen=200, nanosecond=True)
POD = common_pb2.Pod(uid="u-1", namespace="shop", name="web-0")


@pytest.mark.parametrize(("selectors", "selected"), [
    ([], True), (["u-1"], True), (["web-0"], True), (["shop/web-0"], True), (["other", "web-0"], True),
    (["web"], False), (["shop"], False), (["other/web-0"], False), (["u-2"], False),
])
def test_selectors_name_a_pod_by_uid_name_or_namespace_slash_name(selectors: list[str], selected: bool) -> None:
    ref = PodRef("shop", "web-0", PodUid("u-1"), NodeName("n"))
    assert pod_selected(POD, selectors) is selected
    assert pod_selected(ref, set(selectors)) is selected  # the collector's own pod type, a set of selectors
    assert any(names_pod(s, POD) for s in selectors) is (selected and bool(selectors))


@pytest.mark.parametrize(("first", "last", "since", "until", "expected"), [
    (10, 20, 0, 0, True),  # no window
    (10, 20, 15, 0, True), (10, 20, 21, 0, False), (10, 20, 20, 0, True),  # since: inclusive at the end
    (10, 20, 0, 15, True), (10, 20, 0, 9, False), (10, 20, 0, 10, True),  # until: inclusive at the start
    (10, 20, 12, 18, True), (10, 20, 1, 5, False), (10, 20, 25, 30, False), (10, 20, 5, 25, True),
    (0, 0, 25, 30, True),  # a range not known yet (a segment with no packet): read
])
def test_a_range_overlaps_a_window_unless_it_ends_before_or_starts_after(
        first: int, last: int, since: int, until: int, expected: bool) -> None:
    assert overlaps(first, last, since, until) is expected


def record(ts: int, byte: int, caplen: int = 40) -> bytes:
    return struct.pack("<IIII", ts // 10**9, ts % 10**9, caplen, caplen) + bytes([byte]) * caplen


def segment(*records: bytes) -> tuple[BinaryIO, int]:
    data = FMT.header() + b"".join(records)
    return io.BytesIO(data), len(data)


class Odd:
    """A packet filter keeping packets whose first byte is odd (as a compiled BPF program answers: non-zero)."""

    def filter(self, packet: bytes, /) -> int:
        return packet[0] & 1


def kept(out: io.BytesIO) -> list[tuple[int, int]]:
    data = out.getvalue()
    return [(r.ts_ns, r.data[0]) for r in iter_records(data[FILE_HEADER_LEN:], parse_file_header(data))]


def test_records_inside_the_window_that_match_are_kept_across_segments() -> None:
    s = 10**9
    segs = [segment(*(record(i * s, i) for i in range(0, 5))), segment(*(record(i * s, i) for i in range(5, 10)))]
    out = io.BytesIO()
    size = select_records(segs, FMT, out, since_ns=3 * s, until_ns=7 * s)
    assert size == len(out.getvalue())
    assert kept(out) == [(i * s, i) for i in range(3, 8)]
    for f, _ in segs:
        f.seek(0)
    out = io.BytesIO()
    select_records(segs, FMT, out, since_ns=3 * s, bpf=Odd())
    assert kept(out) == [(i * s, i) for i in (3, 5, 7, 9)]


def test_nothing_selected_is_a_file_header_alone(tmp_path: str) -> None:
    out = io.BytesIO()
    assert select_records([segment(record(1, 1))], FMT, out, since_ns=5) == FILE_HEADER_LEN
    path = os.path.join(tmp_path, "empty.pcap")
    with open(path, "wb") as f:
        f.write(out.getvalue())
    assert count_file_records(path) == 0


def test_a_torn_tail_ends_the_walk_and_the_length_given_bounds_it() -> None:
    whole = FMT.header() + record(1, 1) + record(2, 2) + record(3, 3)
    torn = io.BytesIO(whole[:-5])  # the last record still being written
    out = io.BytesIO()
    select_records([(torn, len(whole) - 5)], FMT, out, since_ns=1)
    assert kept(out) == [(1, 1), (2, 2)]
    out = io.BytesIO()
    select_records([(io.BytesIO(whole), FILE_HEADER_LEN + 56)], FMT, out, since_ns=1)  # only the first record
    assert kept(out) == [(1, 1)]


def test_a_segment_is_read_in_blocks_and_its_walk_ends_after_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selection, "READ_BLOCK", 100)  # records straddle blocks

    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, n: int | None = -1, /) -> bytes:
            data = super().read(n)
            self.read_bytes += len(data)
            return data

    data = FMT.header() + b"".join(record(i, i) for i in range(100))
    f = Counting(data)
    out = io.BytesIO()
    select_records([(f, len(data))], FMT, out, since_ns=10, until_ns=20)
    assert kept(out) == [(i, i) for i in range(10, 21)]
    assert f.read_bytes < len(data) // 2  # stopped at the first record after the window


def test_a_window_is_whole_only_without_bounds_and_filter() -> None:
    assert Window().whole
    assert not Window(since_ns=1).whole and not Window(until_ns=1).whole and not Window(bpf="tcp").whole
