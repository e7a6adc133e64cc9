"""The one table from podcap's errors to gRPC status codes, for every servicer.

A servicer catches ``PodcapError`` around what it delegates and calls ``abort_for``: the error's *kind*
(``podcap.errors``) picks the status code, the first matching row wins (so a more specific row goes first), and
the message is the error's own one line, with a prefix where the kind alone does not say what failed. Anything
else is a bug: the servicer lets it propagate and gRPC answers UNKNOWN, logged with its traceback — a plain
``ValueError`` never reaches the user as INVALID_ARGUMENT. (kopf's ``errors.check_response`` is the model.)
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from podcap import errors
from podcap.collector.kube.errors import KubeError

# (kind, status code, message prefix), most specific first.
TABLE: tuple[tuple[type[errors.PodcapError], grpc.StatusCode, str], ...] = (
    # The collector cannot list pods (API server down, RBAC): the user retries after the fix.
    (KubeError, grpc.StatusCode.UNAVAILABLE, "Kubernetes API: "),
    (errors.OutOfRangeError, grpc.StatusCode.OUT_OF_RANGE, ""),
    (errors.InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT, ""),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND, ""),
    (errors.PreconditionError, grpc.StatusCode.FAILED_PRECONDITION, ""),
    (errors.ConflictError, grpc.StatusCode.ALREADY_EXISTS, ""),
    (errors.UnavailableError, grpc.StatusCode.UNAVAILABLE, ""),
    (errors.ResourceError, grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    (errors.DeniedError, grpc.StatusCode.PERMISSION_DENIED, ""),
    (errors.UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED, ""),
)


def status_for(e: errors.PodcapError) -> tuple[grpc.StatusCode, str]:
    """The status code and one-line message for one of our errors."""
    for kind, code, prefix in TABLE:
        if isinstance(e, kind):
            return code, f"{prefix}{e}"
    return grpc.StatusCode.INTERNAL, str(e)


def abort_for(context: grpc.ServicerContext, e: errors.PodcapError) -> NoReturn:
    """End the call with the status ``status_for`` gives (``context.abort`` raises)."""
    code, message = status_for(e)
    context.abort(code, message)
    raise AssertionError("grpc's context.abort returned")  # it raises; this line is never reached
