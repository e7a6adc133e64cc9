"""BPF filters: the one place that compiles them, with libpcap's compiler through pcapy-ng.

Two callers need a compiled filter and must agree on what compiles: ``start`` checks the capture's filter for the
capture's link type before any agent sees it (a typo then fails the request with libpcap's own message instead of
failing on every node), and a windowed read (the collector's Download and ``podcap get --from s3://``, both
selecting records with ``podcap.formats.selection``) compiles the request's filter for the pod's stored link type
and snaplen to match stored packets. pcapy-ng compiles for a link type without an interface, so neither needs a live
handle.
"""

from __future__ import annotations

from typing import TypeAlias

import pcapy

from podcap.errors import InvalidInputError
from podcap.formats.pcap import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, MAX_SNAPLEN, FileFormat
from podcap.v1 import common_pb2

MAX_FILTER_LEN = 4096
_NETMASK_UNKNOWN = 0xFFFFFFFF


class FilterError(InvalidInputError):
    """The filter does not compile (or is too long); the message is one line for the user."""


def linktype_for(interface: int) -> int:
    return LINKTYPE_LINUX_SLL2 if interface == common_pb2.CAPTURE_INTERFACE_POD_ALL else LINKTYPE_ETHERNET


BpfProgram: TypeAlias = pcapy.BPFProgram  # a compiled filter; ``.filter(packet)`` matches one packet


def compile_filter(expr: str, fmt: FileFormat) -> BpfProgram | None:
    """``expr`` compiled (optimized) for ``fmt``'s link type and snaplen; None for an empty filter."""
    if not expr.strip():
        return None
    try:
        program: BpfProgram = pcapy.compile(fmt.linktype, fmt.snaplen, expr, 1, _NETMASK_UNKNOWN)
        return program
    except pcapy.PcapError as e:
        raise FilterError(f"invalid filter {expr!r}: {e}") from e


def check_filter(expr: str, *, interface: int = common_pb2.CAPTURE_INTERFACE_HOST_VETH, snaplen: int = 0) -> str:
    """Return the expression if libpcap compiles it for the capture's link type; else raise FilterError."""
    if len(expr.encode()) > MAX_FILTER_LEN:
        raise FilterError(f"filter longer than {MAX_FILTER_LEN} bytes")
    if "\0" in expr:
        raise FilterError("filter contains a NUL byte")
    compile_filter(expr, FileFormat(linktype_for(interface), snaplen or MAX_SNAPLEN, nanosecond=False))
    return "" if not expr.strip() else expr
