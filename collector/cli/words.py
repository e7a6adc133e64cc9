"""The CLI's words for the API's enum values, in one place: what ``podcap start --interface`` and the extcap's
options accept, and what JSON and YAML output and tables show.

A user types ``--interface veth`` and reads ``running``; the protobuf names (``CAPTURE_INTERFACE_HOST_VETH``,
``CAPTURE_STATE_RUNNING``) are the wire's, never shown. Every enum of the API becomes its value's name without the
enum's prefix, lower case, ``_`` as ``-`` (``POD_CAPTURE_STATE_NO_AGENT`` is ``no-agent``), except where the CLI
has words of its own (the capture interface: ``veth``, ``eth0``, ``all``).
"""

from __future__ import annotations

import re
from typing import Any

from podcap.v1 import common_pb2

INTERFACES = {
    "veth": common_pb2.CAPTURE_INTERFACE_HOST_VETH,
    "eth0": common_pb2.CAPTURE_INTERFACE_POD_ETH0,
    "all": common_pb2.CAPTURE_INTERFACE_POD_ALL,
}
_OWN_WORDS: dict[str, dict[int, str]] = {
    common_pb2.CaptureInterface.DESCRIPTOR.full_name: {
        **{v: k for k, v in INTERFACES.items()}, common_pb2.CAPTURE_INTERFACE_UNSPECIFIED: "veth"},
}


def enum_word(enum: Any, value: int) -> str:
    """The CLI's word for ``value`` of ``enum`` (an ``EnumDescriptor``; a number it does not know stays a number,
    as text)."""
    own = _OWN_WORDS.get(enum.full_name, {})
    if value in own:
        return own[value]
    known = enum.values_by_number.get(value)
    if known is None:
        return str(value)
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", str(enum.name)).upper() + "_"
    return str(known.name).removeprefix(prefix).lower().replace("_", "-")
