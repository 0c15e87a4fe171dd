"""TLS certificates rotated under a live server (real sockets): new handshakes present the
new certificate without a restart, a half-written rotation keeps the old one, and the client
CA of mutual TLS is re-read too."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from shortlist.config import Settings
from shortlist.rpc.server import start_server
from tests.pki import Authority, presented_serial, replace, rotating_server

pytestmark = pytest.mark.integration


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
    r = rotating_server(tmp_path)
    serving = health_pb2.HealthCheckResponse.SERVING
    try:
        port = r.server.port
        assert presented_serial(port) == r.old_cert.serial_number
        # An open connection, made before the rotation, keeps working after it.
        creds = grpc.ssl_channel_credentials(r.old_ca.pem())
        kept = grpc.secure_channel(f"localhost:{port}", creds)
        kept_stub = health_pb2_grpc.HealthStub(kept)
        assert kept_stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == serving
        before = reloads()

        # Halfway: the new certificate with the old key does not match: not used.
        replace(r.cert_file, r.new_pem)
        assert presented_serial(port) == r.old_cert.serial_number
        assert health(port, r.old_ca.pem()) == serving
        replace(r.key_file, r.new_key)  # the rotation completes

        assert presented_serial(port) == r.new_cert.serial_number
        assert health(port, r.new_ca.pem()) == serving
        with pytest.raises(grpc.RpcError) as err:  # a client trusting the old CA only
            health(port, r.old_ca.pem())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reloads() - before == 1
        assert kept_stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == serving
        kept.close()

        # Files that vanish or break keep the certificate in use.
        replace(r.cert_file, b"not a certificate")
        assert presented_serial(port) == r.new_cert.serial_number
        assert health(port, r.new_ca.pem()) == serving
    finally:
        r.server.stop(0)


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
