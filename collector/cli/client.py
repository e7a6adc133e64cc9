"""The CLI's connection to the collector: one place that turns gRPC failures into messages a user can act on."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from podcap.errors import PodcapError
from podcap.tls import TlsFiles, open_channel
from podcap.v1 import control_pb2, control_pb2_grpc

DEFAULT_COLLECTOR = "127.0.0.1:7420"


class CollectorError(PodcapError):
    """A request to the collector failed; ``str()`` is a one-line message for the user."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


def default_address() -> str:
    return os.environ.get("PODCAP_COLLECTOR") or DEFAULT_COLLECTOR


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc,type-arg]
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        md = list(details.metadata or []) + [self._md]
        return details._replace(metadata=md)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def _translate(e: grpc.RpcError, address: str) -> CollectorError:
    code = e.code() if isinstance(e, grpc.Call) else None
    details = e.details() if isinstance(e, grpc.Call) else str(e)
    if code == grpc.StatusCode.UNAVAILABLE:
        return CollectorError(f"cannot reach the collector at {address} ({details}); is podcap-collector running? "
                              "Set --collector or PODCAP_COLLECTOR.", code)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return CollectorError(f"not authenticated: {details}", code)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return CollectorError(f"permission denied: {details}", code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CollectorError(f"the collector at {address} did not answer in time", code)
    return CollectorError(details or (code.name if code else "request failed"), code)


def default_tls() -> TlsFiles | None:
    """TLS settings from the environment (PODCAP_TLS_CA; PODCAP_INSECURE=1 for plaintext)."""
    ca = os.environ.get("PODCAP_TLS_CA", "")
    return TlsFiles(ca=ca) if ca else None


class CollectorClient:
    def __init__(self, address: str | None = None, *, timeout: float = 30.0, tls: TlsFiles | None = None,
                 token: str | None = None, server_name: str = "") -> None:
        self.address = address or default_address()
        self.timeout = timeout
        self._channel = open_channel(self.address, tls if tls is not None else default_tls(),
                                     options=[("grpc.max_receive_message_length", 16 << 20)],
                                     server_name=server_name)
        if token is None:
            token = os.environ.get("PODCAP_TOKEN") or None
        if token:
            self._channel = grpc.intercept_channel(self._channel, _BearerToken(token))
        self._stub = control_pb2_grpc.ControlStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CollectorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, req: control_pb2.StartCaptureRequest) -> control_pb2.CaptureStatus:
        try:
            return self._stub.StartCapture(req, timeout=self.timeout).capture
        except grpc.RpcError as e:
            raise _translate(e, self.address) from e

    def stop(self, capture_id: str) -> control_pb2.CaptureStatus:
        try:
            return self._stub.StopCapture(control_pb2.StopCaptureRequest(capture_id=capture_id),
                                          timeout=self.timeout)
        except grpc.RpcError as e:
            raise _translate(e, self.address) from e

    def get(self, capture_id: str) -> control_pb2.CaptureStatus:
        try:
            return self._stub.GetCapture(control_pb2.GetCaptureRequest(capture_id=capture_id), timeout=self.timeout)
        except grpc.RpcError as e:
            raise _translate(e, self.address) from e

    def audit(self, *, limit: int = 100, capture_id: str = "") -> list[control_pb2.AuditRecord]:
        try:
            return list(self._stub.ListAudit(control_pb2.ListAuditRequest(limit=limit, capture_id=capture_id),
                                             timeout=self.timeout).records)
        except grpc.RpcError as e:
            raise _translate(e, self.address) from e

    def list_captures(self) -> list[control_pb2.CaptureStatus]:
        return list(self.list_all().captures)

    def list_all(self) -> control_pb2.ListCapturesResponse:
        """The captures, and those deleted recently."""
        try:
            return self._stub.ListCaptures(control_pb2.ListCapturesRequest(), timeout=self.timeout)
        except grpc.RpcError as e:
            raise _translate(e, self.address) from e

    def delete(self, capture_id: str, *, force: bool = False) -> control_pb2.CaptureDeletion:
        try:
            return self._stub.DeleteCapture(control_pb2.DeleteCaptureRequest(capture_id=capture_id, force=force),
                                            timeout=self.timeout).deletion
        except grpc.RpcError as e:
            raise _translate(e, self.address) from e

    def download(self, capture_id: str, pods: list[str] | None = None, *, since_ns: int = 0, until_ns: int = 0,
                 bpf: str = "", resume: Sequence[control_pb2.ResumePoint] = ()) -> Iterator[control_pb2.DownloadChunk]:
        req = control_pb2.DownloadRequest(capture_id=capture_id, pods=pods or [], since_unix_ns=since_ns,
                                          until_unix_ns=until_ns, filter=bpf, resume=list(resume))
        # The response iterator is also the call (a grpc.Future): cancelling it ends the RPC.
        call: grpc.Future[control_pb2.DownloadChunk] = self._stub.Download(req)  # type: ignore[assignment]
        try:
            yield from call  # type: ignore[misc]
        except grpc.RpcError as e:
            raise _translate(e, self.address) from e
        finally:
            call.cancel()  # a reader that stops early (closes this generator) ends the call; no-op once it is done

    def follow(self, capture_id: str, pods: list[str] | None = None) -> Iterator[control_pb2.FollowMessage]:
        """Live packets of a capture until it ends; a cancelled stream (Ctrl+C) ends quietly."""
        try:
            yield from self._stub.Follow(control_pb2.FollowRequest(capture_id=capture_id, pods=pods or []))
        except grpc.RpcError as e:
            if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.CANCELLED:
                return
            raise _translate(e, self.address) from e

    def capturable_pods(self, namespace: str = "", *,
                        timeout: float | None = None) -> control_pb2.ListCapturablePodsResponse:
        """The pods this user may capture now (only ``namespace`` when given), as the collector decides."""
        try:
            return self._stub.ListCapturablePods(control_pb2.ListCapturablePodsRequest(namespace=namespace),
                                                 timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise _translate(e, self.address) from e
