"""A self-signed certificate like a node's ``pve-ssl.pem`` (SANs per reference §6)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Iterable

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


@attrs.frozen(kw_only=True)
class SelfSigned:
    context: ssl.SSLContext
    cert_pem: str
    der: bytes


def make_self_signed(nodes: Iterable[str]) -> SelfSigned:
    """Generate key + certificate and a server ``SSLContext`` (blocking: run in a thread)."""
    names = list(nodes)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PVE Cluster Node (lifecycled sim)"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{names[0]}.lifecycled.invalid"),
        ]
    )
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.DNSName("localhost"),
    ]
    sans.extend(x509.DNSName(n) for n in names)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)  # self-signed: its own issuer
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=730))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory(prefix="lifecycled-sim-") as tmp:
        path = os.path.join(tmp, "pve-ssl.pem")
        with open(path, "w", encoding="ascii") as fh:
            fh.write(key_pem + cert_pem)
        context.load_cert_chain(path)
    return SelfSigned(
        context=context, cert_pem=cert_pem, der=cert.public_bytes(serialization.Encoding.DER)
    )
