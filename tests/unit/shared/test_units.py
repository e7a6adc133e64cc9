"""Human durations and sizes (podcap.units): what the CLI and the daemons read from options and print back."""

import pytest

from podcap.units import format_duration, human_bytes, parse_duration, parse_size


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h30m", 5400),
                                               ("2d", 172800), ("1.5s", 1.5), ("500ms", 0.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "m", "10x", "1h-", "-5s", "5 s s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "n"), [("1000", 1000), ("64k", 64000), ("64KiB", 65536), ("100MiB", 100 << 20),
                                         ("2G", 2 * 10**9), ("1gib", 1 << 30), ("10 MB", 10**7)])
def test_sizes(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "MiB", "10 XB", "-1", "1..2k"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(("n", "si", "text"), [(512, False, "512 B"), (1536, False, "1.5 KiB"),
                                               (3 << 30, False, "3.0 GiB"), (999, True, "999 B"),
                                               (1500, True, "1.5 kB"), (2 * 10**12, True, "2.0 TB"),
                                               (5 * 10**15, True, "5000.0 TB")])
def test_human_bytes(n: int, si: bool, text: str) -> None:
    assert human_bytes(n, si=si) == text


@pytest.mark.parametrize(("seconds", "text"), [(45, "45s"), (90, "1m30s"), (900, "15m"), (5400, "1h30m"),
                                               (7200, "2h"), (172800, "2d"), (183600, "2d3h")])
def test_format_duration_is_read_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds
