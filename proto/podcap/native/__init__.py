"""podcap's C, in one place: the sources (this directory, one header ``podcap_native.h``) and loading what was built.

Three parts, each built as its own plain C library (no Python API, so ctypes loads it and building it needs a C
compiler but no Python headers), so that each program loads what it needs:

- ``walk`` (``walk.c``, ``podcap._native_walk``): the record walker, the collector's framing check of every chunk;
  declared and called by ``podcap.pcapwalk``.
- ``chunks`` (``chunks.c``, ``podcap._native_chunks``): the agent's ``pcap_handler`` that cuts chunks by bytes;
  ``podcap.agent.capture.chunkbuf``.
- ``merge`` (``merge.c``, ``podcap._native_merge``): the CLI's merge and live view into pcapng;
  ``podcap.collector.cli.get.pcapmerge``.

Why separate libraries rather than one: each program maps only its own part (the agent never loads the merge, the
collector never loads the agent's handler), one part that fails to build leaves the others' fast paths working
(each extension is optional on its own), and a loader asks its own library for its own symbols instead of probing
one shared library for whichever functions an older build had. What they share is compiled into each from the
header (the record check, byte order, the EPB layout are ``static inline``: the per-record paths keep their speed).

This module owns finding and loading a part (``library``) and the error codes the parts return (``Error``, the
header's ``enum podcap_error``; a test holds the two to each other). Callers declare the signatures they use and
keep a pure-Python path for when a part is missing.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import importlib.util
import os
from typing import Literal

Part = Literal["walk", "chunks", "merge"]
PARTS: tuple[Part, ...] = ("walk", "chunks", "merge")


class Error(enum.IntEnum):
    """``enum podcap_error`` of ``podcap_native.h``: what the C returns (or, negated, the merge) and reports."""

    OK = 0
    TRUNCATED_HEADER = 1  # fewer than 16 bytes left where a record header should start
    BAD_CAPLEN = 2  # caplen > snaplen or caplen > wire length
    TRUNCATED_RECORD = 3  # the record's data runs past the end
    READ_ERROR = 4  # reading an input failed (errno)
    WRITE_ERROR = 5  # writing the output failed (errno; EPIPE: the reader went away)
    NO_MEMORY = 6


@functools.cache
def library(part: Part) -> ctypes.CDLL | None:
    """The loaded library of ``part``, or None when it was not built (or ``PODCAP_NO_NATIVE=1`` asks to do without
    podcap's C altogether)."""
    if os.environ.get("PODCAP_NO_NATIVE") == "1":
        return None
    spec = importlib.util.find_spec(f"podcap._native_{part}")
    if spec is None or not spec.origin:
        return None
    try:
        return ctypes.CDLL(spec.origin)
    except OSError:
        return None


def missing() -> list[Part]:
    """The parts that were not built or do not load (the image build fails on any)."""
    return [part for part in PARTS if library(part) is None]
