"""``ClosableQueue``: a FIFO between producers that must never block and one consumer that iterates until closed.

The shape every outbound stream in podcap has: commands and acknowledgements to an agent, packets to a follower.
Producers ``put`` from any thread (after ``close`` a put is refused and returns False); the consumer iterates,
blocking while the queue is empty, and the iteration ends once the queue is closed and everything put before the
close was taken. Bounding, if any, is the producer's business (a follower counts bytes and reports what it
dropped); the agent's upload log has its own queue because it re-sends after reconnects.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ClosableQueue(Generic[T]):
    def __init__(self) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, *items: T) -> bool:
        """Queue ``items`` in order, atomically; False (nothing queued) once the queue is closed."""
        with self._cond:
            if self._closed:
                return False
            self._items.extend(items)
            self._cond.notify()
            return True

    def close(self) -> None:
        """Refuse further puts; the consumer still gets what was queued before."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take_all(self) -> list[T]:
        """Everything queued now, without waiting (for a consumer that polls)."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def __iter__(self) -> Iterator[T]:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return
                item = self._items.popleft()
            yield item
