"""BPF filter validation with libpcap's compiler, before any agent sees the filter.

pcapy-ng compiles an expression for a link type without an interface, so a typo fails the ``start`` request with
libpcap's own message instead of failing on every node.
"""

from __future__ import annotations

import pcapy

from podcap.pcapfile import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, MAX_SNAPLEN
from podcap.v1 import common_pb2

MAX_FILTER_LEN = 4096


class FilterError(ValueError):
    """The filter does not compile."""


def linktype_for(interface: int) -> int:
    return LINKTYPE_LINUX_SLL2 if interface == common_pb2.CAPTURE_INTERFACE_POD_ALL else LINKTYPE_ETHERNET


def check_filter(expr: str, *, interface: int = common_pb2.CAPTURE_INTERFACE_HOST_VETH, snaplen: int = 0) -> str:
    """Return the expression if libpcap compiles it for the capture's link type; else raise FilterError."""
    if len(expr.encode()) > MAX_FILTER_LEN:
        raise FilterError(f"filter longer than {MAX_FILTER_LEN} bytes")
    if "\0" in expr:
        raise FilterError("filter contains a NUL byte")
    if not expr.strip():
        return ""
    try:
        pcapy.compile(linktype_for(interface), snaplen or MAX_SNAPLEN, expr, 1, 0xFFFFFFFF)
    except pcapy.PcapError as e:
        raise FilterError(f"invalid filter {expr!r}: {e}") from e
    return expr
