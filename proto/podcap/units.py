"""Human units, one grammar for every program: durations (``90``, ``15m``, ``1h30m``) and sizes (``100MiB``, ``2G``).

The ``podcap`` CLI and both daemons read the same durations and sizes from their options and print them back in
messages, so the parsing and the printing live here, in the shared package, once: a ``--keep-ended 2d`` the
collector prints in its log reads the way it was typed (``format_duration`` writes what ``parse_duration``
reads). The click callbacks that refuse 0 and values past what the API carries are ``unit_options``'s.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

MAX_SECONDS = (1 << 32) - 1  # what the API carries: a uint32 of seconds
MAX_BYTES = (1 << 64) - 1  # and a uint64 of bytes


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


def human_bytes(n: int, *, si: bool = False) -> str:
    """``512 B``, ``1.5 MiB`` (powers of 2^10); with ``si``, ``1.5 MB`` (powers of 10^3, as disk budgets are
    given)."""
    step, units = (1000, ("B", "kB", "MB", "GB", "TB")) if si else (1024, ("B", "KiB", "MiB", "GiB", "TiB"))
    value = float(n)
    for unit in units:
        if value < step or unit == units[-1]:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= step
    return f"{n} B"


def human_count(n: int) -> str:
    """``950``, ``38k``, ``1.2k``, ``4.5M``: a count at a glance."""
    for div, unit in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= div:
            value = n / div
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(n)


def human_duration(seconds: float) -> str:
    """``4.2s``, ``3m05s``, ``2h07m``: an elapsed time at a glance (fixed width past a minute)."""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_duration(seconds: float) -> str:
    """``90s`` -> ``1m30s``, ``2d``, ``1h30m``: a duration as the options take it (``parse_duration`` reads it
    back, to the minute past an hour and to the hour past a day)."""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m" if s % 3600 >= 60 else f"{s // 3600}h"
    return f"{s // 86400}d{(s % 86400) // 3600}h" if s % 86400 >= 3600 else f"{s // 86400}d"
