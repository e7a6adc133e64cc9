"""Debounce and window merging (issue 24): a waiting save grows to take overlapping triggers, a pod's bytes are
never in two saves, cooldown and the saves-per-hour cap hold back automatic triggers."""

from __future__ import annotations

from podcap.collector.recorders.windows import HOUR_NS, Debounce, Window, clip, join, saved_until
from podcap.names import PodUid

S = 1_000_000_000
A, B = PodUid("a"), PodUid("b")


def test_clip_starts_each_pod_where_its_earlier_saves_end() -> None:
    w = Window(100 * S, 110 * S)
    assert clip(w, [A, B], {A: 105 * S}) == [A, B]
    assert w.pod_from == {A: 105 * S} and w.start_of(A) == 105 * S and w.start_of(B) == 100 * S


def test_clip_leaves_out_a_pod_whose_window_is_saved_already() -> None:
    w = Window(100 * S, 110 * S)
    assert clip(w, [A, B], {A: 110 * S, B: 90 * S}) == [B]
    assert w.pod_from == {}


def test_join_grows_the_window_both_ways_and_adds_pods() -> None:
    w = Window(100 * S, 110 * S)
    assert join(w, 104 * S, 115 * S, [B], [A], {}) == [B]
    assert (w.from_ns, w.to_ns) == (100 * S, 115 * S)
    assert join(w, 95 * S, 112 * S, [A], [A, B], {}) == []  # a pod it has: nothing to add
    assert (w.from_ns, w.to_ns) == (95 * S, 115 * S)


def test_join_keeps_a_joining_pod_clear_of_its_earlier_saves() -> None:
    w = Window(100 * S, 110 * S)
    assert join(w, 104 * S, 114 * S, [B], [A], {B: 108 * S}) == [B]
    assert w.start_of(B) == 108 * S and w.start_of(A) == 100 * S


def test_overlap_is_half_open() -> None:
    w = Window(100 * S, 110 * S)
    assert w.overlaps(109 * S, 120 * S) and not w.overlaps(110 * S, 120 * S) and not w.overlaps(90 * S, 100 * S)


def test_cooldown_holds_back_then_lets_through() -> None:
    d = Debounce(cooldown_ns=60 * S, per_hour=100)
    assert d.held_back(1000 * S) == ""
    d.note(1000 * S, automatic=True)
    assert "cooldown" in d.held_back(1030 * S)
    assert d.held_back(1060 * S) == ""


def test_saves_per_hour_counts_a_sliding_hour() -> None:
    d = Debounce(cooldown_ns=S, per_hour=3)
    for t in (0, 10, 20):
        assert d.held_back(t * S) == ""
        d.note(t * S, automatic=True)
    assert "3 saves in the last hour" in d.held_back(30 * S)
    assert d.held_back(HOUR_NS + 1) == ""  # the first one is more than an hour old


def test_manual_saves_start_the_cooldown_but_do_not_count_per_hour() -> None:
    d = Debounce(cooldown_ns=60 * S, per_hour=1)
    d.note(0, automatic=False)
    assert "cooldown" in d.held_back(10 * S)
    assert d.held_back(70 * S) == ""


def test_a_window_is_clipped_only_by_saves_that_start_before_it_ends() -> None:
    saves = [(100 * S, 110 * S, [A]), (200 * S, 210 * S, [A, B])]
    assert saved_until(saves, 150 * S) == {A: 110 * S}
    assert saved_until(saves, 205 * S) == {A: 210 * S, B: 210 * S}
    # A trigger dated before a later save (an OOM kill reported late) still saves its own window.
    w = Window(150 * S, 160 * S)
    assert clip(w, [A, B], saved_until(saves, w.to_ns)) == [A, B] and w.pod_from == {}
