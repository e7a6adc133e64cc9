"""The CLI's connection to the collector: one place that turns gRPC failures into messages a user can act on.

The collector's address is ``HOST:PORT``; a host alone means the collector's port, 7420 (gRPC itself would dial
443). When a call cannot reach the collector, gRPC's details are one long line about sockets and handshakes; where
they point at the transport's security the message says what is wrong instead — the collector speaks TLS and no CA
was given, it does not speak TLS and one was, its certificate does not name the host dialled (and which names it
has), or another CA signed it — found from the details and, where they are vague ("Socket closed"), by a TLS
handshake of our own with the collector.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from podcap.errors import InvalidInputError, PodcapError
from podcap.tls import TlsFiles, open_channel
from podcap.v1 import control_pb2, control_pb2_grpc

DEFAULT_PORT = 7420
DEFAULT_COLLECTOR = f"127.0.0.1:{DEFAULT_PORT}"
PROBE_TIMEOUT_S = 2.0


class CollectorError(PodcapError):
    """A request to the collector failed; ``str()`` is a one-line message for the user. ``actionable``: the message
    already says what to do (no hint is added)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, *, actionable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.actionable = actionable


class CollectorAddressError(InvalidInputError):
    """A collector address that is not HOST or HOST:PORT."""


def default_address() -> str:
    return os.environ.get("PODCAP_COLLECTOR") or DEFAULT_COLLECTOR


def collector_address(text: str) -> str:
    """``text`` as the ``HOST:PORT`` gRPC dials: a host alone gets port 7420 (IPv6 in brackets). Raises
    CollectorAddressError."""
    t = text.strip()
    if not t:
        raise CollectorAddressError("the collector address is empty: give HOST:PORT (e.g. collector.example:7420)")
    if "://" in t or "/" in t:
        raise CollectorAddressError(f"collector address {text!r} is not HOST:PORT (no scheme or path): e.g. "
                                    f"collector.example:{DEFAULT_PORT}")
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or not host or (rest and not rest.startswith(":")):
            raise CollectorAddressError(f"collector address {text!r} is not [IPV6]:PORT")
        port = rest[1:] if rest else str(DEFAULT_PORT)
        bracketed = f"[{host}]"
    elif t.count(":") > 1:  # a bare IPv6 address: no port can be told apart
        host, port, bracketed = t, str(DEFAULT_PORT), f"[{t}]"
    else:
        host, sep, port = t.partition(":")
        port = port if sep else str(DEFAULT_PORT)
        bracketed = host
        if not host:
            raise CollectorAddressError(f"collector address {text!r} has no host: give HOST:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise CollectorAddressError(f"collector address {text!r} has no valid port (1-65535): e.g. "
                                    f"{bracketed}:{DEFAULT_PORT}")
    return f"{bracketed}:{int(port)}"


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _handshake(address: str, *, cafile: str | None) -> ssl.SSLSocket:
    """A TLS connection to ``address`` (verified against ``cafile`` without the name check, or not at all)."""
    host, port = _host_port(address)
    ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if not cafile:
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    sock = socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S)
    try:
        return ctx.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def _speaks_tls(address: str) -> bool:
    try:
        _handshake(address, cafile=None).close()
    except (OSError, ValueError):
        return False
    return True


def _certificate_names(address: str) -> list[str]:
    """The DNS names and IP addresses the collector's certificate holds ([] when it cannot be read)."""
    try:
        with _handshake(address, cafile=None) as s:
            der = s.getpeercert(binary_form=True)
        if der is None:
            return []
        from cryptography import x509  # deferred: only this error path needs it

        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]
    except Exception:  # the diagnosis is best effort: any failure leaves the names out
        return []


# How OpenSSL, through gRPC, says that the collector's certificate does not chain to the CA given.
_NOT_OUR_CA = ("CERTIFICATE_VERIFY_FAILED", "BAD_SIGNATURE", "certificate signature failure",
               "unable to get local issuer certificate", "self-signed certificate")


def _unavailable(details: str, address: str, tls: TlsFiles | None) -> CollectorError:
    """UNAVAILABLE said as what is wrong when the transport's security is (the details, or a handshake, say so)."""
    code = grpc.StatusCode.UNAVAILABLE
    host, _ = _host_port(address)
    if "Hostname Verification" in details or "Peer name" in details:
        names = _certificate_names(address)
        named = f" (it names {', '.join(names)})" if names else ""
        return CollectorError(f"the collector's certificate does not name {host}{named}: dial it by a name its "
                              f"certificate holds (--collector), or make its certificate with --host {host} "
                              "(podcap certs)", code, actionable=True)
    if tls is not None and ("certificate has expired" in details or "CERTIFICATE_EXPIRED" in details):
        return CollectorError(f"the certificate of the collector at {address} has expired (or this machine's clock "
                              "is wrong): renew it", code, actionable=True)
    if tls is not None and any(m in details for m in _NOT_OUR_CA):
        return CollectorError(f"the certificate of the collector at {address} is not signed by the CA in "
                              f"{tls.ca}: give the collector's own CA with --tls-ca or PODCAP_TLS_CA", code,
                              actionable=True)
    if tls is not None and ("WRONG_VERSION_NUMBER" in details or "Tls handshake failed" in details) \
            and not _speaks_tls(address):
        return CollectorError(f"the collector at {address} does not speak TLS (it runs with --insecure): leave out "
                              "--tls-ca and PODCAP_TLS_CA, or start it with --tls-cert/--tls-key", code,
                              actionable=True)
    if tls is None and "Connection refused" not in details and _speaks_tls(address):
        return CollectorError(f"the collector at {address} speaks TLS: give its CA certificate with --tls-ca or "
                              "PODCAP_TLS_CA (ca.pem from podcap certs)", code, actionable=True)
    return CollectorError(f"cannot reach the collector at {address} ({details})", code)


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


def _translate(e: grpc.RpcError, address: str, tls: TlsFiles | None = None) -> CollectorError:
    code = e.code() if isinstance(e, grpc.Call) else None
    details = e.details() if isinstance(e, grpc.Call) else str(e)
    if code == grpc.StatusCode.UNAVAILABLE:
        return _unavailable(details or "", address, tls)
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
        self.address = collector_address(address or default_address())
        self.timeout = timeout
        self.tls = tls if tls is not None else default_tls()
        self._channel = open_channel(self.address, self.tls,
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
            raise _translate(e, self.address, self.tls) from e

    def stop(self, capture_id: str) -> control_pb2.CaptureStatus:
        try:
            return self._stub.StopCapture(control_pb2.StopCaptureRequest(capture_id=capture_id),
                                          timeout=self.timeout)
        except grpc.RpcError as e:
            raise _translate(e, self.address, self.tls) from e

    def get(self, capture_id: str) -> control_pb2.CaptureStatus:
        try:
            return self._stub.GetCapture(control_pb2.GetCaptureRequest(capture_id=capture_id), timeout=self.timeout)
        except grpc.RpcError as e:
            raise _translate(e, self.address, self.tls) from e

    def audit(self, *, limit: int = 100, capture_id: str = "") -> list[control_pb2.AuditRecord]:
        try:
            return list(self._stub.ListAudit(control_pb2.ListAuditRequest(limit=limit, capture_id=capture_id),
                                             timeout=self.timeout).records)
        except grpc.RpcError as e:
            raise _translate(e, self.address, self.tls) from e

    def list_captures(self) -> list[control_pb2.CaptureStatus]:
        return list(self.list_all().captures)

    def list_all(self) -> control_pb2.ListCapturesResponse:
        """The captures, and those deleted recently."""
        try:
            return self._stub.ListCaptures(control_pb2.ListCapturesRequest(), timeout=self.timeout)
        except grpc.RpcError as e:
            raise _translate(e, self.address, self.tls) from e

    def delete(self, capture_id: str, *, force: bool = False) -> control_pb2.CaptureDeletion:
        try:
            return self._stub.DeleteCapture(control_pb2.DeleteCaptureRequest(capture_id=capture_id, force=force),
                                            timeout=self.timeout).deletion
        except grpc.RpcError as e:
            raise _translate(e, self.address, self.tls) from e

    def download(self, capture_id: str, pods: list[str] | None = None, *, since_ns: int = 0, until_ns: int = 0,
                 bpf: str = "", resume: Sequence[control_pb2.ResumePoint] = ()) -> Iterator[control_pb2.DownloadChunk]:
        req = control_pb2.DownloadRequest(capture_id=capture_id, pods=pods or [], since_unix_ns=since_ns,
                                          until_unix_ns=until_ns, filter=bpf, resume=list(resume))
        # The response iterator is also the call (a grpc.Future): cancelling it ends the RPC.
        call: grpc.Future[control_pb2.DownloadChunk] = self._stub.Download(req)  # type: ignore[assignment]
        try:
            yield from call  # type: ignore[misc]
        except grpc.RpcError as e:
            raise _translate(e, self.address, self.tls) from e
        finally:
            call.cancel()  # a reader that stops early (closes this generator) ends the call; no-op once it is done

    def follow(self, capture_id: str, pods: list[str] | None = None) -> Iterator[control_pb2.FollowMessage]:
        """Live packets of a capture until it ends; a cancelled stream (Ctrl+C) ends quietly."""
        try:
            yield from self._stub.Follow(control_pb2.FollowRequest(capture_id=capture_id, pods=pods or []))
        except grpc.RpcError as e:
            if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.CANCELLED:
                return
            raise _translate(e, self.address, self.tls) from e

    def capturable_pods(self, namespace: str = "", *,
                        timeout: float | None = None) -> control_pb2.ListCapturablePodsResponse:
        """The pods this user may capture now (only ``namespace`` when given), as the collector decides."""
        try:
            return self._stub.ListCapturablePods(control_pb2.ListCapturablePodsRequest(namespace=namespace),
                                                 timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise _translate(e, self.address, self.tls) from e

    # ---- flight recorders (issue 24) ----

    def record(self, req: control_pb2.StartRecorderRequest) -> control_pb2.RecorderStatus:
        try:
            return self._stub.StartRecorder(req, timeout=self.timeout)
        except grpc.RpcError as e:
            raise _translate(e, self.address, self.tls) from e

    def get_recorder(self, recorder_id: str) -> control_pb2.RecorderStatus:
        try:
            return self._stub.GetRecorder(control_pb2.GetRecorderRequest(recorder_id=recorder_id),
                                          timeout=self.timeout)
        except grpc.RpcError as e:
            raise _translate(e, self.address, self.tls) from e

    def stop_recorder(self, recorder_id: str) -> control_pb2.RecorderStatus:
        try:
            return self._stub.StopRecorder(control_pb2.StopRecorderRequest(recorder_id=recorder_id),
                                           timeout=self.timeout)
        except grpc.RpcError as e:
            raise _translate(e, self.address, self.tls) from e

    def trigger(self, recorder_id: str, pods: Sequence[str] = (), *, reason: str = "", no_wait: bool = False,
                timeout: float | None = None) -> control_pb2.TriggerRecorderResponse:
        """A manual trigger; waits (up to ``timeout``) for the save to end unless ``no_wait``."""
        req = control_pb2.TriggerRecorderRequest(recorder_id=recorder_id, pods=list(pods), reason=reason,
                                                 no_wait=no_wait)
        try:
            return self._stub.TriggerRecorder(req, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise _translate(e, self.address, self.tls) from e
