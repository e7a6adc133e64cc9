"""Per-pod segments: every segment is a valid pcap file, rotation by size and time, paths stay in the data dir."""

import os
import struct

import pytest

from podcap.collector.storage.local import PodWriter, StorageError, list_segments, pod_dir
from podcap.pcapfile import FileFormat, read_file

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


def test_failed_write_leaves_the_segment_valid_and_the_retry_lands_at_its_end(tmp_path: str,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fills mid-write: the partial chunk is cut off and the retried chunk follows without a hole."""
    import errno

    from podcap.collector.storage import local

    w = PodWriter(str(tmp_path), FMT, segment_bytes=1 << 20, segment_seconds=0, next_index=1)
    w.append(records(3), packets=3, first_ts_ns=1, last_ts_ns=1)
    real_write = os.write
    calls = {"n": 0}

    def full_disk(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[:50])  # a short write ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(local.os, "write", full_disk)
    with pytest.raises(StorageError) as e:
        w.append(records(2, start=3), packets=2, first_ts_ns=1, last_ts_ns=1)
    assert e.value.disk_full
    monkeypatch.setattr(local.os, "write", real_write)
    w.append(records(2, start=3), packets=2, first_ts_ns=1, last_ts_ns=1)
    w.close()
    (seg,) = list_segments(str(tmp_path))
    _, recs = read_file(seg)
    assert [int.from_bytes(r.data[:4], "big") for r in recs] == [0, 1, 2, 3, 4]


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
