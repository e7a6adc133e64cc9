"""How the agent sizes each pod's kernel ring when a capture leaves it to the agent."""

from __future__ import annotations

from podcap.agent.capture.settings import MAX_AUTO_RING, RING_BLOCK, auto_ring_bytes


def test_auto_ring_is_whole_blocks_within_budget_and_never_below_two() -> None:
    assert auto_ring_bytes(128 << 20, 200) == 2 * RING_BLOCK  # 655 KiB each -> two whole blocks
    assert auto_ring_bytes(128 << 20, 100) == 5 * RING_BLOCK
    assert auto_ring_bytes(128 << 20, 1) == MAX_AUTO_RING
    assert auto_ring_bytes(128 << 20, 1000) == 2 * RING_BLOCK  # past the budget rather than a one-block ring
    for pods in range(1, 600, 7):
        size = auto_ring_bytes(128 << 20, pods)
        assert size % RING_BLOCK == 0 and 2 * RING_BLOCK <= size <= MAX_AUTO_RING
        assert size * pods <= (128 << 20) or size == 2 * RING_BLOCK
