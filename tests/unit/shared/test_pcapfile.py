"""PCAP records: framing checks, exact cuts at packet/byte limits, crash-recovery prefixes, and the record
iterator over buffers and over files read in blocks."""

import io
import struct

import pytest

from podcap import pcapwalk
from podcap.formats.pcap import (
    FILE_HEADER_LEN,
    FileFormat,
    PcapFormatError,
    iter_file_records,
    iter_records,
    parse_file_header,
    scan_records,
    valid_prefix_length,
)

FMT = FileFormat(linktype=1, snaplen=200, nanosecond=True)


def record(i: int, caplen: int = 100, wirelen: int | None = None) -> bytes:
    return struct.pack("<IIII", 1000 + i, i, caplen, wirelen or caplen) + bytes([i % 256]) * caplen


def test_header_roundtrip() -> None:
    for fmt in (FMT, FileFormat(113, 65535, False)):
        assert parse_file_header(fmt.header()) == fmt
    with pytest.raises(PcapFormatError):
        parse_file_header(b"\x00" * 24)


def test_scan_counts_and_last_timestamp() -> None:
    data = b"".join(record(i, 50 + i) for i in range(10))
    r = scan_records(data, FMT)
    assert (r.packets, r.length) == (10, len(data))
    assert r.last_ts_ns == 1009 * 1_000_000_000 + 9
    assert [rec.caplen for rec in iter_records(data, FMT)] == [50 + i for i in range(10)]


def test_scan_cuts_at_packet_limit() -> None:
    data = b"".join(record(i) for i in range(10))
    r = scan_records(data, FMT, max_packets=3)
    assert (r.packets, r.length) == (3, 3 * 116)


@pytest.mark.parametrize("max_bytes", [0, 115, 116, 117, 500, 10_000])
def test_scan_cuts_at_byte_limit_on_a_record_boundary(max_bytes: int) -> None:
    data = b"".join(record(i) for i in range(10))
    r = scan_records(data, FMT, max_bytes=max_bytes)
    assert r.length <= max_bytes and r.length % 116 == 0
    assert r.length + 116 > min(max_bytes, len(data))


@pytest.mark.parametrize(
    "data",
    [
        record(1)[:-1],  # truncated body
        record(1) + b"\x01\x02",  # truncated header
        record(1, caplen=201),  # caplen above snaplen
        record(1, caplen=100, wirelen=99),  # caplen above wire length
    ],
)
def test_scan_rejects_malformed(data: bytes) -> None:
    with pytest.raises(PcapFormatError):
        scan_records(data, FMT)


def test_valid_prefix_drops_a_partial_last_record() -> None:
    good = record(1) + record(2)
    assert valid_prefix_length(good + record(3)[:50], FMT) == len(good)
    assert valid_prefix_length(good, FMT) == len(good)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("tail", [b"", b"\x01\x02", record(3)[:50], record(3, caplen=201) + record(4),
                                  record(3, 100, 99) + record(4)], ids=["none", "header", "body", "snaplen", "wire"])
def test_valid_prefix_is_the_same_with_and_without_the_c_walker(monkeypatch: pytest.MonkeyPatch, native: bool,
                                                                tail: bytes) -> None:
    if native and not pcapwalk.available():
        pytest.skip("the C walker is not built")
    monkeypatch.setattr(pcapwalk, "available", lambda: native)
    good = record(1) + record(2)
    assert valid_prefix_length(good + tail, FMT) == len(good)


def test_records_keep_their_offsets_and_compare_by_content() -> None:
    data = record(1, 10) + record(2, 20)
    recs = list(iter_records(data, FMT))
    assert [(r.offset, r.end) for r in recs] == [(0, 26), (26, 62)]
    assert [data[r.offset : r.end] for r in recs] == [record(1, 10), record(2, 20)]
    assert list(iter_records(record(0, 5) + data, FMT))[1:] == recs  # other offsets, same records


@pytest.mark.parametrize("block_size", [1, 7, 116, 117, 1 << 20])
def test_file_records_in_blocks_are_the_buffer_records(block_size: int) -> None:
    body = b"".join(record(i, 50 + i) for i in range(20))
    f = io.BytesIO(FMT.header() + body)
    f.seek(FILE_HEADER_LEN)
    pairs = list(iter_file_records(f, FMT, block_size=block_size))
    assert [r for _, r in pairs] == list(iter_records(body, FMT))
    assert b"".join(block[r.offset : r.end] for block, r in pairs) == body


def test_file_records_stop_at_end_and_at_a_torn_tail_only_when_asked() -> None:
    body = record(1) + record(2)
    f = io.BytesIO(FMT.header() + body + record(3)[:40])
    f.seek(FILE_HEADER_LEN)
    assert len(list(iter_file_records(f, FMT, end=FILE_HEADER_LEN + len(record(1)), block_size=64))) == 1
    f.seek(FILE_HEADER_LEN)
    assert len(list(iter_file_records(f, FMT, block_size=64, torn_tail_ok=True))) == 2
    f.seek(FILE_HEADER_LEN)
    with pytest.raises(PcapFormatError, match=f"truncated record at offset {FILE_HEADER_LEN + len(body)}:"):
        list(iter_file_records(f, FMT, block_size=64))


def test_file_records_name_the_file_offset_of_a_bad_record() -> None:
    body = record(1) + record(2) + record(3, caplen=201)
    f = io.BytesIO(FMT.header() + body)
    f.seek(FILE_HEADER_LEN)
    with pytest.raises(PcapFormatError, match=f"record at offset {FILE_HEADER_LEN + 2 * 116}: caplen 201"):
        list(iter_file_records(f, FMT, block_size=100))
