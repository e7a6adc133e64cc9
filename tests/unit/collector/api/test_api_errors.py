"""The one table from podcap's errors to gRPC status codes: every kind maps to its code with the error's own one-line
message, the Kubernetes API's errors say so, and the kinds users meet most (a bad filter, a bad selector, an unknown
capture, no agent) land where the CLI expects them. A builtin exception has no row: a bug is never the user's
fault."""

from __future__ import annotations

import grpc
import pytest

from podcap import errors
from podcap.collector.api.auth import AuthError, DeniedError
from podcap.collector.api.errors import TABLE, status_for
from podcap.collector.captures.placement import NoAgentError
from podcap.collector.captures.table import CaptureNotFoundError
from podcap.collector.filters import FilterError
from podcap.collector.kube.errors import KubeForbiddenError
from podcap.collector.kube.selectors import SelectorError
from podcap.collector.targets import NoMatchError


@pytest.mark.parametrize(("error", "code"), [
    (FilterError("bad filter"), grpc.StatusCode.INVALID_ARGUMENT),
    (SelectorError("bad selector"), grpc.StatusCode.INVALID_ARGUMENT),
    (CaptureNotFoundError("no capture"), grpc.StatusCode.NOT_FOUND),
    (NoMatchError("no pod"), grpc.StatusCode.NOT_FOUND),
    (NoAgentError("no agent"), grpc.StatusCode.FAILED_PRECONDITION),
    (AuthError("who are you"), grpc.StatusCode.UNAUTHENTICATED),
    (DeniedError("not you"), grpc.StatusCode.PERMISSION_DENIED),
])
def test_errors_users_meet_map_to_their_codes(error: errors.PodcapError, code: grpc.StatusCode) -> None:
    assert status_for(error) == (code, str(error))


def test_kubernetes_errors_say_where_they_come_from() -> None:
    assert status_for(KubeForbiddenError("cannot list pods", code=403)) == (
        grpc.StatusCode.UNAVAILABLE, "Kubernetes API: cannot list pods")


def test_every_kind_has_a_row_and_no_builtin_does() -> None:
    kinds = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.PodcapError)
             and c is not errors.PodcapError]
    assert kinds and all(any(k is row[0] for row in TABLE) for k in kinds)
    assert all(issubclass(row[0], errors.PodcapError) for row in TABLE)
    assert not issubclass(FilterError, ValueError) and not issubclass(CaptureNotFoundError, LookupError)
