"""click callbacks for the options that take human units, shared by the ``podcap`` CLI and both daemons.

The options that take them are limits whose absence means "none" or "the default" (``--duration``,
``--max-bytes``, ``--keep-bytes``, ``--buffer-size``, the collector's ``--keep-ended`` and ``--max-data-bytes`` …):
an explicit 0 would silently mean the same, which is never what someone typing ``--duration 0`` meant, so it is
refused with what leaving the option out does. Values past what the API carries (2^32 - 1 seconds, 2^64 - 1 bytes)
are refused here too, as one-line usage errors. The grammar itself is ``units``'s.
"""

from __future__ import annotations

import click

from podcap.units import MAX_BYTES, MAX_SECONDS, human_bytes, parse_duration, parse_size

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
    return _positive(param, value, n, human_bytes(MAX_BYTES))


def count_param(ctx: click.Context, param: click.Parameter, value: str | None) -> int:
    """click callback: a count of packets (``None`` or empty = 0: not given); 0 is refused."""
    if not value:
        return 0
    if not value.strip().isdigit():
        raise click.BadParameter(f"{value!r} is not a whole number of packets")
    return _positive(param, value, int(value), str(MAX_BYTES))


def _positive(param: click.Parameter, value: str, n: int, most: str) -> int:
    """``n`` (read from ``value``) unless it is 0 or past 2^64 - 1 (``most``, as the message says it)."""
    if n == 0:
        raise _zero(param)
    if n > MAX_BYTES:
        raise click.BadParameter(f"{value!r} is more than {most}")
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
