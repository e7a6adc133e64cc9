"""Validation of a start request: everything about it that does not depend on the cluster.

The target's syntax (``podcap.collector.targets``; a node target captures on every interface of the node's network
namespace unless ``eth0`` is asked for), the capture filter (compiled once here, so a bad filter is the
user's one-line error before any agent hears of the capture), and the bounds of limits, rotation and retention.
Raises ``InvalidInputError`` subclasses only. A bound is said as the option a user types and in the units the CLI
takes (``--keep-bytes must be at least 256KiB``), never as the request's field in bytes.
"""

from __future__ import annotations

from podcap.collector.captures.model import MIN_SEGMENT_BYTES
from podcap.collector.filters import check_filter
from podcap.collector.kube.selectors import parse_selector
from podcap.collector.targets import TargetSpec, parse_target
from podcap.errors import InvalidInputError
from podcap.formats.pcap import FILE_HEADER_LEN, MAX_SNAPLEN
from podcap.v1 import common_pb2, control_pb2

MAX_DURATION_S = 30 * 24 * 3600


class InvalidRequestError(InvalidInputError):
    """A start request's settings, limits, rotation or retention are out of bounds."""


def _size(n: int) -> str:
    """``n`` bytes as the CLI takes a size: ``256KiB``, ``1GiB``, ``40`` (exact)."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def save_target(req: control_pb2.StartCaptureRequest) -> TargetSpec:
    """The target of a recorder's save (``req.save`` set by the collector): exactly the pods it names, in whatever
    namespaces they are (a recorder may span namespaces), never attaching others."""
    return TargetSpec(None, parse_selector(""), tuple(req.target.pod_names) or ("-",))


def validate_request(req: control_pb2.StartCaptureRequest) -> TargetSpec:
    """The request's parsed target, once everything else about the request checked out."""
    if req.HasField("save"):
        raise InvalidRequestError("a capture request may not carry `save`: saves are made by recorders (podcap "
                                  "record, podcap trigger)")
    spec = parse_target(req.target)
    s = req.settings
    if spec.object is not None and spec.object.is_node and s.interface in (
            common_pb2.CAPTURE_INTERFACE_UNSPECIFIED, common_pb2.CAPTURE_INTERFACE_HOST_VETH):
        # A node has no veth of its own: its traffic is on every interface of its network namespace.
        s.interface = common_pb2.CAPTURE_INTERFACE_POD_ALL
    if s.snaplen > MAX_SNAPLEN:
        raise InvalidRequestError(f"--snaplen must be at most {MAX_SNAPLEN}")
    if s.buffer_bytes and not (64 << 10) <= s.buffer_bytes <= (1 << 30):
        raise InvalidRequestError("--buffer-size must be between 64KiB and 1GiB")
    check_filter(s.filter, interface=s.interface, snaplen=s.snaplen)
    if req.limits.duration_seconds > MAX_DURATION_S:
        raise InvalidRequestError(f"--duration must be at most {MAX_DURATION_S // 86400}d")
    if req.limits.max_bytes and req.limits.max_bytes < FILE_HEADER_LEN + 16:
        raise InvalidRequestError(f"--max-bytes must be at least {FILE_HEADER_LEN + 16} (a pcap header and one "
                                  "packet)")
    if req.rotation.segment_bytes and req.rotation.segment_bytes < MIN_SEGMENT_BYTES:
        raise InvalidRequestError(f"--segment-size must be at least {_size(MIN_SEGMENT_BYTES)}")
    r = req.retention
    if r.keep_bytes and r.keep_bytes < 4 * MIN_SEGMENT_BYTES:
        raise InvalidRequestError(f"--keep-bytes must be at least {_size(4 * MIN_SEGMENT_BYTES)} (four of the "
                                  "smallest segments)")
    if r.keep_total_bytes and r.keep_total_bytes < 4 * MIN_SEGMENT_BYTES:
        raise InvalidRequestError(f"--keep-total-bytes must be at least {_size(4 * MIN_SEGMENT_BYTES)}")
    if r.keep_seconds and r.keep_seconds < 6:
        raise InvalidRequestError("--keep-duration must be at least 6s")
    if len(req.note.encode()) > 1024:
        raise InvalidRequestError("--note must be at most 1024 bytes")
    return spec
