"""Per-pod segments: every segment is a valid pcap file, rotation by size and time, paths stay in the data dir."""

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podcap.collector.storage.base import StorageError
from podcap.collector.storage.local import PodWriter, list_segments, pod_dir
from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat, read_file

FMT = FileFormat(1, 262144, True)


def records(n: int, start: int = 0, size: int = 100) -> bytes:
    return b"".join(struct.pack("<IIII", 1, i, size, size) + i.to_bytes(4, "big") * (size // 4)
                    for i in range(start, start + n))


def test_rotation_by_size_keeps_every_segment_valid(tmp_path: str) -> None:
    d = os.path.join(tmp_path, "p")
    w = PodWriter(d, FMT, segment_bytes=24 + 116 * 10, segment_seconds=0, next_index=1)
    for k in range(7):
        w.append(records(4, start=k * 4), packets=4, first_ts_ns=1, last_ts_ns=1, now=1.0)
    w.close()
    segs = list_segments(d)
    assert len(segs) == 4  # 4+4 | 4+4 | 4+4 | 4 (a chunk never splits)
    seen = []
    for s in segs:
        fmt, recs = read_file(s)
        assert fmt == FMT
        assert os.path.getsize(s) <= 24 + 116 * 10
        seen += [int.from_bytes(r.data[:4], "big") for r in recs]
    assert seen == list(range(28))


def test_rotation_by_time(tmp_path: str) -> None:
    w = PodWriter(str(tmp_path), FMT, segment_bytes=1 << 30, segment_seconds=10, next_index=1)
    for now in (100.0, 105.0, 111.0):
        w.append(records(1), packets=1, first_ts_ns=1, last_ts_ns=1, now=now)
    w.close()
    assert [len(read_file(s)[1]) for s in list_segments(str(tmp_path))] == [2, 1]


def test_writer_numbers_segments_from_next_index(tmp_path: str) -> None:
    for i in (1, 2):
        w = PodWriter(str(tmp_path), FMT, segment_bytes=1 << 20, segment_seconds=0, next_index=i)
        w.append(records(2), packets=2, first_ts_ns=1, last_ts_ns=1)
        w.close()
    assert [os.path.basename(s) for s in list_segments(str(tmp_path))] == ["000001.pcap", "000002.pcap"]


@pytest.mark.parametrize("parts", [("..", "x", "y"), ("c", "..", ".."), ("c", "/etc", "x")])
def test_pod_dir_refuses_escapes(tmp_path: str, parts: tuple[str, str, str]) -> None:
    with pytest.raises(StorageError):
        pod_dir(str(tmp_path), *parts)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_failed_write_leaves_the_segment_valid_and_the_retry_lands_at_its_end(
        tmp_path: str, monkeypatch: pytest.MonkeyPatch, direct: bool) -> None:
    """A disk that fills mid-write: the partial chunk is cut off and the retried chunk follows without a hole."""
    import errno

    from podcap.collector.storage import appender

    w = PodWriter(str(tmp_path), FMT, segment_bytes=1 << 20, segment_seconds=0, next_index=1, direct=direct)
    w.append(records(3), packets=3, first_ts_ns=1, last_ts_ns=1)
    w.sync()
    assert w._file is not None and w._file.direct == direct
    real_pwrite = os.pwrite
    calls = {"n": 0}

    def full_disk(fd: int, data: bytes, offset: int) -> int:
        calls["n"] += 1
        if calls["n"] == 1:  # a partial write (one whole block for direct I/O) ...
            return real_pwrite(fd, memoryview(data)[: appender.BLOCK if direct else 50], offset)
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(appender.os, "pwrite", full_disk)
    with pytest.raises(StorageError) as e:
        w.append(records(100, start=3), packets=100, first_ts_ns=1, last_ts_ns=1)
    assert e.value.disk_full and calls["n"] == 2
    monkeypatch.setattr(appender.os, "pwrite", real_pwrite)
    w.append(records(100, start=3), packets=100, first_ts_ns=1, last_ts_ns=1)
    w.close()
    (seg,) = list_segments(str(tmp_path))
    _, recs = read_file(seg)
    assert [int.from_bytes(r.data[:4], "big") for r in recs] == list(range(103))


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=25), publish_after=st.sets(st.integers(0, 25)),
       sync_after=st.sets(st.integers(0, 25)))
def test_appends_publishes_and_syncs_in_any_order_give_exactly_the_records(
        tmp_path_factory: pytest.TempPathFactory, direct: bool, sizes: list[int], publish_after: set[int],
        sync_after: set[int]) -> None:
    """Whatever mix of chunk sizes (around the 4 KiB block), the published file always holds exactly what was
    appended, and the closed file parses to every record in order."""
    d = str(tmp_path_factory.mktemp("seg"))
    w = PodWriter(d, FMT, segment_bytes=1 << 30, segment_seconds=0, next_index=1, direct=direct)
    expected = FILE_HEADER_LEN
    n = 0
    for i, k in enumerate(sizes):
        if k:
            added, _ = w.append(records(k, start=n), packets=k, first_ts_ns=1, last_ts_ns=1)
            expected += len(records(k, start=n))
            n += k
        if i in publish_after:
            w.publish()
            assert w.current is not None and os.path.getsize(w.current.locator) == expected == w.current.bytes
        if i in sync_after:
            w.sync()
    w.close()
    (seg,) = list_segments(d)
    assert os.path.getsize(seg) == expected
    _, recs = read_file(seg)
    assert [int.from_bytes(r.data[:4], "big") for r in recs] == list(range(n))


def test_recover_segment_cuts_to_the_recorded_size_and_whole_records(tmp_path: str) -> None:
    from podcap.collector.storage.local import recover_segment

    w = PodWriter(str(tmp_path), FMT, segment_bytes=1 << 20, segment_seconds=0, next_index=1)
    w.append(records(4), packets=4, first_ts_ns=1, last_ts_ns=1)
    recorded = w.current.bytes if w.current else 0
    w.append(records(2, start=4), packets=2, first_ts_ns=1, last_ts_ns=1)
    w.close()
    (seg,) = list_segments(str(tmp_path))
    with open(seg, "ab") as f:
        f.write(records(1, start=6)[:40])
    assert recover_segment(seg, recorded, FMT) == recorded
    assert len(read_file(seg)[1]) == 4
    assert recover_segment(seg, 10**9, FMT) == recorded  # never beyond whole records


def test_direct_writes_refused_fall_back_to_buffered(tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that opens with O_DIRECT but refuses the writes (EINVAL): the chunk is written buffered,
    nothing is lost, and the writer stays buffered."""
    import errno

    from podcap.collector.storage import appender

    w = PodWriter(str(tmp_path), FMT, segment_bytes=1 << 20, segment_seconds=0, next_index=1, direct=True)
    w.append(records(3), packets=3, first_ts_ns=1, last_ts_ns=1)
    assert w._file is not None and w._file.direct
    dfd = w._file._dfd
    real_pwrite = os.pwrite

    def no_direct(fd: int, data: bytes, offset: int) -> int:
        if fd == dfd:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(appender.os, "pwrite", no_direct)
    w.append(records(100, start=3), packets=100, first_ts_ns=1, last_ts_ns=1)
    assert not w._file.direct
    w.append(records(7, start=103), packets=7, first_ts_ns=1, last_ts_ns=1)
    w.close()
    (seg,) = list_segments(str(tmp_path))
    assert [int.from_bytes(r.data[:4], "big") for r in read_file(seg)[1]] == list(range(110))


def test_a_close_that_cannot_write_the_last_block_keeps_it_for_the_next_try(tmp_path: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With direct I/O the last partial block is only in memory until published: a close that cannot write it
    (disk full) must fail and keep it, not drop it."""
    import errno

    from podcap.collector.storage import appender

    w = PodWriter(str(tmp_path), FMT, segment_bytes=1 << 20, segment_seconds=0, next_index=1, direct=True)
    w.append(records(50), packets=50, first_ts_ns=1, last_ts_ns=1)  # 24 + 50 * 116 = 5824 bytes: one block + tail
    real_pwrite = os.pwrite

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(appender.os, "pwrite", full)
    with pytest.raises(StorageError) as e:
        w.close()
    assert e.value.disk_full and w.current is not None
    with pytest.raises(StorageError):
        w.sync()
    monkeypatch.setattr(appender.os, "pwrite", real_pwrite)
    w.close()
    (seg,) = list_segments(str(tmp_path))
    assert [int.from_bytes(r.data[:4], "big") for r in read_file(seg)[1]] == list(range(50))


def test_refused_direct_write_then_full_disk_leaves_no_hole(tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """EINVAL on the direct write, then ENOSPC on the buffered retry: the chunk is refused and what was stored
    before stays intact (no range of zeros where the earlier tail was)."""
    import errno

    from podcap.collector.storage import appender

    w = PodWriter(str(tmp_path), FMT, segment_bytes=1 << 20, segment_seconds=0, next_index=1, direct=True)
    w.append(records(8), packets=8, first_ts_ns=1, last_ts_ns=1)  # all of it in the in-memory tail
    assert w._file is not None
    dfd = w._file._dfd
    real_pwrite = os.pwrite
    state = {"tail_written": False}

    def refuse(fd: int, data: bytes, offset: int) -> int:
        if fd == dfd:
            raise OSError(errno.EINVAL, "Invalid argument")
        if not state["tail_written"]:  # the fallback publishes the tail ...
            state["tail_written"] = True
            return real_pwrite(fd, data, offset)
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(appender.os, "pwrite", refuse)
    with pytest.raises(StorageError):
        w.append(records(40, start=8), packets=40, first_ts_ns=1, last_ts_ns=1)
    monkeypatch.setattr(appender.os, "pwrite", real_pwrite)
    w.append(records(3, start=8), packets=3, first_ts_ns=1, last_ts_ns=1)
    w.close()
    (seg,) = list_segments(str(tmp_path))
    assert [int.from_bytes(r.data[:4], "big") for r in read_file(seg)[1]] == list(range(11))


def test_a_segment_whose_first_append_failed_counts_its_header_with_the_retry(
        tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes an append reports are what the disk holds: a new segment's header is reported once, also when
    the append that opened it failed (otherwise retention could make a pod's stored bytes negative)."""
    import errno

    from podcap.collector.storage import appender

    w = PodWriter(str(tmp_path), FMT, segment_bytes=1 << 20, segment_seconds=0, next_index=1)
    real_pwrite = os.pwrite

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(appender.os, "pwrite", full)
    with pytest.raises(StorageError):
        w.append(records(2, size=4096), packets=2, first_ts_ns=1, last_ts_ns=1)
    monkeypatch.setattr(appender.os, "pwrite", real_pwrite)
    assert w.header_cost(100, 0.0) == FILE_HEADER_LEN
    added, started = w.append(records(2), packets=2, first_ts_ns=1, last_ts_ns=1)
    w.close()
    (seg,) = list_segments(str(tmp_path))
    assert started is None and added == os.path.getsize(seg) == FILE_HEADER_LEN + len(records(2))
