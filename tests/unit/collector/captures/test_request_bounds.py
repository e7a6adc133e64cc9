"""A start request out of bounds is refused in the words of the CLI option and its units (issue 26, item 12:
``--keep-bytes below 262144 bytes (four of the smallest segments)`` became ``--keep-bytes must be at least
256KiB``)."""

from __future__ import annotations

import pytest

from podcap.collector.captures.requests import InvalidRequestError, validate_request
from podcap.v1 import common_pb2, control_pb2


@pytest.mark.parametrize(("req", "message"), [
    (control_pb2.StartCaptureRequest(retention=control_pb2.Retention(keep_bytes=1000)),
     "--keep-bytes must be at least 256KiB"),
    (control_pb2.StartCaptureRequest(retention=control_pb2.Retention(keep_total_bytes=1000)),
     "--keep-total-bytes must be at least 256KiB"),
    (control_pb2.StartCaptureRequest(rotation=control_pb2.Rotation(segment_bytes=1000)),
     "--segment-size must be at least 64KiB"),
    (control_pb2.StartCaptureRequest(settings=common_pb2.CaptureSettings(buffer_bytes=1)),
     "--buffer-size must be between 64KiB and 1GiB"),
    (control_pb2.StartCaptureRequest(limits=control_pb2.Limits(duration_seconds=31 * 86400)),
     "--duration must be at most 30d"),
    (control_pb2.StartCaptureRequest(retention=control_pb2.Retention(keep_seconds=2)),
     "--keep-duration must be at least 6s"),
    (control_pb2.StartCaptureRequest(note="x" * 2000), "--note must be at most 1024 bytes"),
])
def test_bounds_are_said_as_the_option_and_its_units(req: control_pb2.StartCaptureRequest, message: str) -> None:
    req.target.namespace = "shop"
    with pytest.raises(InvalidRequestError) as e:
        validate_request(req)
    assert str(e.value).startswith(message), str(e.value)
