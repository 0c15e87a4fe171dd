"""Kafka clients on SASL_SSL as deploy/k8s configures them (`client_security`), over a real
socket: a TLS listener of this test's own (the local tansu broker offers no TLS listener
kafka-python can use) receives the client's first Kafka request only when the client
trusts the listener's CA and the certificate names the host dialled; SASL runs inside
the TLS session, so the password never crosses in clear."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from kafka import KafkaProducer
from kafka.errors import KafkaError

from shortlist.config import Settings
from shortlist.feedback.bus import client_security
from tests.pki import issue, write_pem

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("kafka-pki")

    for ca_name in ("ca", "other-ca"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = issue(ca_name, ca_key, None, ca_key, [], ca=True)
        write_pem(root, ca_name, ca)
        if ca_name == "ca":
            for leaf, dns in (("broker", ["localhost", "kafka"]), ("elsewhere", ["elsewhere"])):
                key = ec.generate_private_key(ec.SECP256R1())
                write_pem(root, leaf, issue(leaf, ca_key, ca, key, dns), key)
    return root


class TLSListener:
    """Accepts one connection, completes TLS with `cert`, and keeps the first Kafka
    request it decrypts (api key, client id), or the handshake's error."""

    def __init__(self, cert: str, key: str) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.request: tuple[int, str] | None = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(20)
        try:
            raw, _ = self.sock.accept()
        except OSError as exc:
            self.error = f"no connection: {exc}"
            return
        raw.settimeout(10)
        try:
            with self.context.wrap_socket(raw, server_side=True) as tls:
                size = struct.unpack(">i", self._read(tls, 4))[0]
                body = self._read(tls, size)
                api_key, _version, _correlation, id_len = struct.unpack(">hhih", body[:10])
                self.request = (api_key, body[10 : 10 + id_len].decode())
        except (OSError, ssl.SSLError, struct.error) as exc:
            self.error = repr(exc)
        finally:
            self.sock.close()

    @staticmethod
    def _read(tls: ssl.SSLSocket, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = tls.recv(n - len(out))
            if not chunk:
                raise OSError("closed")
            out += chunk
        return out

    def wait(self) -> None:
        self.thread.join(timeout=30)


def dial(listener: TLSListener, ca_file: str) -> None:
    """A producer with the k8s Kafka settings (SASL_SSL, SCRAM user, the CA) dialling
    `localhost`; it cannot finish (the listener is no broker): only what reached it counts."""
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_username="feedback",
        kafka_password="scram-password",
        kafka_ca_file=ca_file,
    )
    # kafka-python raises its own errors, or the TLS verification's from the constructor
    with contextlib.suppress(KafkaError, ssl.SSLError):
        KafkaProducer(
            bootstrap_servers=f"localhost:{listener.port}",
            client_id="shortlist-tls-test",
            api_version_auto_timeout_ms=3000,
            request_timeout_ms=3000,
            **client_security(settings),
        ).close()
    listener.wait()


def test_a_client_trusting_the_ca_speaks_kafka_inside_tls(pki):
    listener = TLSListener(str(pki / "broker.crt"), str(pki / "broker.key"))
    dial(listener, str(pki / "ca.crt"))
    assert listener.error is None, listener.error
    api_key, client_id = listener.request
    assert api_key in (18, 17), api_key  # ApiVersions or SaslHandshake: Kafka, decrypted
    assert client_id == "shortlist-tls-test"


@pytest.mark.parametrize(
    "served,trusted",
    [("broker", "other-ca"), ("elsewhere", "ca")],
    ids=["another-ca", "wrong-host"],
)
def test_a_client_refuses_a_broker_it_cannot_verify(pki, served, trusted):
    listener = TLSListener(str(pki / f"{served}.crt"), str(pki / f"{served}.key"))
    dial(listener, str(pki / f"{trusted}.crt"))
    assert listener.request is None  # nothing, the SASL exchange included, was sent
    assert listener.error is not None
