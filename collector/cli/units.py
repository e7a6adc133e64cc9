"""Human units on the command line: durations (``90``, ``15m``, ``1h30m``) and sizes (``100MiB``, ``2G``)."""

from __future__ import annotations

import re

import click

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a plain number of seconds or a sequence like ``1h30m``, ``45s``, ``2d``."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    pos = 0
    total = 0.0
    for m in _DURATION.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(t) or not t:
        raise ValueError(f"invalid duration {text!r} (examples: 30, 90s, 15m, 1h30m, 2d)")
    return total


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``1000``, ``64k`` (10^3), ``100MiB`` (2^20), ``2G``."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"invalid size {text!r} (examples: 1000, 64KiB, 100MiB, 2G)")
    unit = (m.group(2) or "").lower().rstrip("b")
    if unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size unit in {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def human_count(n: int) -> str:
    """``950``, ``38k``, ``1.2k``, ``4.5M``: a count at a glance."""
    for div, unit in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= div:
            value = n / div
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(n)


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def size_param(ctx: click.Context, param: click.Parameter, value: str | None) -> int:
    """click callback: a size option (``None`` or empty = 0)."""
    try:
        return parse_size(value) if value else 0
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


def duration_param(ctx: click.Context, param: click.Parameter, value: str | None) -> float:
    """click callback: a duration option (``None`` or empty = 0)."""
    try:
        return parse_duration(value) if value else 0.0
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
