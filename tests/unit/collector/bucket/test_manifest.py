"""``podcap.collector.bucket.manifest``: a capture's manifest survives the round trip through JSON (status, formats,
segments in order, completeness), and one this podcap cannot read is a one-line ``ManifestError``."""

from __future__ import annotations

import pytest

from podcap.collector.bucket.manifest import ArchivedSegment, Manifest, ManifestError
from podcap.v1 import common_pb2, control_pb2


def test_round_trip() -> None:
    status = control_pb2.CaptureStatus(id="c1", state=control_pb2.CAPTURE_STATE_DONE, packets=7, pods=[
        control_pb2.PodStatus(pod=common_pb2.Pod(namespace="shop", name="web-0", uid="u0"), packets=7,
                              drops=common_pb2.PodcapDrops(buffer_full=3))])
    m = Manifest(status, {"u0": common_pb2.PcapFormat(linktype=1, snaplen=262144, nanosecond=True)},
                 {"u0": [ArchivedSegment("p/c1/shop/web-0/000001.pcap", 1, 1024, 5, 10, 20),
                         ArchivedSegment("p/c1/shop/web-0/000002.pcap", 2, 524, 2, 21, 30)]}, complete=True)
    back = Manifest.from_json(m.to_json())
    assert back.status == status and back.formats == m.formats and back.segments == m.segments and back.complete


@pytest.mark.parametrize("data", [b"not json", b'{"version": 99}', b'{"version": 1, "status": {}}'])
def test_unreadable_manifests_are_one_line_errors(data: bytes) -> None:
    with pytest.raises(ManifestError) as e:
        Manifest.from_json(data)
    assert "\n" not in str(e.value)
