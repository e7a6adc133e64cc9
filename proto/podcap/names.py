"""Identities and their validation.

Every name that arrives from outside (a CLI argument, an agent's inventory, a stored row) is checked here before
it is used, because names become paths on the collector's disk (``<data>/captures/<id>/<namespace>/<pod>/``).
Kubernetes' own rules make that safe: a DNS-1123 name has no ``/``, no ``..`` component and no NUL. Identity
types are ``NewType`` so that a pod uid cannot be passed where a capture id is expected.
"""

from __future__ import annotations

import re
import secrets
from typing import NewType

from podcap.errors import InvalidInputError

PodUid = NewType("PodUid", str)
NodeName = NewType("NodeName", str)
CaptureId = NewType("CaptureId", str)

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CAPTURE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_CAPTURE_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class InvalidNameError(InvalidInputError):
    """A name or id does not follow the syntax Kubernetes (or podcap) requires of it."""


def check_namespace(value: str) -> str:
    """Return ``value`` if it is a valid namespace name (DNS-1123 label), else raise InvalidNameError."""
    if len(value) > 63 or not _DNS1123_LABEL.match(value):
        raise InvalidNameError(
            f"invalid namespace {value!r}: must be a DNS-1123 label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return value


def _is_subdomain(value: str) -> bool:
    return len(value) <= 253 and bool(_DNS1123_SUBDOMAIN.match(value))


def check_pod_name(value: str) -> str:
    """Return ``value`` if it is a valid pod name (DNS-1123 subdomain), else raise InvalidNameError."""
    if not _is_subdomain(value):
        raise InvalidNameError(
            f"invalid pod name {value!r}: must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', "
            "at most 253 characters)"
        )
    return value


def check_node_name(value: str) -> NodeName:
    """Node names follow the same DNS-1123 subdomain rule as pod names."""
    if not _is_subdomain(value):
        raise InvalidNameError(f"invalid node name {value!r}: must be a DNS-1123 subdomain")
    return NodeName(value)


def check_pod_uid(value: str) -> PodUid:
    if not _UID.match(value) or ".." in value:
        raise InvalidNameError(f"invalid pod uid {value!r}")
    return PodUid(value)


def check_capture_id(value: str) -> CaptureId:
    if not _CAPTURE_ID.match(value):
        raise InvalidNameError(f"invalid capture id {value!r}: expected up to 64 characters of [a-z0-9-]")
    return CaptureId(value)


def new_capture_id() -> CaptureId:
    """A fresh 12-character capture id (62 bits of randomness), starting with a letter so it never looks numeric."""
    first = secrets.choice(_CAPTURE_ID_ALPHABET[:26])
    return CaptureId(first + "".join(secrets.choice(_CAPTURE_ID_ALPHABET) for _ in range(11)))
