"""How the capture engine sizes what it allocates: chunks, kernel rings, loop pacing.

Every figure here was measured (tests/bench); the reasons are next to each value, so that a change of one is a
change of the reasoning too. ``auto_ring_bytes`` is pure, so it is unit-tested with a table.
"""

from __future__ import annotations

from dataclasses import dataclass

RING_BLOCK = 256 << 10  # libpcap 1.10's TPACKET_V3 block size (= its maximum snaplen); rings are whole blocks
# Two blocks at least, even past the budget: with one, the kernel has nowhere to write while the agent reads it.
MIN_RING = 2 * RING_BLOCK
# A ring is what covers the agent's worst wakeup latency: on a busy node (the generator competing for the CPU,
# ~1 Mpps of 128-byte frames, ~200 MB/s in the ring) the capture thread was measured waiting 20-40 ms after the
# kernel had data, so an 8 MiB ring (~40 ms) overflowed (0.3-0.8% dropped where tcpdump dropped none); 32 MiB
# (~160 ms) dropped nothing (tests/bench --p1-hostile). Only captures of a few pods get that much (the budget is
# shared).
# Bulk TCP between pods (GSO frames of 64 KiB, three to a 256 KiB block) arrives in bursts of ~30 MB at 400-500 MB/s
# per veth: with two busy pods on a 2-core node a 32 MiB ring overflowed while the capture thread was busy with the
# other pod (tests/integration/test_traffic_shapes.py), so captures of one or two pods get up to 64 MiB each.
MAX_AUTO_RING = 64 << 20


@dataclass(frozen=True)
class EngineSettings:
    # Cut a chunk at this size (fewer, larger messages: less per-message cost on both ends; the collector may ask
    # for smaller ones, never larger) ...
    chunk_bytes: int = 4 << 20
    # ... or when its first packet has waited this long (the latency of a live view of a quiet pod). 2 s rather
    # than 1 s halves the chunks, messages and acknowledgements of quiet pods: 200 pods at 100 pps each cost the
    # agent less CPU (tests/bench p3).
    flush_interval: float = 2.0
    stats_interval: float = 5.0
    open_workers: int = 8
    # While no ring fills fast, the loop wakes at most once per this period, so that one wakeup serves many
    # handles (200 quiet pods would otherwise wake it thousands of times a second). A drain that moved at least
    # ``busy_bytes`` means a ring is filling fast: then the loop does not nap. 0.1 s measured as too long: a nap
    # that starts just as a pod turns busy lets ~9 MB arrive at 600k packets/s, more than an 8 MiB ring holds
    # (tests/bench p1 dropped 3.6%).
    min_loop_period: float = 0.05
    busy_bytes: int = 64 << 10
    # Total kernel ring memory the agent aims for when a capture leaves the buffer size to it.
    ring_budget_bytes: int = 128 << 20
    # The upload buffer the chunks go to (memory and spool; 0 = unknown). Chunks are kept to a quarter of each
    # stream's equal share of it: when many pods cut their chunks at once (they started together, so their flush
    # deadlines coincide), the burst still fits, and a full buffer's fair share holds several chunks per pod.
    # Measured: 50 pods x 5k pps cut 50 chunks of 1.4 MB within one walk, 72 MB for a 64 MiB buffer: 6 pods lost
    # a chunk each although the collector kept up with the average rate.
    upload_buffer_bytes: int = 0
    min_chunk_bytes: int = 64 << 10


def auto_ring_bytes(budget: int, pods: int) -> int:
    """Ring size per pod when the capture leaves it to the agent: the budget shared by the pods, clamped to
    2..256 blocks."""
    share = budget // max(1, pods)
    size = max(MIN_RING, min(MAX_AUTO_RING, share))
    # libpcap rounds a ring *up* to whole blocks: round down here so that the pods together stay within budget.
    return max(MIN_RING, size - size % RING_BLOCK)
