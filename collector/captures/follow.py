"""Live followers of a capture: packets as they are stored, to readers that may be slow.

Each ``Subscription`` has a buffer bounded in bytes. The capture manager offers every stored chunk to the
capture's subscriptions while it holds the capture's lock, so offering must never block: a chunk that does not
fit is dropped for that reader and counted, and the reader gets a ``FollowGap`` with the count before its next
records. Stored data is never affected — a follower is a view, the files are the record.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from podcap.closable import ClosableQueue
from podcap.formats.selection import pod_selected
from podcap.names import PodUid
from podcap.v1 import common_pb2, control_pb2

DEFAULT_BUFFER = 16 << 20


class Subscription:
    def __init__(self, capture_id: str, selectors: list[str], *, max_bytes: int = DEFAULT_BUFFER) -> None:
        self.capture_id = capture_id
        self.selectors = set(selectors)
        self.max_bytes = max_bytes
        self._queue: ClosableQueue[control_pb2.FollowMessage] = ClosableQueue()
        # Guards the pods' indexes and formats, the records' bytes in the queue and the packets dropped per pod.
        self._lock = threading.Lock()
        self._bytes = 0
        self._index: dict[PodUid, int] = {}
        self._formats: dict[PodUid, common_pb2.PcapFormat] = {}
        self._lost: dict[int, int] = {}

    @property
    def closed(self) -> bool:
        return self._queue.closed

    def wants(self, pod: common_pb2.Pod) -> bool:
        return pod_selected(pod, self.selectors)

    def announce(self, pod: common_pb2.Pod, fmt: common_pb2.PcapFormat) -> int:
        """Name the pod in this stream (once, or again when its format changes); return its index."""
        uid = PodUid(pod.uid)
        with self._lock:
            index = self._index.get(uid)
            if index is None or self._formats.get(uid) != fmt:
                if index is None:
                    index = self._index[uid] = len(self._index)
                self._formats[uid] = fmt
                self._queue.put(control_pb2.FollowMessage(pod=control_pb2.FollowPod(index=index, pod=pod,
                                                                                    format=fmt)))
            return index

    def offer(self, pod: common_pb2.Pod, fmt: common_pb2.PcapFormat, records: bytes, packets: int) -> None:
        """Queue records of a pod (announcing the pod first); never blocks."""
        if self.closed:
            return
        index = self.announce(pod, fmt)
        with self._lock:
            if self._bytes + len(records) > self.max_bytes:
                self._lost[index] = self._lost.get(index, 0) + packets
                return
            msgs = []
            if self._lost.get(index):
                msgs.append(control_pb2.FollowMessage(gap=control_pb2.FollowGap(index=index,
                                                                                packets=self._lost.pop(index))))
            msgs.append(control_pb2.FollowMessage(records=control_pb2.FollowRecords(index=index, records=records)))
            if self._queue.put(*msgs):
                self._bytes += len(records)

    def end(self, status: control_pb2.CaptureStatus | None) -> None:
        """The stream ends after what is queued: the gaps still owed, then ``status`` (None: no status)."""
        with self._lock:
            if self.closed:
                return
            msgs = [control_pb2.FollowMessage(gap=control_pb2.FollowGap(index=index, packets=packets))
                    for index, packets in self._lost.items()]
            self._lost.clear()
            if status is not None:
                msgs.append(control_pb2.FollowMessage(ended=status))
            self._queue.put(*msgs)
            self._queue.close()

    def messages(self) -> Iterator[control_pb2.FollowMessage]:
        for item in self._queue:
            if item.WhichOneof("kind") == "records":
                with self._lock:
                    self._bytes -= len(item.records.records)
            yield item
