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
    w = PodWriter(d, FMT, segment_bytes=24 + 116 * 10, segment_seconds=0)
    for k in range(7):
        w.append(records(4, start=k * 4), now=1.0)
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
    w = PodWriter(str(tmp_path), FMT, segment_bytes=1 << 30, segment_seconds=10)
    w.append(records(1), now=100.0)
    w.append(records(1), now=105.0)
    w.append(records(1), now=111.0)
    w.close()
    assert [len(read_file(s)[1]) for s in list_segments(str(tmp_path))] == [2, 1]


def test_new_writer_continues_numbering(tmp_path: str) -> None:
    for _ in range(2):
        w = PodWriter(str(tmp_path), FMT, segment_bytes=1 << 20, segment_seconds=0)
        w.append(records(2))
        w.close()
    assert [os.path.basename(s) for s in list_segments(str(tmp_path))] == ["000001.pcap", "000002.pcap"]


@pytest.mark.parametrize("parts", [("..", "x", "y"), ("c", "..", ".."), ("c", "/etc", "x")])
def test_pod_dir_refuses_escapes(tmp_path: str, parts: tuple[str, str, str]) -> None:
    with pytest.raises(StorageError):
        pod_dir(str(tmp_path), *parts)
