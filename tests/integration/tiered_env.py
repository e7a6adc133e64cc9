"""A capture manager over tiered storage (local disk and a real S3 bucket) driven in process (``Env``): chunks of
sequence-numbered records for one pod, read back, the segments, the bucket's keys. What the object-storage and S3
lifecycle tests share; the ``env`` fixture (tests/integration/conftest.py) gives a test one against the testbed."""

from __future__ import annotations

import os
import struct

from podcap.collector.agents import AgentConnection, AgentRegistry
from podcap.collector.bucket.objects import BucketUrl, ObjectStore
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.storage.base import SegmentInfo
from podcap.collector.storage.catalog import CaptureStore
from podcap.collector.storage.local import list_segments
from podcap.collector.storage.tiered import TieredStorage
from podcap.formats.pcap import FILE_HEADER_LEN, iter_records
from podcap.names import NodeName, PodUid
from podcap.pods import PodRef
from podcap.v1 import common_pb2, control_pb2, ingest_pb2
from tests.s3.testbed import Testbed

NODE = NodeName("node-a")
POD = PodRef("shop", "web-0", PodUid("uid-0"), NODE, {"app": "web"})
FMT = common_pb2.PcapFormat(linktype=1, snaplen=262144, nanosecond=True)
SEGMENT = 64 << 10


def records(start: int, n: int, size: int = 200, *, noise: bool = False) -> bytes:
    """Sequence-numbered records (the number in the first 4 bytes); ``noise``: the rest random (incompressible)."""
    def body(i: int) -> bytes:
        return i.to_bytes(4, "big") + (os.urandom(size - 4) if noise else i.to_bytes(4, "big") * (size // 4 - 1))
    return b"".join(struct.pack("<IIII", 10 + i // 1000, i % 1000, size, size) + body(i)
                    for i in range(start, start + n))


class Env:
    def __init__(self, s3: Testbed, prefix: str, data: str, local_cap_bytes: int = 0) -> None:
        self.s3, self.prefix, self.data = s3, prefix, data
        self.local_cap_bytes = local_cap_bytes
        # Rounds only when a test calls run_once (deterministic counts), unless the test needs the thread.
        self.archive_interval_s = 0.2 if local_cap_bytes else 0.0
        self.store = CaptureStore(os.path.join(data, "podcap.db"))
        self.objects = ObjectStore(BucketUrl(s3.bucket, prefix), endpoint=s3.endpoint, max_attempts=2)
        self.registry = AgentRegistry()
        self.conn = AgentConnection(node=NODE, instance_id="i", version="t", pod_source="netns", pods=[POD])
        self.registry.register(self.conn)
        self.mgr = self.open()

    def open(self) -> CaptureManager:
        return CaptureManager(TieredStorage(self.data, self.objects), self.registry, self.store,
                              local_cap_bytes=self.local_cap_bytes, archive_interval_s=self.archive_interval_s)

    def start(self, segment: int = SEGMENT, **retention: int) -> str:
        cap = self.mgr.start(control_pb2.StartCaptureRequest(
            target=control_pb2.Target(namespace="shop", pod_names=["web-0"]),
            rotation=control_pb2.Rotation(segment_bytes=segment), retention=control_pb2.Retention(**retention)))
        self.mgr.on_pod_event(self.conn, ingest_pb2.PodCaptureEvent(
            capture_id=cap.id, pod_uid=POD.uid, stream_id="s1", state=common_pb2.POD_CAPTURE_STATE_CAPTURING,
            format=FMT, started=True))
        return cap.id

    def send(self, cid: str, first_seq: int, chunks: int, per_chunk: int = 100, size: int = 200,
             noise: bool = False) -> None:
        for k in range(chunks):
            seq = first_seq + k
            self.mgr.on_chunk(self.conn, ingest_pb2.PcapChunk(
                capture_id=cid, pod_uid=POD.uid, stream_id="s1", seq=seq,
                records=records((seq - 1) * per_chunk, per_chunk, size, noise=noise), packets=per_chunk))
        self.mgr.committer.commit(self.mgr.get(cid))

    def read_back(self, cid: str) -> list[int]:
        out: list[int] = []
        for _ps, fmt, files in self.mgr.pod_files(self.mgr.get(cid), []):
            for f, length in files:
                with f:
                    f.seek(FILE_HEADER_LEN)
                    data = f.read(length - FILE_HEADER_LEN)
                out += [int.from_bytes(r.data[:4], "big") for r in iter_records(data, fmt)]
        return out

    def segments(self, cid: str) -> list[SegmentInfo]:
        """Every segment of the capture's pods, from memory and the catalog (as downloads list them)."""
        cap = self.mgr.get(cid)
        index = self.mgr.index
        return [seg for ps in cap.pods.values() for seg, _n in index.listing(cap, ps, index.in_memory(cap, ps))]

    def keys(self, cid: str) -> list[str]:
        return sorted(k for k in self.objects.list_keys(self.objects.url.key(cid) + "/") if ".pcap" in k)

    def local(self, cid: str) -> list[str]:
        return list_segments(os.path.join(self.data, "captures", cid, "shop", "web-0"))

    def close(self) -> None:
        self.mgr.close()
        self.store.close()
