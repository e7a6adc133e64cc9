"""The project's own error hierarchy, shared by the agent, the collector and the CLI.

Every error podcap raises on purpose derives from ``PodcapError`` through one of a few *kinds* below. A kind says
whose move it is — the user's input (``InvalidInputError``; ``OutOfRangeError`` for a position past the end of
something that may grow), something that does not exist (``NotFoundError``), a
state that must change first (``PreconditionError``), a dependency that is down (``UnavailableError``), a caller
without the right (``DeniedError``/``UnauthenticatedError``), the machine (``ResourceError``) — and the API
servicers map kinds to gRPC status codes in one table (``podcap.collector.api.errors``). Module-specific errors
(a bad BPF filter, an unknown capture, the Kubernetes API down) subclass the kind that fits and add nothing but
their name and message; errors from libraries are translated with ``raise ... from e`` at the module boundary.

Builtins are not part of the hierarchy on purpose: a plain ``ValueError`` or ``KeyError`` is a bug, and reaches
the user as INTERNAL, never as their fault.
"""

from __future__ import annotations


class PodcapError(Exception):
    """Base of every error podcap raises on purpose; the message is one line a user can act on."""


class InvalidInputError(PodcapError):
    """The request itself is wrong (a bad name, selector, filter, limit); retrying it unchanged cannot help."""


class OutOfRangeError(InvalidInputError):
    """A position past the end of what it points into (a resume offset past the end of a pod's file)."""


class NotFoundError(PodcapError):
    """What the request names does not exist (a capture, a pod, a match for a selector)."""


class PreconditionError(PodcapError):
    """The request is valid but the system is not in a state to serve it (no agent on the pod's node)."""


class ConflictError(PodcapError):
    """The request collides with something that exists (a second agent claiming the same node)."""


class UnavailableError(PodcapError):
    """A dependency is down or not ready (the Kubernetes API, the object store); retrying later may work."""


class ResourceError(PodcapError):
    """The machine ran out of something (disk, memory) or an I/O operation failed."""


class DeniedError(PodcapError):
    """The caller is known but may not do this."""


class UnauthenticatedError(PodcapError):
    """The caller could not be identified (no, or a bad, token or certificate)."""
