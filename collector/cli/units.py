"""Human units on the command line: durations (``90``, ``15m``, ``1h30m``) and sizes (``100MiB``, ``2G``).

The options that take them are limits whose absence means "none" or "the default" (``--duration``,
``--max-bytes``, ``--keep-bytes``, ``--buffer-size`` …): an explicit 0 would silently mean the same, which is never
what someone typing ``--duration 0`` meant, so it is refused with what leaving the option out does. Values past what
the API carries (2^32 - 1 seconds, 2^64 - 1 bytes) are refused here too, as one-line usage errors.
"""

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


MAX_SECONDS = (1 << 32) - 1
MAX_BYTES = (1 << 64) - 1
# What leaving each limit out means (said when it is given as 0).
_UNSET = {"duration": "no time limit", "max_bytes": "no size limit", "max_packets": "no packet limit",
          "segment_size": "the default size, 64MiB", "segment_time": "no rotation by time",
          "keep_bytes": "no retention by size", "keep_duration": "no retention by time",
          "keep_total_bytes": "no retention for the whole capture", "buffer_size": "the agent's default"}


def _zero(param: click.Parameter) -> click.BadParameter:
    opt = param.opts[-1] if isinstance(param, click.Option) else param.name or ""
    return click.BadParameter(f"must be more than 0 (leave {opt} out for {_UNSET.get(param.name or '', 'none')})")


def size_param(ctx: click.Context, param: click.Parameter, value: str | None) -> int:
    """click callback: a size option (``None`` or empty = 0: not given); 0 and sizes past 2^64 - 1 are refused."""
    if not value:
        return 0
    try:
        n = parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    if n == 0:
        raise _zero(param)
    if n > MAX_BYTES:
        raise click.BadParameter(f"{value!r} is more than {human_bytes(MAX_BYTES)}")
    return n


def count_param(ctx: click.Context, param: click.Parameter, value: str | None) -> int:
    """click callback: a count of packets (``None`` or empty = 0: not given); 0 is refused."""
    if not value:
        return 0
    if not value.strip().isdigit():
        raise click.BadParameter(f"{value!r} is not a whole number of packets")
    n = int(value)
    if n == 0:
        raise _zero(param)
    if n > MAX_BYTES:
        raise click.BadParameter(f"{value!r} is more than {MAX_BYTES}")
    return n


def duration_param(ctx: click.Context, param: click.Parameter, value: str | None) -> float:
    """click callback: a duration limit (``None`` or empty = 0: not given); 0 and more than 2^32 - 1 seconds are
    refused."""
    seconds = any_duration_param(ctx, param, value)
    if value and seconds == 0:
        raise _zero(param)
    return seconds


def any_duration_param(ctx: click.Context, param: click.Parameter, value: str | None) -> float:
    """click callback: a duration, 0 included (``None`` or empty = 0)."""
    try:
        seconds = parse_duration(value) if value else 0.0
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    if seconds > MAX_SECONDS:
        raise click.BadParameter(f"{value!r} is more than {MAX_SECONDS} seconds")
    return seconds
