"""Human durations and sizes on the command line."""

import pytest

from podcap.collector.cli.units import parse_duration, parse_size


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
