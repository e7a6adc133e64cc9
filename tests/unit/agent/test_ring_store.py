"""Flight-recorder rings on disk (``podcap.agent.recorder``): the per-ring and per-node budgets and the node's free
disk, always oldest data first and every removal counted; the index rebuilt from the files after a restart (a torn
tail cut off); a saved window cut exactly out of the segments, with its accounting."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from podcap.agent.recorder import window as saving
from podcap.agent.recorder.ring import RingBusyError
from podcap.agent.recorder.store import RingStore, StoreSettings
from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat, iter_records

FMT = FileFormat(linktype=1, snaplen=2000, nanosecond=True)
SEC = 1_000_000_000
BASE = 1_700_000_000 * SEC
KEY = ("rec-1", "uid-a")
KEY2 = ("rec-1", "uid-b")


def records(first: int, count: int, size: int = 1000, *, step_ns: int = 10_000_000) -> tuple[bytes, int, int]:
    """``count`` records numbered from ``first`` (the number is in the payload), one every ``step_ns``."""
    out = bytearray()
    for i in range(first, first + count):
        ts = BASE + i * step_ns
        out += struct.pack("<IIII", ts // SEC, ts % SEC, size, size) + struct.pack("<I", i) + bytes(size - 4)
    return bytes(out), BASE + first * step_ns, BASE + (first + count - 1) * step_ns


def numbers(data: bytes) -> list[int]:
    return [struct.unpack_from("<I", r.data)[0] for r in iter_records(data, FMT)]


def store(tmp_path: Path, *, budget: int = 1 << 30, free: list[int] | None = None) -> RingStore:
    free_box = free if free is not None else [1 << 40]
    return RingStore(StoreSettings(str(tmp_path / "rings"), budget_bytes=budget, min_free_bytes=1 << 20),
                     free_bytes=lambda: free_box[0])


def fill(s: RingStore, key: tuple[str, str], start: int, chunks: int, per_chunk: int = 100) -> int:
    n = start
    for _ in range(chunks):
        data, first, last = records(n, per_chunk)
        assert s.write(key, data, per_chunk, FMT, first, last)
        n += per_chunk
    return n


def test_ring_limit_evicts_oldest_segments_and_counts_them(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.ensure(KEY, pod={"name": "web-0"}, max_bytes=2 << 20, max_duration_ns=0, keep_gone_ns=0)
    fill(s, KEY, 0, 100)  # 100 chunks of 100 x 1016 bytes: ~10 MB into a 2 MiB ring
    ring = s.get(KEY)
    assert ring is not None
    assert ring.held_bytes <= 2 << 20 and ring.held_bytes >= (2 << 20) * 6 // 8
    assert ring.counters.written == 10_000
    assert ring.counters.ring_evicted + ring.held_packets == 10_000
    # The newest data stays: the last packet written is the ring's newest, and what is held is one contiguous run.
    assert ring.newest_ns == BASE + 9_999 * 10_000_000
    held = b"".join(Path(seg.path).read_bytes()[FILE_HEADER_LEN:] for seg in ring.segments)
    nums = numbers(held)
    assert nums == list(range(10_000 - len(nums), 10_000))
    assert sum(span.lost.get("ring_evicted", 0) for span in ring.spans) == ring.counters.ring_evicted


def test_duration_limit(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.ensure(KEY, pod={}, max_bytes=0, max_duration_ns=20 * SEC, keep_gone_ns=0)
    # 100 s of traffic, 10 packets a second; segments of at most 20/8 s.
    for n in range(0, 1000, 10):
        data, first, last = records(n, 10, 200, step_ns=SEC // 10)
        ring = s.get(KEY)
        assert ring is not None
        ring.segments and setattr(ring.segments[-1], "opened_ns", 0)  # segments rotate by time: age them now
        assert s.write(KEY, data, 10, FMT, first, last)
    ring = s.get(KEY)
    assert ring is not None
    span = ring.newest_ns - ring.oldest_ns
    assert 20 * SEC - 3 * SEC <= span <= 20 * SEC + 3 * SEC, span / SEC


def test_node_budget_takes_from_the_largest_ring(tmp_path: Path) -> None:
    s = store(tmp_path, budget=4 << 20)
    s.ensure(KEY, pod={}, max_bytes=8 << 20, max_duration_ns=0, keep_gone_ns=0)
    s.ensure(KEY2, pod={}, max_bytes=8 << 20, max_duration_ns=0, keep_gone_ns=0)
    fill(s, KEY2, 0, 5)  # a quiet pod: ~0.5 MB
    fill(s, KEY, 0, 100)  # a busy one: ~10 MB into a node budget of 4 MiB
    quiet, busy = s.get(KEY2), s.get(KEY)
    assert quiet is not None and busy is not None
    assert quiet.held_bytes + busy.held_bytes <= 4 << 20
    assert quiet.counters.ring_evicted == 0 and quiet.held_packets == 500  # the busy ring paid
    assert busy.counters.ring_evicted > 0


def test_full_disk_shrinks_rings_then_counts_unwritten(tmp_path: Path) -> None:
    free = [1 << 40]
    s = store(tmp_path, free=free)
    s.ensure(KEY, pod={}, max_bytes=64 << 20, max_duration_ns=0, keep_gone_ns=0)
    fill(s, KEY, 0, 30)
    ring = s.get(KEY)
    assert ring is not None
    held_before = ring.held_packets
    # The disk fills up (something else on the node): each write must leave 1 MiB free.
    free[0] = (1 << 20) + 50_000
    data, first, last = records(3000, 100)
    s.write(KEY, data, 100, FMT, first, last)  # evicts everything it can: still no room
    assert ring.counters.ring_evicted == held_before
    assert ring.counters.ring_unwritten == 100
    assert ring.held_packets == 0
    # Space comes back: writing resumes.
    free[0] = 1 << 40
    data, first, last = records(3100, 100)
    assert s.write(KEY, data, 100, FMT, first, last)
    assert ring.held_packets == 100


def test_index_rebuilt_after_restart_with_torn_tail(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.ensure(KEY, pod={"namespace": "shop", "name": "web-0"}, max_bytes=2 << 20, max_duration_ns=0,
             keep_gone_ns=0)
    fill(s, KEY, 0, 50)
    ring = s.get(KEY)
    assert ring is not None
    before = (ring.held_packets, ring.held_bytes, ring.oldest_ns, ring.newest_ns, ring.counters.ring_evicted)
    newest = ring.segments[-1].path
    # The agent dies mid-write: no index update, half a record at the end of the newest segment.
    with open(newest, "ab") as f:
        f.write(records(99_999, 1)[0][:500])
    ring.unlock()  # the process is gone: so is its lock
    s2 = store(tmp_path)
    ring2 = s2.get(KEY)
    assert ring2 is not None
    assert (ring2.held_packets, ring2.held_bytes, ring2.oldest_ns, ring2.newest_ns,
            ring2.counters.ring_evicted) == before
    assert os.path.getsize(newest) == FILE_HEADER_LEN + ring2.segments[-1].bytes  # the torn record cut off
    assert ring2.pod == {"namespace": "shop", "name": "web-0"}
    # And it keeps writing after the restart, into a new segment.
    s2.ensure(KEY, pod={}, max_bytes=2 << 20, max_duration_ns=0, keep_gone_ns=0)
    fill(s2, KEY, 5000, 1)
    assert ring2.newest_ns == BASE + 5099 * 10_000_000


def test_index_lost_or_corrupt_is_rebuilt_from_the_files(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.ensure(KEY, pod={}, max_bytes=2 << 20, max_duration_ns=0, keep_gone_ns=0)
    fill(s, KEY, 0, 40)
    ring = s.get(KEY)
    assert ring is not None
    held = (ring.held_packets, ring.held_bytes, ring.oldest_ns, ring.newest_ns, len(ring.segments))
    s.close()
    index = tmp_path / "rings" / KEY[0] / KEY[1] / "ring.json"
    for garbage in ('{"segments": [{"number": "x"}, 7], "counters": []}', "{not json"):
        index.write_text(garbage)
        again = store(tmp_path)
        ring2 = again.get(KEY)
        assert ring2 is not None
        assert (ring2.held_packets, ring2.held_bytes, ring2.oldest_ns, ring2.newest_ns, len(ring2.segments)) == held
        again.close()


def test_saved_window_is_exact_and_accounted(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.ensure(KEY, pod={}, max_bytes=2 << 20, max_duration_ns=0, keep_gone_ns=0)
    fill(s, KEY, 0, 50)  # packets 0..4999, 10 ms apart; the ring keeps the newest ~2 MiB
    ring = s.get(KEY)
    assert ring is not None
    oldest_held = (ring.oldest_ns - BASE) // 10_000_000
    # A window reaching back past what the ring holds: [packet 1000, packet 4500).
    lo, hi = BASE + 1000 * 10_000_000, BASE + 4500 * 10_000_000
    snap = s.snapshot(KEY, lo, hi)
    assert snap is not None
    try:
        account = saving.account_losses(snap)
        chunks = list(saving.cut_window(snap, lo, hi, FMT, account, chunk_bytes=64 << 10))
    finally:
        saving.close_snapshot(snap)
    got = [n for c in chunks for n in numbers(c.records)]
    assert got == list(range(oldest_held, 4500))
    assert all(len(c.records) <= 64 << 10 for c in chunks)
    assert account.stored == len(got)
    # Every packet of the window the ring ever had is stored or counted evicted (whole segments: the evicted
    # segments that meet the window count all their packets).
    evicted = account.lost.get("ring_evicted", 0)
    assert evicted >= oldest_held - 1000
    assert account.received == account.stored + evicted
    assert set(account.lost) == {"ring_evicted"}


def test_a_ring_held_by_another_agent_is_never_shared(tmp_path: Path) -> None:
    """Two agents on one node (an overlapping rollout): the second neither loads nor writes the first one's ring."""
    first = store(tmp_path)
    first.ensure(KEY, pod={}, max_bytes=1 << 20, max_duration_ns=0, keep_gone_ns=0)
    fill(first, KEY, 0, 2)
    second = store(tmp_path)
    assert second.get(KEY) is None
    with pytest.raises(RingBusyError, match="in use by another process"):
        second.ensure(KEY, pod={}, max_bytes=1 << 20, max_duration_ns=0, keep_gone_ns=0)
    first.close()  # the first agent ends: the ring is free, with everything it held
    second.ensure(KEY, pod={}, max_bytes=1 << 20, max_duration_ns=0, keep_gone_ns=0)
    ring = second.get(KEY)
    assert ring is not None and ring.held_packets == 200


def test_delete_and_gone(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.ensure(KEY, pod={}, max_bytes=1 << 20, max_duration_ns=0, keep_gone_ns=10 * SEC)
    fill(s, KEY, 0, 3)
    s.mark_gone(KEY, True)
    ring = s.get(KEY)
    assert ring is not None
    assert s.expired_gone(ring.gone_since_ns + 5 * SEC) == []
    assert s.expired_gone(ring.gone_since_ns + 11 * SEC) == [KEY]
    s.delete(KEY)
    assert s.get(KEY) is None and not (tmp_path / "rings" / "rec-1").exists()
