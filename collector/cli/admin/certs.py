"""``podcap certs``: a CA and the certificates a quick start needs, written as PEM files.

For production, certificates come from a Kubernetes Secret or cert-manager; this makes a working set for a first
install or a test: ``ca.pem``/``ca-key.pem``, ``collector.pem``/``collector-key.pem`` (server; SANs from
``--host``), ``agent.pem``/``agent-key.pem`` (client, CN ``podcap-agent``). Keys are written 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from podcap.tls import AGENT_IDENTITY


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "podcap"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(*, days: int = 3650) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("podcap CA")).issuer_name(_name("podcap CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def issue(ca: Issued, cn: str, *, server_hosts: list[str] | None = None, client: bool = False,
          days: int = 825, not_before: datetime.datetime | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_hosts:
        sans: list[x509.GeneralName] = []
        for h in server_hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def write_pair(directory: str, stem: str, issued: Issued) -> tuple[str, str]:
    cert_path = os.path.join(directory, f"{stem}.pem")
    key_path = os.path.join(directory, f"{stem}-key.pem")
    with open(cert_path, "wb") as f:
        f.write(issued.cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(issued.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    return cert_path, key_path


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.IGNORECASE)


def check_host(host: str) -> str | None:
    """Why ``host`` cannot be a name in the collector's certificate (an IP address, or a DNS name, ``*.`` allowed
    first), or None."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    labels = host.removeprefix("*.").split(".")
    if not host or len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return f"{host!r} is neither an IP address nor a DNS name (e.g. collector.example, 10.0.0.5)"
    return None


def make_quickstart(directory: str, hosts: list[str]) -> list[str]:
    """Write CA, collector server and agent client certificates; return the files written."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    ca = make_ca()
    written = list(write_pair(directory, "ca", ca))
    cn = hosts[0] if len(hosts[0]) <= 64 else "podcap-collector"  # a common name holds 64 characters at most
    written += write_pair(directory, "collector", issue(ca, cn, server_hosts=hosts))
    written += write_pair(directory, "agent", issue(ca, AGENT_IDENTITY, client=True))
    return written
