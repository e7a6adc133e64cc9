"""``podcap.closable.ClosableQueue``: order, atomic multi-puts, refusal after close, and a consumer that drains what
was queued before the close and then ends (also when it was blocked waiting)."""

from __future__ import annotations

import threading

from podcap.closable import ClosableQueue


def test_consumer_gets_everything_queued_before_close_in_order() -> None:
    q: ClosableQueue[int] = ClosableQueue()
    assert q.put(1) and q.put(2, 3)
    assert q.take_all() == [1, 2, 3] and q.take_all() == []
    q.put(4, 5)
    q.close()
    assert not q.put(6)
    assert list(q) == [4, 5]
    assert q.closed and len(q) == 0


def test_blocked_consumer_ends_when_closed() -> None:
    q: ClosableQueue[str] = ClosableQueue()
    got: list[str] = []
    t = threading.Thread(target=lambda: got.extend(q))
    t.start()
    q.put("a")
    q.close()
    t.join(timeout=5)
    assert not t.is_alive() and got == ["a"]


def test_many_producers_lose_nothing_and_keep_each_ones_order() -> None:
    q: ClosableQueue[tuple[int, int]] = ClosableQueue()

    def produce(p: int) -> None:
        for i in range(2000):
            q.put((p, i))

    producers = [threading.Thread(target=produce, args=(p,)) for p in range(4)]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    q.close()
    items = list(q)
    assert len(items) == 8000
    for p in range(4):
        assert [i for pp, i in items if pp == p] == list(range(2000))
