"""Every flight-recorder ring on the node, and the budgets they share: per ring, per node, and the node's free disk.

The rings live under one directory (``podcap-agent --ring-dir``, a hostPath so they outlive the agent's pod). Before
each write the store makes room, always by removing the oldest data: first the ring's own limits (bytes and age),
then the node's budget (``--ring-budget-bytes``: the ring holding the most bytes gives its oldest segment), then the
node's free disk (the filesystem must keep ``min_free_bytes`` free; again the largest ring gives first). When no room
can be made — the budget or the disk is short even with the other rings emptied — the chunk is not written and its
packets count as ``ring_unwritten``: a full disk shrinks rings, never the node. Every removal is counted
(``ring_evicted``).

One lock serializes everything (the capture loop writes, the save threads snapshot windows, the session reads
status): each call is short (one write, a few unlinks).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from podcap.agent.recorder.ring import LostSpan, Ring, RingBusyError, RingError, Segment
from podcap.formats.pcap import FileFormat, PcapFormatError, scan_records

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RingKey = tuple[str, str]  # (recorder id, pod uid)


@dataclass(frozen=True)
class StoreSettings:
    directory: str
    # Bytes of records all rings on the node may hold together.
    budget_bytes: int = 1 << 30
    # Bytes the ring directory's filesystem must keep free; None = 5% of it, at most 2 GiB.
    min_free_bytes: int | None = None


def _default_reserve(directory: str) -> int:
    st = os.statvfs(directory)
    return min(2 << 30, st.f_blocks * st.f_frsize // 20)


@dataclass(frozen=True)
class WindowSnapshot:
    """What a save of a window needs from a ring, taken under the store's lock: the segments (opened, so that their
    removal does not take their data away while the save reads them) and the spans of lost data."""

    segments: list[tuple[Segment, int, int]]  # (segment, its record bytes at the snapshot, an open fd)
    spans: list[LostSpan]


class RingStore:
    def __init__(self, settings: StoreSettings, *, free_bytes: Callable[[], int] | None = None) -> None:
        """``free_bytes`` measures the filesystem's free bytes (statvfs by default; tests pass their own)."""
        self.settings = settings
        os.makedirs(settings.directory, mode=0o700, exist_ok=True)
        self._free = free_bytes or self._statvfs_free
        self.min_free = settings.min_free_bytes if settings.min_free_bytes is not None \
            else _default_reserve(settings.directory)
        self._lock = threading.Lock()
        self._rings: dict[RingKey, Ring] = {}
        self._load()

    def _statvfs_free(self) -> int:
        st = os.statvfs(self.settings.directory)
        return st.f_bavail * st.f_frsize

    def _load(self) -> None:
        """Every ring left on disk by an earlier agent (the index rebuilt from its files)."""
        root = self.settings.directory
        for recorder in sorted(os.listdir(root)):
            rdir = os.path.join(root, recorder)
            if not _NAME.match(recorder) or not os.path.isdir(rdir):
                continue
            for uid in sorted(os.listdir(rdir)):
                path = os.path.join(rdir, uid)
                if not _UID.match(uid) or not os.path.isdir(path):
                    continue
                try:
                    ring = Ring.load(path, recorder, uid)
                except RingBusyError as e:
                    log.warning("%s: not loaded (another agent on this node holds it)", e)
                    continue
                except OSError as e:
                    log.warning("ring %s: cannot load: %s", path, e)
                    continue
                # Not recording until the collector asks again: its keep duration runs from now.
                ring.gone_since_ns = ring.gone_since_ns or time.time_ns()
                self._rings[(recorder, uid)] = ring
                log.info("ring %s/%s found: %d segments, %d packets, %d bytes", recorder, uid,
                         len(ring.segments), ring.held_packets, ring.held_bytes)
        self._apply_limits()

    # ---- rings ----

    def keys(self) -> list[RingKey]:
        with self._lock:
            return list(self._rings)

    def ensure(self, key: RingKey, *, pod: dict[str, str], max_bytes: int, max_duration_ns: int,
               keep_gone_ns: int) -> None:
        """The ring of ``key``, created if new (or taken from the disk); its limits set (a restarted agent keeps
        the ring it finds). Raises RingBusyError when another process holds it, RingError when it cannot be
        created."""
        with self._lock:
            ring = self._rings.get(key)
            if ring is None:
                path = os.path.join(self.settings.directory, key[0], key[1])
                try:
                    os.makedirs(path, mode=0o700, exist_ok=True)
                except OSError as e:
                    raise RingError(f"cannot create ring {path}: {e}") from e
                # A ring left by an agent that still runs (an overlapping rollout) is not taken over.
                ring = Ring.load(path, key[0], key[1]) if os.listdir(path) else Ring(path, key[0], key[1], pod=pod)
                ring.lock()
                self._rings[key] = ring
            ring.pod = pod or ring.pod
            ring.max_bytes, ring.max_duration_ns, ring.keep_gone_ns = max_bytes, max_duration_ns, keep_gone_ns
            ring.gone_since_ns = 0
            self._apply_limits()
            ring.save_meta(force=True)

    def get(self, key: RingKey) -> Ring | None:
        with self._lock:
            return self._rings.get(key)

    def delete(self, key: RingKey) -> None:
        with self._lock:
            ring = self._rings.pop(key, None)
            if ring is not None:
                ring.delete()
                self._apply_limits()
        if ring is not None:
            try:
                os.rmdir(os.path.dirname(ring.path))  # the recorder's directory, once its last ring is gone
            except OSError:
                pass

    def _apply_limits(self) -> None:
        """Each ring's byte limit now: its own, within the node budget; a ring with neither limit shares the budget
        equally with the others (lock held)."""
        budget = self.settings.budget_bytes
        share = budget // max(1, len(self._rings))
        for ring in self._rings.values():
            own = ring.max_bytes or (0 if ring.max_duration_ns else share)
            ring.limit_bytes = min(own, budget) if own else budget

    # ---- writing (the capture loop) ----

    def write(self, key: RingKey, records: memoryview | bytes, packets: int, fmt: FileFormat, first_ns: int,
              last_ns: int) -> bool:
        """Write a chunk's records into the ring of ``key``, making room first (oldest data out). False when they
        could not be written (counted as ``ring_unwritten`` in the ring's time log). ``last_ns`` is an upper bound
        (a chunk's is its cut time): the records' own last timestamp is found by the C record walker."""
        size = len(records)
        try:
            last_ns = scan_records(records, fmt).last_ts_ns or last_ns
        except PcapFormatError as e:
            log.warning("ring %s/%s: a chunk's records are malformed (%s): not written", key[0], key[1], e)
            self.charge(key, {"ring_unwritten": packets})
            return False
        with self._lock:
            ring = self._rings.get(key)
            if ring is None:
                return False
            need = size + 24
            while ring.held_bytes + need > ring.limit_bytes and len(ring.segments) > 0 and ring.evict_oldest():
                pass
            for seg in ring.expired():
                if seg is ring.segments[0]:
                    ring.evict_oldest()
            if not self._room_for(need, ring):
                ring.charge({"ring_unwritten": packets}, first_ns, last_ns)
                return False
            try:
                ring.append(records, packets, fmt, first_ns, last_ns)
            except RingError as e:
                log.warning("%s", e)
                ring.close_segment()
                ring.charge({"ring_unwritten": packets}, first_ns, last_ns)
                return False
            ring.save_meta()
            return True

    def _room_for(self, need: int, writer: Ring) -> bool:
        """Evict, largest ring first, until ``need`` more bytes fit the node budget and the free-disk reserve
        (lock held). False when even emptying every ring would not make room."""
        budget = self.settings.budget_bytes
        held = sum(r.held_bytes for r in self._rings.values())  # O(rings): running totals per ring
        while held + need > budget:
            freed = self._evict_largest()
            if not freed:
                return False
            held -= freed
        while self._free() - need < self.min_free:
            if not self._evict_largest():
                return False
        return True

    def _evict_largest(self) -> int:
        """Remove the oldest segment of the ring holding the most; the record bytes freed (0: nothing left)."""
        victim = max(self._rings.values(), key=lambda r: r.held_bytes, default=None)
        if victim is None or not victim.segments:
            return 0
        before = victim.held_bytes
        victim.evict_oldest()
        victim.save_meta()
        return max(1, before - victim.held_bytes)

    def charge(self, key: RingKey, lost: dict[str, int]) -> None:
        """Losses of the ring's handle observed now (see ``Ring.charge``)."""
        now = time.time_ns()
        with self._lock:
            ring = self._rings.get(key)
            if ring is not None:
                ring.charge(lost, now, now)

    def observe(self, key: RingKey, stream_id: str, *, received: int, dropped: int, if_dropped: int,
                out_of_memory: int, unread: int) -> None:
        with self._lock:
            ring = self._rings.get(key)
            if ring is not None:
                ring.observe(stream_id, received, dropped, if_dropped, out_of_memory, unread)
                ring.save_meta()

    def count_trigger(self, key: RingKey, *, matches: int, fired: int) -> None:
        """Add trigger matches and firings (deltas) to the ring's counters."""
        with self._lock:
            ring = self._rings.get(key)
            if ring is not None:
                ring.counters.trigger_matches += matches
                ring.counters.trigger_fired += fired

    def close_segment(self, key: RingKey) -> None:
        """The handle stopped: the newest segment is closed (and the index written)."""
        with self._lock:
            ring = self._rings.get(key)
            if ring is not None:
                ring.close()

    def mark_gone(self, key: RingKey, gone: bool) -> None:
        with self._lock:
            ring = self._rings.get(key)
            if ring is not None:
                ring.gone_since_ns = (ring.gone_since_ns or time.time_ns()) if gone else 0
                ring.save_meta(force=True)

    def expired_gone(self, now_ns: int) -> list[RingKey]:
        """Rings of pods that left the node longer ago than their keep_gone duration."""
        with self._lock:
            return [k for k, r in self._rings.items()
                    if r.gone_since_ns and r.keep_gone_ns and now_ns - r.gone_since_ns > r.keep_gone_ns]

    def flush_meta(self) -> None:
        with self._lock:
            for ring in self._rings.values():
                ring.save_meta()

    def close(self) -> None:
        with self._lock:
            for ring in self._rings.values():
                ring.close()

    # ---- saves ----

    def snapshot(self, key: RingKey, from_ns: int, to_ns: int) -> WindowSnapshot | None:
        """The window of a ring (None: no such ring), its segment files opened."""
        with self._lock:
            ring = self._rings.get(key)
            if ring is None:
                return None
            segs, spans = ring.window(from_ns, to_ns)
            opened: list[tuple[Segment, int, int]] = []
            for seg, size in segs:
                try:
                    fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as e:
                    log.warning("ring %s: segment %d unreadable for a save: %s", ring.path, seg.number, e)
                    spans.append(LostSpan(seg.first_ns, seg.last_ns, {"spool_error": seg.packets, **seg.lost}))
                    continue
                opened.append((seg, size, fd))
            return WindowSnapshot(opened, list(spans))
