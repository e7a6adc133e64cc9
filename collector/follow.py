"""Live followers of a capture: packets as they are stored, to readers that may be slow.

Each ``Subscription`` has a buffer bounded in bytes. The capture manager offers every stored chunk to the
capture's subscriptions while it holds the capture's lock, so offering must never block: a chunk that does not
fit is dropped for that reader and counted, and the reader gets a ``FollowGap`` with the count before its next
records. Stored data is never affected — a follower is a view, the files are the record.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator

from podcap.names import PodUid
from podcap.v1 import common_pb2, control_pb2

DEFAULT_BUFFER = 16 << 20


class Subscription:
    def __init__(self, capture_id: str, selectors: list[str], *, max_bytes: int = DEFAULT_BUFFER) -> None:
        self.capture_id = capture_id
        self.selectors = set(selectors)
        self.max_bytes = max_bytes
        self._cond = threading.Condition()
        self._items: collections.deque[control_pb2.FollowMessage | None] = collections.deque()
        self._bytes = 0
        self._index: dict[PodUid, int] = {}
        self._formats: dict[PodUid, common_pb2.PcapFormat] = {}
        self._lost: dict[int, int] = {}
        self.closed = False

    def wants(self, pod: common_pb2.Pod) -> bool:
        s = self.selectors
        return not s or pod.uid in s or pod.name in s or f"{pod.namespace}/{pod.name}" in s

    def announce(self, pod: common_pb2.Pod, fmt: common_pb2.PcapFormat) -> int:
        """Name the pod in this stream (once, or again when its format changes); return its index."""
        uid = PodUid(pod.uid)
        with self._cond:
            index = self._index.get(uid)
            if index is None or self._formats.get(uid) != fmt:
                if index is None:
                    index = self._index[uid] = len(self._index)
                self._formats[uid] = fmt
                self._items.append(control_pb2.FollowMessage(pod=control_pb2.FollowPod(index=index, pod=pod,
                                                                                       format=fmt)))
                self._cond.notify()
            return index

    def offer(self, pod: common_pb2.Pod, fmt: common_pb2.PcapFormat, records: bytes, packets: int) -> None:
        """Queue records of a pod (announcing the pod first); never blocks."""
        if self.closed:
            return
        index = self.announce(pod, fmt)
        with self._cond:
            if self._bytes + len(records) > self.max_bytes:
                self._lost[index] = self._lost.get(index, 0) + packets
                return
            if self._lost.get(index):
                self._items.append(control_pb2.FollowMessage(gap=control_pb2.FollowGap(
                    index=index, packets=self._lost.pop(index))))
            self._items.append(control_pb2.FollowMessage(records=control_pb2.FollowRecords(index=index,
                                                                                         records=records)))
            self._bytes += len(records)
            self._cond.notify()

    def end(self, status: control_pb2.CaptureStatus | None) -> None:
        with self._cond:
            if self.closed:
                return
            for index, packets in self._lost.items():
                self._items.append(control_pb2.FollowMessage(gap=control_pb2.FollowGap(index=index,
                                                                                       packets=packets)))
            self._lost.clear()
            if status is not None:
                self._items.append(control_pb2.FollowMessage(ended=status))
            self._items.append(None)
            self.closed = True
            self._cond.notify_all()

    def messages(self) -> Iterator[control_pb2.FollowMessage]:
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                item = self._items.popleft()
                if item is None:
                    return
                if item.WhichOneof("kind") == "records":
                    self._bytes -= len(item.records.records)
            yield item
