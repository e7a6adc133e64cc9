"""``podcap.formats.bucket.manifest``: a capture's manifest and its segment pages survive the round trip through
JSON (status, formats, pages and segments in order with their headers and block indexes, completeness), a page's
summary covers its segments, and a manifest or page this podcap cannot read is a one-line ``ManifestError``."""

from __future__ import annotations

import pytest

from podcap.formats.bucket.blocks import Block, pack_index, unpack_index
from podcap.formats.bucket.manifest import (
    ArchivedSegment,
    Manifest,
    ManifestError,
    PageRef,
    page_from_json,
    page_number,
    page_to_json,
)
from podcap.v1 import common_pb2, control_pb2


def test_round_trip() -> None:
    status = control_pb2.CaptureStatus(id="c1", state=control_pb2.CAPTURE_STATE_DONE, packets=7, pods=[
        control_pb2.PodStatus(pod=common_pb2.Pod(namespace="shop", name="web-0", uid="u0"), packets=7,
                              drops=common_pb2.PodcapDrops(buffer_full=3))])
    segments = [ArchivedSegment("p/c1/shop/web-0/000001.pcap.zst", 1, 1024, 5, 10, 20, b"h" * 24,
                                pack_index([Block(24, 1000, 30, 200, 5, 10, 20)])),
                ArchivedSegment("p/c1/shop/web-0/000002.pcap.zst", 2, 524, 2, 21, 30)]
    ref = PageRef.of("p/c1/shop/web-0/segments-000000.json", 0, segments)
    assert (ref.segments, ref.size, ref.packets, ref.first_ts_ns, ref.last_ts_ns) == (2, 1548, 7, 10, 30)
    m = Manifest(status, {"u0": common_pb2.PcapFormat(linktype=1, snaplen=262144, nanosecond=True)},
                 {"u0": [ref]}, complete=True)
    back = Manifest.from_json(m.to_json())
    assert back.status == status and back.formats == m.formats and back.pages == m.pages and back.complete
    page = page_from_json(page_to_json(segments))
    assert page == segments and unpack_index(page[0].blocks) == [Block(24, 1000, 30, 200, 5, 10, 20)]


def test_pages_and_windows() -> None:
    assert [page_number(i) for i in (0, 63, 64, 200)] == [0, 0, 1, 3]
    ref = PageRef("k", 0, 1, 100, 1, 1000, 2000)
    assert ref.overlaps(0, 0) and ref.overlaps(1500, 0) and ref.overlaps(0, 1000) and ref.overlaps(500, 2500)
    assert not ref.overlaps(2001, 0) and not ref.overlaps(0, 999)


@pytest.mark.parametrize("data", [b"not json", b'{"version": 99}', b'{"version": 2, "status": {}}', b"[]"])
def test_unreadable_manifests_are_one_line_errors(data: bytes) -> None:
    for read in (Manifest.from_json, page_from_json):
        with pytest.raises(ManifestError) as e:
            read(data)
        assert "\n" not in str(e.value)
