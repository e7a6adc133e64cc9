"""Marks in a merged pcapng (a recorder save's triggers, issue 24): each is a comment (``opt_comment``) on the first
packet written at or after its time, of its pod's interface or of any, and a section comment saying whether it has
one. The C merge and the Python path write the same bytes; every case is checked on both by parsing the file (and
once with Wireshark's tshark, ``frame.comment``)."""

from __future__ import annotations

import os

import pytest

from podcap.collector.cli.get import pcapmerge
from podcap.collector.cli.get.merge import Mark, MergeInput
from podcap.collector.cli.get.pcapng import merge_section, trigger_comment
from podcap.formats.pcapng import InterfaceInfo
from podcap.v1 import common_pb2, control_pb2
from tests.pcapng_reader import PcapngFile, read_pcapng
from tests.unit.collector.cli.test_merge_native import merge_both
from tests.unit.collector.cli.test_pcapng import BASE_NS, stats, tshark, write_pcap

pytestmark = pytest.mark.skipif(not pcapmerge.available(), reason="podcap's C library is not built (no C compiler)")

@pytest.fixture
def two_pods(tmp_path: str) -> list[MergeInput]:
    """Pod 0 (nanoseconds) at BASE + 0, 10, 20, ... 90 us; pod 1 (microseconds) at BASE + 5, 25, 45, 65 us."""
    a, b = (os.path.join(tmp_path, f"{x}.pcap") for x in "ab")
    write_pcap(a, [BASE_NS + i * 10_000 for i in range(10)], pod=0)
    write_pcap(b, [BASE_NS - BASE_NS % 1000 + 5_000 + i * 20_000 for i in range(4)], pod=1, nanosecond=False)
    return [MergeInput(a, InterfaceInfo("shop/web-0"), stats(10)), MergeInput(b, InterfaceInfo("shop/web-1"))]


def _merge(tmp_path: str, inputs: list[MergeInput], marks: list[Mark], monkeypatch: pytest.MonkeyPatch, *,
           one_copy_ns: int = 0) -> tuple[str, PcapngFile]:
    """The merged file by the C core and by the Python path: the same bytes; written out, parsed."""
    native, python = merge_both(tmp_path, inputs, monkeypatch, marks=marks, one_copy_ns=one_copy_ns)
    assert native == python, "the C merge and the Python path differ"
    path = os.path.join(tmp_path, "marked.pcapng")
    with open(path, "wb") as f:
        f.write(native)
    return path, read_pcapng(path)


def _commented(f: PcapngFile) -> list[tuple[int, int, tuple[str, ...]]]:
    """(index in the file, interface, comments) of each packet that has comments."""
    return [(k, p.interface_id, p.comments) for k, p in enumerate(f.packets) if p.comments]


def test_without_marks_no_packet_has_a_comment(tmp_path: str, two_pods: list[MergeInput],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _, f = _merge(str(tmp_path), two_pods, [], monkeypatch)
    assert len(f.packets) == 14 and _commented(f) == []
    assert f.comments == ["podcap capture abc123def456"]


def test_a_mark_at_the_first_packets_time_and_one_before_it_go_on_the_first_packet(
        tmp_path: str, two_pods: list[MergeInput], monkeypatch: pytest.MonkeyPatch) -> None:
    marks = [Mark(BASE_NS - 10**9, None, "before"), Mark(BASE_NS, None, "at")]
    _, f = _merge(str(tmp_path), two_pods, marks, monkeypatch)
    assert f.packets[0].ts_ns == BASE_NS
    assert _commented(f) == [(0, 0, ("before", "at"))]
    assert f.comments[1:] == ["before; also the comment of the first packet at or after it",
                              "at; also the comment of the first packet at or after it"]


def test_a_mark_between_packets_goes_on_the_next_packet_of_any_pod(
        tmp_path: str, two_pods: list[MergeInput], monkeypatch: pytest.MonkeyPatch) -> None:
    _, f = _merge(str(tmp_path), two_pods, [Mark(BASE_NS + 21_000, None, "oom kill")], monkeypatch)
    [(k, iface, comments)] = _commented(f)
    assert comments == ("oom kill",)
    assert f.packets[k].ts_ns >= BASE_NS + 21_000 > f.packets[k - 1].ts_ns
    assert iface == 1  # pod 1's packet at BASE + 25 us (microseconds) comes before pod 0's at BASE + 30 us


def test_a_pods_mark_waits_for_that_pods_next_packet(tmp_path: str, two_pods: list[MergeInput],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Pod 0's packets at 30, 40 us pass; the mark of pod 1 at 26 us goes on pod 1's packet at 45 us; pod 0's own
    mark at the same time on pod 0's packet at 30 us."""
    marks = [Mark(BASE_NS + 26_000, 1, "restart web-1"), Mark(BASE_NS + 26_000, 0, "restart web-0")]
    path, f = _merge(str(tmp_path), two_pods, marks, monkeypatch)
    got = {c[0]: (f.packets[k].interface_id, f.packets[k].ts_ns) for k, _, c in _commented(f)}
    assert got == {"restart web-1": (1, BASE_NS - BASE_NS % 1000 + 45_000), "restart web-0": (0, BASE_NS + 30_000)}
    assert f.comments[1:] == ["restart web-1; also the comment of the first packet of shop/web-1 at or after it",
                              "restart web-0; also the comment of the first packet of shop/web-0 at or after it"]
    # Wireshark shows them at those packets (frame.comment; tshark's frame numbers count from 1).
    rows = tshark(path, "frame.number", "frame.interface_name", "frame.comment", extra=("-Y", "frame.comment"))
    assert [(int(n), name, c) for n, name, c in rows] == sorted(
        (k + 1, f"shop/web-{i}", c[0]) for k, i, c in _commented(f))


def test_two_marks_at_the_same_time_are_both_on_one_packet_in_order(
        tmp_path: str, two_pods: list[MergeInput], monkeypatch: pytest.MonkeyPatch) -> None:
    marks = [Mark(BASE_NS + 50_000, None, "first"), Mark(BASE_NS + 50_000, None, "second"),
             Mark(BASE_NS + 60_000, 0, "third")]
    _, f = _merge(str(tmp_path), two_pods, marks, monkeypatch)
    assert [(f.packets[k].ts_ns - BASE_NS, c) for k, _, c in _commented(f)] == [
        (50_000, ("first", "second")), (60_000, ("third",))]


def test_a_mark_after_the_last_packet_is_a_section_comment_only(
        tmp_path: str, two_pods: list[MergeInput], monkeypatch: pytest.MonkeyPatch) -> None:
    """After every packet; after pod 1's last packet (pod 0 has later ones); and marks given out of order."""
    marks = [Mark(BASE_NS + 10**9, None, "late"), Mark(BASE_NS + 70_000, 1, "web-1 after its last"),
             Mark(BASE_NS + 70_000, 0, "web-0")]
    _, f = _merge(str(tmp_path), two_pods, marks, monkeypatch)
    assert [(f.packets[k].ts_ns - BASE_NS, i, c) for k, i, c in _commented(f)] == [(70_000, 0, ("web-0",))]
    assert f.comments[1:] == [
        "late; no packet at or after it in this file: a section comment only",
        "web-1 after its last; no packet of shop/web-1 at or after it in this file: a section comment only",
        "web-0; also the comment of the first packet of shop/web-0 at or after it"]
    assert len(f.packets) == 14


def test_a_marked_second_sighting_is_kept(tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One copy per packet: pod 1 sees pod 0's packets 1 us later, so all of its copies are left out, but for the
    one that carries pod 1's mark (the comment stays at its time)."""
    a, b = (os.path.join(tmp_path, f"{x}.pcap") for x in "ab")
    write_pcap(a, [BASE_NS + i * 10_000 for i in range(5)], pod=7)
    write_pcap(b, [BASE_NS + 1_000 + i * 10_000 for i in range(5)], pod=7)
    inputs = [MergeInput(a, InterfaceInfo("shop/a")), MergeInput(b, InterfaceInfo("shop/b"))]
    _, f = _merge(str(tmp_path), inputs, [Mark(BASE_NS + 15_000, 1, "on b")], monkeypatch, one_copy_ns=10**6)
    assert [(p.interface_id, p.ts_ns - BASE_NS, p.comments) for p in f.packets if p.interface_id == 1] == [
        (1, 21_000, ("on b",))]
    assert len(f.packets) == 6


def test_a_saves_triggers_become_marks_of_the_files_pods_and_the_others_stay_section_comments() -> None:
    """``merge_section``: a trigger about a pod of the file marks that pod's interface (found by uid, else by name),
    one about no pod marks any packet, one about a pod not in the file stays a plain section comment."""
    pods = [common_pb2.Pod(namespace="shop", name=f"web-{i}", uid=f"u{i}") for i in range(2)]
    save = control_pb2.RecorderSaveInfo(recorder_id="rec-1", from_unix_ns=BASE_NS - 10**9, to_unix_ns=BASE_NS + 10**9)
    for ts, pod, detail in [(BASE_NS, common_pb2.Pod(namespace="shop", name="web-1", uid="u1"), "by uid"),
                            (BASE_NS + 1, common_pb2.Pod(namespace="shop", name="web-0"), "by name"),
                            (BASE_NS + 2, common_pb2.Pod(), "no pod"),
                            (BASE_NS + 3, common_pb2.Pod(namespace="shop", name="db-0", uid="u9"), "elsewhere")]:
        save.triggers.add(recorder_id="rec-1", reason=control_pb2.RECORDER_TRIGGER_MANUAL, unix_ns=ts, pod=pod,
                          detail=detail)
    status = control_pb2.CaptureStatus(id="abc123def456", save=save)
    section, marks = merge_section(status, pods)
    texts = [trigger_comment(save, t) for t in save.triggers]
    assert marks == [Mark(BASE_NS, 1, texts[0]), Mark(BASE_NS + 1, 0, texts[1]), Mark(BASE_NS + 2, None, texts[2])]
    assert section.comments[-1] == texts[3] and not any(t in section.comments for t in texts[:3])
    assert merge_section(control_pb2.CaptureStatus(id="abc123def456"), pods)[1] == []


def test_a_pod_without_packets_carries_no_mark_even_one_at_time_zero(tmp_path: str, two_pods: list[MergeInput],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    empty = os.path.join(tmp_path, "empty.pcap")
    write_pcap(empty, [], pod=2)
    inputs = [*two_pods, MergeInput(empty, InterfaceInfo("shop/idle"))]
    _, f = _merge(str(tmp_path), inputs, [Mark(0, 2, "idle pod")], monkeypatch)
    assert _commented(f) == []
    assert f.comments[1:] == ["idle pod; no packet of shop/idle at or after it in this file: a section comment only"]
