"""Certificates for the TLS tests: a CA or a leaf signed by one, PEM files on disk, the
standard set of the security tests (`write_test_pki`), throwaway authorities for rotations,
and a server whose certificate files a test rotates (`rotating_server`)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def issue(
    cn: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate | None,
    key: ec.EllipticCurvePrivateKey,
    dns: Sequence[str],
    ips: Sequence[str] = (),
    ca: bool = False,
) -> x509.Certificate:
    """A certificate for `key` named `cn`, signed by `ca_key` (self-signed when `ca_cert` is
    None); leaves carry `dns`/`ips` as subject alternative names and serve both TLS ends."""
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject if ca_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        names = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256())


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS8, unencrypted."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pem(
    root: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None
) -> None:
    """`root/name.crt` and, with a key, `root/name.key` (PKCS8, unencrypted)."""
    (root / f"{name}.crt").write_bytes(cert_pem(cert))
    if key is not None:
        (root / f"{name}.key").write_bytes(key_pem(key))


LOCAL_DNS, LOCAL_IPS = ("localhost",), ("127.0.0.1",)


class Authority:
    """A throwaway CA that issues leaf certificates for localhost / 127.0.0.1."""

    def __init__(self, name: str) -> None:
        self.key = new_key()
        self.cert = issue(name, self.key, None, self.key, (), ca=True)

    def pem(self) -> bytes:
        return cert_pem(self.cert)

    def leaf(self, name: str) -> tuple[x509.Certificate, bytes, bytes]:
        """(certificate, its PEM, its key's PEM)."""
        key = new_key()
        cert = issue(name, self.key, self.cert, key, LOCAL_DNS, LOCAL_IPS)
        return cert, cert_pem(cert), key_pem(key)


def write_test_pki(root: Path) -> Path:
    """`ca.crt`, a leaf for the services (`service.crt`/`.key`, localhost and 127.0.0.1)
    signed by it, and `stranger.crt`/`.key` from an unrelated CA."""
    ca = Authority("shortlist test CA")
    write_pem(root, "ca", ca.cert)
    leaf_key = new_key()
    write_pem(
        root, "service", issue("service", ca.key, ca.cert, leaf_key, LOCAL_DNS, LOCAL_IPS), leaf_key
    )
    other = Authority("other CA")
    other_key = new_key()
    stranger = issue("stranger", other.key, other.cert, other_key, LOCAL_DNS, LOCAL_IPS)
    write_pem(root, "stranger", stranger, other_key)
    return root


def replace(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, as a Secret volume update swaps its files."""
    tmp = path.with_suffix(path.suffix + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def presented_serial(port: int) -> int:
    """The serial number of the certificate the server presents in a new handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


@dataclass
class Rotation:
    """A health-only server over TLS from `cert_file`/`key_file`, which hold the old CA's
    leaf; the new CA's leaf is ready to be written over them."""

    old_ca: Authority
    new_ca: Authority
    old_cert: x509.Certificate
    new_cert: x509.Certificate
    new_pem: bytes
    new_key: bytes
    cert_file: Path
    key_file: Path
    server: Any  # shortlist.rpc.server.RunningServer


def rotating_server(root: Path) -> Rotation:
    """The set-up of the certificate rotation tests: a server (health only) whose files in
    `root` a test then replaces with the new leaf. Stop it with `.server.stop(0)`."""
    from shortlist.config import Settings
    from shortlist.rpc.server import start_server

    old_ca, new_ca = Authority("old CA"), Authority("new CA")
    old_cert, old_pem, old_key = old_ca.leaf("service")
    new_cert, new_pem, new_key = new_ca.leaf("service")
    cert_file, key_file = root / "tls.crt", root / "tls.key"
    cert_file.write_bytes(old_pem)
    key_file.write_bytes(old_key)
    settings = Settings(tls_cert_file=str(cert_file), tls_key_file=str(key_file))
    server = start_server("retrieval", lambda s: None, (), "127.0.0.1:0", settings=settings)
    return Rotation(
        old_ca, new_ca, old_cert, new_cert, new_pem, new_key, cert_file, key_file, server
    )
