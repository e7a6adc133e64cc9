"""Transport security shared by the collector, the agents and the CLI.

One CA signs everything. With TLS the collector serves two ports: the agents' port (``Ingest``) requires a client
certificate signed by the CA whose common name is ``AGENT_IDENTITY`` (mutual TLS, checked again per call), and the
users' port (``Control``) presents the server certificate while users authenticate with bearer tokens. gRPC can
only require or not request client certificates per port, hence two. A CLI user — who has no agent certificate —
cannot reach or impersonate an agent. Plaintext exists only behind an explicit ``--insecure``, which logs a
warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from podcap.errors import InvalidInputError

log = logging.getLogger(__name__)

AGENT_IDENTITY = "podcap-agent"


class TlsConfigError(InvalidInputError):
    """Certificate files are missing, unreadable, or incomplete."""


@dataclass(frozen=True)
class TlsFiles:
    ca: str
    cert: str = ""
    key: str = ""

    def _read(self, path: str, what: str) -> bytes:
        """The PEM file ``path`` (a ``what``). gRPC takes any bytes and fails later with a log line and a vague
        "cannot connect", so a file that holds no PEM block of the expected kind is refused here, by name."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise TlsConfigError(f"cannot read the {what} {path}: {e.strerror}") from e
        marker = b"PRIVATE KEY-----" if what == "private key" else b"-----BEGIN CERTIFICATE-----"
        if marker not in data:
            raise TlsConfigError(f"{path} is not a PEM {what} (no {marker.decode().strip('-')} block in it)")
        return data

    def server_credentials(self, *, require_client_cert: bool) -> grpc.ServerCredentials:
        if not (self.cert and self.key):
            raise TlsConfigError("the collector needs --tls-cert and --tls-key (see `podcap certs`)")
        return grpc.ssl_server_credentials(
            [(self._read(self.key, "private key"), self._read(self.cert, "certificate"))],
            root_certificates=self._read(self.ca, "CA certificate"),
            require_client_auth=require_client_cert,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        if bool(self.cert) != bool(self.key):
            raise TlsConfigError("a client certificate needs both --tls-cert and --tls-key")
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca, "CA certificate"),
            private_key=self._read(self.key, "private key") if self.key else None,
            certificate_chain=self._read(self.cert, "certificate") if self.cert else None,
        )


def open_channel(address: str, tls: TlsFiles | None, *, options: list[tuple[str, int | str]] | None = None,
                 server_name: str = "") -> grpc.Channel:
    """A channel to ``address``: TLS when ``tls`` is given, else plaintext (the caller warned)."""
    opts = list(options or [])
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    if tls is None:
        return grpc.insecure_channel(address, options=opts)
    return grpc.secure_channel(address, tls.channel_credentials(), options=opts)


def peer_identity(context: grpc.ServicerContext) -> str:
    """Common name of the verified client certificate of this call, or "" when there is none."""
    auth = context.auth_context()
    names: object = auth.get("x509_common_name") or []
    first = names[0] if isinstance(names, list) and names else b""
    return first.decode(errors="replace") if isinstance(first, bytes) else str(first)
