"""Loading podcap's C library (``podcap/_native*.so``: ``pcapwalk.c`` for the collector,
``agent/capture/chunkbuf.c`` for the agent), which the build compiles when a C compiler is present.

It is a plain C library with no Python API, so it is loaded with ctypes and building it needs no Python headers.
Callers declare the signatures of the functions they use and keep a pure-Python path for when it is missing.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded library, or None when it was not built (or ``PODCAP_NO_NATIVE=1`` asks to do without it)."""
    if os.environ.get("PODCAP_NO_NATIVE") == "1":
        return None
    spec = importlib.util.find_spec("podcap._native")
    if spec is None or not spec.origin:
        return None
    try:
        return ctypes.CDLL(spec.origin)
    except OSError:
        return None
