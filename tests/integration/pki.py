"""A test PKI written to a directory (``podcap certs``'s own functions): a CA, a server certificate it signed for
``localhost`` with the names given, and a second CA that signed nothing the server knows; what the TLS test modules
share. Modules add their own client certificates with ``issue``/``write_pair`` and the CAs returned."""

from __future__ import annotations

from podcap.collector.cli.admin.certs import Issued, issue, make_ca, write_pair


def write_pki(directory: str, *, server_hosts: list[str]) -> tuple[dict[str, str], Issued, Issued]:
    """The files by role (``ca``, ``server``, ``server-key``, ``other-ca``), the CA and the other CA."""
    ca, other = make_ca(), make_ca()
    files: dict[str, str] = {}
    files["ca"], _ = write_pair(directory, "ca", ca)
    files["server"], files["server-key"] = write_pair(directory, "server",
                                                      issue(ca, "localhost", server_hosts=server_hosts))
    files["other-ca"], _ = write_pair(directory, "other-ca", other)
    return files, ca, other
