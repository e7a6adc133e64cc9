"""The one rule, shared by agent and collector, for which ``PodCaptureEvent`` starts a stream.

The agent's upload log keeps a stream's start event to re-send it before the stream's unacknowledged chunks after a
reconnect; the collector opens the stream's state when it sees one. Both must agree, so the rule lives here: the
event says so (``started``), or — from agents older than that field — it is CAPTURING with the stream's format.
"""

from __future__ import annotations

from podcap.v1 import common_pb2, ingest_pb2


def starts_stream(ev: ingest_pb2.PodCaptureEvent) -> bool:
    """The event starts (or, after a reconnect, resumes) the stream ``ev.stream_id``, whose records have
    ``ev.format``."""
    return ev.started or (ev.state == common_pb2.POD_CAPTURE_STATE_CAPTURING and ev.HasField("format"))
