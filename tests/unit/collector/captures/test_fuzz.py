"""Fuzzing (hypothesis, bounded): hostile bytes and messages from an agent never crash the collector, are
rejected with our own errors, and never leave a stored segment that does not parse."""

from __future__ import annotations

import os
import struct
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podcap import pcapwalk
from podcap.collector.agents import AgentConnection, AgentRegistry
from podcap.collector.captures.chunks import ChunkRejectedError
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.storage.catalog import CaptureStore
from podcap.collector.storage.local import LocalStorage, list_segments
from podcap.formats.pcap import (
    FileFormat,
    PcapFormatError,
    read_file,
    scan_records,
    scan_records_python,
    valid_prefix_length,
)
from podcap.names import NodeName, PodUid
from podcap.pods import PodRef
from podcap.v1 import common_pb2, control_pb2, ingest_pb2

FMT = FileFormat(1, 1500, True)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def record(caplen: int, wirelen: int, body: bytes) -> bytes:
    return struct.pack("<IIII", 1, 2, caplen, wirelen) + body


records_like = st.lists(
    st.tuples(st.integers(0, 1600), st.integers(0, 1700), st.binary(max_size=1600)).map(lambda t: record(*t)),
    max_size=8,
).map(b"".join)
hostile = st.one_of(st.binary(max_size=4000), records_like, records_like.map(lambda b: b[: len(b) // 2]))


@FUZZ
@given(hostile, st.one_of(st.none(), st.integers(0, 10)), st.one_of(st.none(), st.integers(0, 5000)))
def test_scan_records_accepts_or_raises_our_error(data: bytes, max_packets: int | None,
                                                  max_bytes: int | None) -> None:
    try:
        r = scan_records(data, FMT, max_packets=max_packets, max_bytes=max_bytes)
    except PcapFormatError:
        return
    assert 0 <= r.length <= len(data)
    assert valid_prefix_length(data[: r.length], FMT) == r.length  # what it accepts is whole records


@FUZZ
@given(hostile)
def test_valid_prefix_is_whole_records(data: bytes) -> None:
    n = valid_prefix_length(data, FMT)
    assert 0 <= n <= len(data)
    scan_records(data[:n], FMT)  # never raises on what recovery keeps


NODE = NodeName("n1")
POD = PodRef("ns", "p", PodUid("uid-1"), NODE)
events = st.builds(
    ingest_pb2.PodCaptureEvent,
    capture_id=st.sampled_from(["", "cap", "../x", "a" * 80]),
    pod_uid=st.sampled_from(["uid-1", "", "../../etc", "uid-2"]),
    stream_id=st.sampled_from(["", "s1", "s2"]),
    state=st.sampled_from(list(common_pb2.PodCaptureState.values())),
    message=st.text(max_size=50),
    agent_dropped_packets=st.integers(0, 2**40),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(events, st.tuples(st.sampled_from(["s1", "s2", ""]), st.integers(0, 4), hostile)),
                max_size=12))
def test_capture_manager_survives_hostile_agent_messages(msgs: list[object]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        registry = AgentRegistry()
        conn = AgentConnection(node=NODE, instance_id="i", version="v", pod_source="netns", pods=[POD])
        registry.register(conn)
        store = CaptureStore(os.path.join(tmp, "db"))
        mgr = CaptureManager(LocalStorage(tmp), registry, store)
        try:
            cap = mgr.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="ns")))
            mgr.on_pod_event(conn, ingest_pb2.PodCaptureEvent(
                capture_id=cap.id, pod_uid="uid-1", stream_id="s1", state=common_pb2.POD_CAPTURE_STATE_CAPTURING,
                format=common_pb2.PcapFormat(linktype=1, snaplen=1500, nanosecond=True)))
            for m in msgs:
                if isinstance(m, ingest_pb2.PodCaptureEvent):
                    if m.capture_id == "cap":
                        m.capture_id = cap.id
                    mgr.on_pod_event(conn, m)
                else:
                    stream, seq, data = m  # type: ignore[misc]
                    try:
                        mgr.on_chunk(conn, ingest_pb2.PcapChunk(capture_id=cap.id, pod_uid="uid-1",
                                                               stream_id=stream, seq=seq, records=data))
                    except ChunkRejectedError:
                        pass
            for seg in list_segments(os.path.join(tmp, "captures", cap.id, "ns", "p")):
                read_file(seg)  # every stored segment parses to its last byte
        finally:
            mgr.close()
            store.close()


def _outcome(fn: object, data: bytes | memoryview, **limits: int | None) -> tuple[str, object]:
    try:
        return "ok", fn(data, FMT, **limits)  # type: ignore[operator]
    except PcapFormatError as e:
        return "error", str(e)


timed_records = st.lists(  # well-formed records with timestamps on both sides of the until_ns values drawn below
    st.tuples(st.integers(0, 3), st.integers(0, 999_999_999), st.binary(max_size=200)).map(
        lambda t: struct.pack("<IIII", t[0], t[1], len(t[2]), len(t[2]) + 4) + t[2]),
    max_size=8,
).map(b"".join)


@FUZZ
@given(st.one_of(hostile, timed_records), st.one_of(st.none(), st.integers(-2, 10)),
       st.one_of(st.none(), st.integers(-20, 5000)), st.one_of(st.none(), st.integers(-10, 3 * 1_000_000_000)),
       st.integers(0, 3))
def test_native_walker_matches_the_python_walker(data: bytes, max_packets: int | None, max_bytes: int | None,
                                                 until_ns: int | None, skip: int) -> None:
    """Same results, same error messages, for bytes and for a memoryview that starts inside a buffer."""
    assert pcapwalk.available(), "the C library (podcap._native_*) is not built: is a C compiler installed?"
    limits = {"max_packets": max_packets, "max_bytes": max_bytes, "until_ns": until_ns}
    for buf in (data, memoryview(b"x" * skip + data)[skip:]):
        assert _outcome(scan_records, buf, **limits) == _outcome(scan_records_python, buf, **limits)
