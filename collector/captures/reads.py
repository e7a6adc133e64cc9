"""Reading a capture: live followers and the stored segments of its pods.

A follower (``podcap.collector.captures.follow.Subscription``) is announced the pods already streaming and then offered
each chunk as it is stored (by ingest). ``pod_files`` hands a download its pods' segments as open files: the sizes
of those in memory are taken under the pod's ``io_lock`` (after publishing the open segment), the others come from
the catalog (a time window through its time index: a window costs what it overlaps, not the capture's length), the
files opened without any lock; a segment retention deletes meanwhile is left out (retention deletes the oldest
first, so the rest is still one contiguous stretch). Which pods a read means, and which segments a window
overlaps, is ``podcap.formats.selection``'s rule (the one ``podcap get --from s3://`` applies to the bucket).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import BinaryIO

from podcap.collector.captures.follow import Subscription
from podcap.collector.captures.model import Capture, PodState
from podcap.collector.captures.pods import file_format, location
from podcap.collector.captures.segments import SegmentIndex
from podcap.collector.storage.base import StorageError
from podcap.formats.pcap import MAX_SNAPLEN, FileFormat
from podcap.formats.selection import pod_selected
from podcap.v1 import control_pb2

log = logging.getLogger(__name__)


def follow(cap: Capture, selectors: list[str], status: control_pb2.CaptureStatus) -> Subscription:
    """A live view of the capture's packets from now on (ended at once, with ``status``, if it is over)."""
    sub = Subscription(cap.id, selectors)
    with cap.lock:
        if cap.live:
            # Pods already streaming are announced now, so the reader's output starts with a valid header.
            for ps in cap.pods.values():
                pod = ps.pod.to_proto()
                if ps.fmt is not None and sub.wants(pod):
                    sub.announce(pod, ps.fmt)
            cap.followers.append(sub)
            return sub
    sub.end(status)
    return sub


def unfollow(cap: Capture, sub: Subscription) -> None:
    with cap.lock:
        if sub in cap.followers:
            cap.followers.remove(sub)
    sub.end(None)


def pod_files(
    index: SegmentIndex, cap: Capture, selectors: list[str], *, since_ns: int = 0, until_ns: int = 0
) -> Iterator[tuple[PodState, FileFormat, list[tuple[BinaryIO, int]]]]:
    """Each selected pod with its stream format and its segments as (open file, bytes to read); with a time
    window only the segments whose time range overlaps it."""
    with cap.lock:
        pods = [ps for ps in cap.pods.values() if pod_selected(ps.pod, selectors)]
    for ps in pods:
        files: list[tuple[BinaryIO, int]] = []
        with ps.io_lock:  # no append in between: each segment's recorded size is what its file holds from here on
            if ps.writer is not None:
                try:
                    ps.writer.publish()  # the open segment's last partial block may be in memory only
                except StorageError as e:
                    log.error("%s", e)
            mem = index.in_memory(cap, ps)
            with cap.lock:
                pf = ps.fmt
        # The catalog read and the files opened without locks: a segment only grows past its recorded size, and
        # one in the bucket may take a request or two to open (its block index) — the pod's chunks do not wait.
        try:
            segments = index.listing(cap, ps, mem, since_ns=since_ns, until_ns=until_ns)
        except StorageError as e:
            log.error("%s", e)
            segments = []
        for seg, size in segments:
            try:
                opened = location(index.storage, cap, ps).open(seg, since_ns, until_ns)
            except StorageError as e:
                log.error("%s", e)
                opened = None
            if opened is not None:  # None: retention deleted it meanwhile (the oldest go first)
                f, length = opened
                files.append((f, min(length, size)))  # a window of a compressed object: less
        snaplen = cap.request.settings.snaplen or MAX_SNAPLEN
        yield ps, file_format(pf) if pf is not None else FileFormat(1, snaplen, True), files
