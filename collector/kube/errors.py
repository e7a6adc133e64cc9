"""The collector's Kubernetes errors, and the one place where the client's exceptions become them.

Everything below ``podcap.collector.kube`` raises ``KubeError`` or a subclass, never an exception of the
``kubernetes`` client or of urllib3 under it: callers (the capture manager, the control service, the daemon's
start-up) catch one hierarchy and show its message, which says which verb on which resource in which namespace
failed and what to do about it. The translation is a table, like kopf's ``check_response``:

=====================================  ===========================  =========================================
what the client raised                 ours                         why
=====================================  ===========================  =========================================
``ApiException`` 401, 403              ``KubeForbiddenError``       credentials or RBAC: the message says what
                                                                    to grant
``ApiException`` 404                   ``KubeNotFoundError``
``ApiException`` 410                   ``KubeGoneError``            the watch re-lists (``watch.py``)
``ApiException`` 429, 5xx, status 0    ``KubeUnavailableError``     transient: retried with backoff
urllib3 ``HTTPError``, ``OSError``     ``KubeUnavailableError``     the API server cannot be reached
``ApiException`` other codes           ``KubeApiError``             carries ``code`` and ``reason``
anything else                          ``KubeError``
=====================================  ===========================  =========================================

An in-band watch ERROR event (a Status object) goes through the same table (``translate_status``), so a 410 in a
watch stream and an HTTP 410 are the same ``KubeGoneError``. This module imports ``kubernetes`` (for
``ApiException``) and urllib3; the only other module that does is ``client.py``.
"""

from __future__ import annotations

import json
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from podcap.errors import UnavailableError


class KubeError(UnavailableError):
    """Something went wrong talking to the Kubernetes API."""


class KubeConfigError(KubeError):
    """No usable configuration (kubeconfig or in-cluster service account)."""


class KubeUnavailableError(KubeError):
    """The API server cannot be reached or is overloaded (connection refused/reset, timeout, 429, 5xx)."""


class KubeApiError(KubeError):
    """The API server answered with an error Status."""

    def __init__(self, message: str, *, code: int, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class KubeForbiddenError(KubeApiError):
    """401 (credentials rejected) or 403 (RBAC denies the verb)."""


class KubeNotFoundError(KubeApiError):
    """404."""


class KubeGoneError(KubeApiError):
    """410: the resourceVersion (or continue token) is older than the server's history; re-list."""


def _scope(namespace: str | None) -> str:
    return f'in namespace "{namespace}"' if namespace else "in all namespaces (cluster scope)"


def translate_status(code: int, reason: str, message: str, *, verb: str, resource: str, namespace: str | None,
                     server: str) -> KubeError:
    """The error an API Status (HTTP error body or in-band watch ERROR) with this code stands for."""
    what = f"{verb} {resource} {_scope(namespace)}"
    detail = f": {message}" if message else ""
    if code == 401:
        return KubeForbiddenError(
            f"the API server at {server} rejected podcap's credentials (401 Unauthorized) trying to {what}{detail}; "
            "check the kubeconfig's user (token or certificate, not expired) or the pod's service account token",
            code=code, reason=reason)
    if code == 403:
        return KubeForbiddenError(
            f"not allowed to {what} (403 Forbidden){detail}; grant the collector's service account "
            f'"{verb}" on "{resource}" (a ClusterRole with get, list, watch on pods, bound to it)',
            code=code, reason=reason)
    if code == 404:
        return KubeNotFoundError(f"{what}: not found{detail}", code=code, reason=reason)
    if code == 410:
        return KubeGoneError(f"{what}: resource version expired{detail}", code=code, reason=reason)
    if code == 429 or code >= 500:
        return KubeUnavailableError(f"the API server at {server} could not {what} ({code} {reason}){detail}; "
                                    "podcap retries")
    return KubeApiError(f"cannot {what} ({code} {reason}){detail}", code=code, reason=reason)


def status_error(status: dict[str, Any], *, verb: str, resource: str, namespace: str | None,
                 server: str) -> KubeError:
    """The error an in-band ERROR event's Status object stands for."""
    return translate_status(int(status.get("code") or 500), str(status.get("reason") or ""),
                            str(status.get("message") or ""), verb=verb, resource=resource, namespace=namespace,
                            server=server)


def _status_fields(body: Any) -> tuple[str, str]:
    """(reason, message) of a Status body, or ("", text) when the body is not a Status."""
    if isinstance(body, bytes | bytearray):
        body = body.decode(errors="replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return "", body.strip()[:300]
    if isinstance(body, dict):
        return str(body.get("reason") or ""), str(body.get("message") or "")
    return "", ""


def translate(e: BaseException, *, verb: str, resource: str, namespace: str | None, server: str) -> KubeError:
    """Our error for whatever a call to ``verb`` ``resource`` raised; raise it ``from e``."""
    if isinstance(e, KubeError):
        return e
    if isinstance(e, ApiException):
        reason, message = _status_fields(e.body)
        if e.status == 0:  # the client's own failures (TLS) carry status 0
            return KubeUnavailableError(f"cannot {verb} {resource} {_scope(namespace)} at {server}: {e.reason}")
        return translate_status(int(e.status), reason or str(e.reason or ""), message, verb=verb,
                                resource=resource, namespace=namespace, server=server)
    if isinstance(e, urllib3.exceptions.HTTPError | OSError):
        cause: BaseException = e
        if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
            cause = e.reason
        return KubeUnavailableError(f"cannot reach the Kubernetes API server at {server} to {verb} {resource} "
                                    f"{_scope(namespace)}: {cause}")
    return KubeError(f"{verb} {resource} {_scope(namespace)}: {type(e).__name__}: {e}")
