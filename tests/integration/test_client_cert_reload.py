"""The gateway's client certificate towards the internal services rotated under a live
channel (real sockets, mutual TLS): calls made after the files change present the new
certificate without a restart, through stubs made before the rotation too; a half-written
rotation (a certificate whose key has not arrived) keeps the old one; the HTTP admin
bridge's channel follows the files as well."""

from __future__ import annotations

import asyncio
import logging
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from shortlist.config import Settings
from shortlist.rpc.security import INTERNAL_HEADER, server_credentials
from shortlist.rpc.server import client_channel
from shortlist.services.http_api import AdminBridge
from shortlist.v1 import feedback_pb2, feedback_pb2_grpc
from tests.conftest import eventually
from tests.pki import Authority, replace

pytestmark = pytest.mark.integration
METHOD = "/shortlist.test.Who/Am"


def common_name(context: grpc.ServicerContext) -> str:
    """The CN of the caller's verified client certificate (the server's view)."""
    (name,) = context.auth_context()["x509_common_name"]
    return name.decode()


class Who(feedback_pb2_grpc.FeedbackAdminServicer):
    def Status(self, request, context):
        return feedback_pb2.FeedbackStatusResponse(topic=common_name(context))


def whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
    return common_name(context).encode()


@pytest.fixture
def plane(tmp_path: Path):
    """A mutual-TLS server (client certificates from `ca` required) and the gateway's
    client files, first holding the identity `gateway-old`."""
    ca = Authority("internal CA")
    (tmp_path / "ca.crt").write_bytes(ca.pem())
    _, cert, key = ca.leaf("localhost")
    (tmp_path / "server.crt").write_bytes(cert)
    (tmp_path / "server.key").write_bytes(key)
    _, cert, key = ca.leaf("gateway-old")
    (tmp_path / "client.crt").write_bytes(cert)
    (tmp_path / "client.key").write_bytes(key)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "shortlist.test.Who", {"Am": grpc.unary_unary_rpc_method_handler(whoami)}
            )
        ]
    )
    feedback_pb2_grpc.add_FeedbackAdminServicer_to_server(Who(), server)
    credentials = server_credentials(
        Settings(
            tls_cert_file=str(tmp_path / "server.crt"),
            tls_key_file=str(tmp_path / "server.key"),
            tls_client_ca_file=str(tmp_path / "ca.crt"),
        )
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    gateway = Settings(
        internal_ca_file=str(tmp_path / "ca.crt"),
        internal_cert_file=str(tmp_path / "client.crt"),
        internal_key_file=str(tmp_path / "client.key"),
        internal_token="token",
    )
    yield ca, tmp_path, f"localhost:{port}", gateway
    server.stop(None)


def client_reloads() -> float:
    return REGISTRY.get_sample_value("shortlist_tls_client_certificate_reloads_total") or 0.0


def test_calls_present_the_rotated_client_certificate(plane, caplog):
    ca, root, target, gateway = plane
    channel = client_channel(target, settings=gateway)  # as the gateway dials an internal service
    who = channel.unary_unary(METHOD)  # bound once, as a stub's method is
    try:
        assert who(b"", timeout=5) == b"gateway-old"
        before = client_reloads()
        # cert-manager renews: a new key and certificate for a new identity
        _, cert, key = ca.leaf("gateway-new")
        replace(root / "client.key", key)
        replace(root / "client.crt", cert)
        assert eventually(lambda: who(b"", timeout=5) == b"gateway-new", timeout_s=30)
        assert client_reloads() == before + 1
        # half a rotation: a certificate whose key is not there yet is not used
        _, cert, _ = ca.leaf("gateway-half")
        with caplog.at_level(logging.WARNING, logger="shortlist.rpc.client_tls"):
            replace(root / "client.crt", cert)
            eventually(lambda: who(b"", timeout=5) and "not used" in caplog.text, timeout_s=30)
        assert who(b"", timeout=5) == b"gateway-new"
        assert client_reloads() == before + 1
    finally:
        channel.close()


def test_the_http_admin_bridge_follows_the_client_certificate(plane):
    ca, root, target, gateway = plane

    async def scenario() -> tuple[str, str, bool]:
        bridge = AdminBridge(target, gateway)
        await bridge.open()
        try:
            first = await bridge.stub.Status(feedback_pb2.FeedbackStatusRequest(), timeout=5)
            old_channel = bridge.channel
            _, cert, key = ca.leaf("gateway-next")
            replace(root / "client.key", key)
            replace(root / "client.crt", cert)
            names = first.topic
            for _ in range(300):  # the bridge looks at the files once a second
                bridge._reload()
                if bridge.channel is not old_channel:
                    break
                await asyncio.sleep(0.1)
            after = await bridge.stub.Status(
                feedback_pb2.FeedbackStatusRequest(),
                timeout=5,
                metadata=((INTERNAL_HEADER, "token"),),
            )
            return names, after.topic, old_channel in bridge._retired
        finally:
            await bridge.close()

    first, after, retired = asyncio.run(scenario())
    assert first == "gateway-old"
    assert after == "gateway-next"
    assert retired  # the old channel is kept for its calls in flight, closed later
