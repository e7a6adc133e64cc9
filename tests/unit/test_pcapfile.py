"""PCAP records: framing checks, exact cuts at packet/byte limits, and crash-recovery prefixes."""

import struct

import pytest

from podcap.pcapfile import (
    FileFormat,
    PcapFormatError,
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
