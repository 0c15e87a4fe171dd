"""TLS certificates rotated under a live server (real sockets): new handshakes present the
new certificate without a restart, a half-written rotation keeps the old one, and the client
CA of mutual TLS is re-read too."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from shortlist.config import Settings
from shortlist.rpc.server import start_server
from tests.integration.test_security import _issue

pytestmark = pytest.mark.integration


class Authority:
    """A throwaway CA that issues leaf certificates for localhost / 127.0.0.1."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = _issue(name, self.key, None, self.key, ca=True)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def leaf(self, name: str) -> tuple[x509.Certificate, bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(name, self.key, self.cert.subject, key)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert, cert.public_bytes(serialization.Encoding.PEM), key_pem


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


def health(port: int, ca_pem: bytes, client: tuple[bytes, bytes] | None = None) -> int:
    """A grpc.health.v1 Check over a fresh TLS connection trusting `ca_pem`."""
    kwargs = {}
    if client is not None:
        kwargs = {"certificate_chain": client[0], "private_key": client[1]}
    creds = grpc.ssl_channel_credentials(ca_pem, **kwargs)
    options = [("grpc.use_local_subchannel_pool", 1)]  # never reuse another test's connection
    with grpc.secure_channel(f"localhost:{port}", creds, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


def reloads() -> float:
    return REGISTRY.get_sample_value("shortlist_tls_certificate_reloads_total") or 0.0


def test_new_handshakes_present_the_rotated_certificate(tmp_path):
    old_ca, new_ca = Authority("old CA"), Authority("new CA")
    old_cert, old_pem, old_key = old_ca.leaf("service")
    new_cert, new_pem, new_key = new_ca.leaf("service")
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(old_pem)
    key_file.write_bytes(old_key)
    settings = Settings(tls_cert_file=str(cert_file), tls_key_file=str(key_file))
    server = start_server("retrieval", lambda s: None, (), "127.0.0.1:0", settings=settings)
    serving = health_pb2.HealthCheckResponse.SERVING
    try:
        port = server.port
        assert presented_serial(port) == old_cert.serial_number
        # An open connection, made before the rotation, keeps working after it.
        creds = grpc.ssl_channel_credentials(old_ca.pem())
        kept = grpc.secure_channel(f"localhost:{port}", creds)
        kept_stub = health_pb2_grpc.HealthStub(kept)
        assert kept_stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == serving
        before = reloads()

        # Halfway: the new certificate with the old key does not match: not used.
        replace(cert_file, new_pem)
        assert presented_serial(port) == old_cert.serial_number
        assert health(port, old_ca.pem()) == serving
        replace(key_file, new_key)  # the rotation completes

        assert presented_serial(port) == new_cert.serial_number
        assert health(port, new_ca.pem()) == serving
        with pytest.raises(grpc.RpcError) as err:  # a client trusting the old CA only
            health(port, old_ca.pem())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reloads() - before == 1
        assert kept_stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == serving
        kept.close()

        # Files that vanish or break keep the certificate in use.
        replace(cert_file, b"not a certificate")
        assert presented_serial(port) == new_cert.serial_number
        assert health(port, new_ca.pem()) == serving
    finally:
        server.stop(0)


def test_mutual_tls_rereads_the_client_ca(tmp_path):
    server_ca, client_ca, next_client_ca = (Authority(n) for n in ("srv", "cli", "cli2"))
    _, server_pem, server_key = server_ca.leaf("service")
    _, client_pem, client_key = client_ca.leaf("gateway")
    _, next_pem, next_key = next_client_ca.leaf("gateway")
    files = {"tls.crt": server_pem, "tls.key": server_key, "ca.crt": client_ca.pem()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    settings = Settings(
        tls_cert_file=str(tmp_path / "tls.crt"),
        tls_key_file=str(tmp_path / "tls.key"),
        tls_client_ca_file=str(tmp_path / "ca.crt"),
    )
    server = start_server("ranking", lambda s: None, (), "127.0.0.1:0", settings=settings)
    serving = health_pb2.HealthCheckResponse.SERVING
    try:
        port = server.port
        assert health(port, server_ca.pem(), (client_pem, client_key)) == serving
        with pytest.raises(grpc.RpcError):
            health(port, server_ca.pem(), (next_pem, next_key))
        replace(tmp_path / "ca.crt", next_client_ca.pem())
        assert health(port, server_ca.pem(), (next_pem, next_key)) == serving
        with pytest.raises(grpc.RpcError):
            health(port, server_ca.pem(), (client_pem, client_key))
    finally:
        server.stop(0)
