"""``podcap.stream_events.starts_stream``: the one rule agent and collector share for the event that starts a stream —
the explicit ``started`` flag, and the older agents' CAPTURING-with-a-format — and that reports and ends do not."""

from __future__ import annotations

from podcap.stream_events import starts_stream
from podcap.v1 import common_pb2, ingest_pb2

FMT = common_pb2.PcapFormat(linktype=1, snaplen=262144, nanosecond=True)
CAPTURING = common_pb2.POD_CAPTURE_STATE_CAPTURING


def test_the_explicit_flag_starts_a_stream() -> None:
    assert starts_stream(ingest_pb2.PodCaptureEvent(stream_id="s", state=CAPTURING, format=FMT, started=True))


def test_an_older_agents_start_is_still_understood() -> None:
    assert starts_stream(ingest_pb2.PodCaptureEvent(stream_id="s", state=CAPTURING, format=FMT))


def test_reports_and_ends_do_not_start_a_stream() -> None:
    assert not starts_stream(ingest_pb2.PodCaptureEvent(stream_id="s", state=CAPTURING,
                                                        kernel=common_pb2.KernelStats(received=5)))
    assert not starts_stream(ingest_pb2.PodCaptureEvent(stream_id="s", state=common_pb2.POD_CAPTURE_STATE_DONE))
