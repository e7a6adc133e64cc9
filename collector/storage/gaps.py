"""``gaps.tsv``: the stored capture says itself where it has holes, next to each pod's pcap files.

One line per loss as the collector learns of it: when (the time range of the packets lost, UTC), how many, the
cause (a ``podcap.drops`` cause, or ``kernel`` for the kernel's ring), and the stream. In-band gaps arrive in
stream order, so their lines sit between the stored packets that surround them; kernel drops are known only from
the agent's periodic reports, so their range is the time between two reports. Summed per cause, the lines give the
counters ``podcap status`` shows for the pod (while the collector ran: a line is written before the counters it
explains are committed, so after a crash a line may repeat).
"""

from __future__ import annotations

import datetime
import logging
import os

log = logging.getLogger(__name__)

GAPS_FILE = "gaps.tsv"
HEADER = ("# packets the capture of this pod does not hold, and why (see `podcap status`)\n"
          "# from\tuntil\tpackets\tcause\tstream\n")


def _utc(ns: int) -> str:
    if ns <= 0:
        return "-"
    t = datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000 // 1000:06d}Z"


def record_gap(directory: str, *, first_ns: int, last_ns: int, packets: int, cause: str, stream: str) -> None:
    """Append one line to the pod's ``gaps.tsv`` (created with its header). Errors are logged, never raised: the
    counters in the database stay the record of truth."""
    line = f"{_utc(first_ns)}\t{_utc(last_ns)}\t{packets}\t{cause}\t{stream or '-'}\n"
    path = os.path.join(directory, GAPS_FILE)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size == 0:
                line = HEADER + line
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError as e:
        log.error("cannot record a gap in %s: %s", path, e)


def read_gaps(path: str) -> list[tuple[str, str, int, str, str]]:
    """The lines of a ``gaps.tsv`` as (from, until, packets, cause, stream); comments skipped."""
    out = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            first, last, packets, cause, stream = line.rstrip("\n").split("\t")
            out.append((first, last, int(packets), cause, stream))
    return out
