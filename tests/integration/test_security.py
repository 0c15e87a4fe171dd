"""TLS, mutual TLS, API keys, the internal credential and rate limits over real sockets.

Certificates are generated at test time (a throwaway CA and leaf certificates for
127.0.0.1/localhost); nothing secret is stored in the repository.
"""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shortlist.client import Client, Recommendation, Tls
from shortlist.config import Settings
from shortlist.feedback.bus import InMemoryBus
from shortlist.feedback.stores import InMemoryStateStore
from shortlist.rpc.security import (
    InsecureConfiguration,
    TokenBuckets,
    check_gateway_policy,
    hash_key,
    is_loopback,
    parse_hashes,
)
from shortlist.rpc.server import start_server
from shortlist.services.launch import InProcessStack, start_service
from shortlist.v1 import gateway_pb2, gateway_pb2_grpc, ranking_pb2, ranking_pb2_grpc
from tests.conftest import bare_gateway

KEYS = ("key-alpha-0123456789", "key-beta-9876543210")
INTERNAL_TOKEN = "internal-token-for-tests"


def _secure_stack(bundle, pki, **gateway_overrides) -> InProcessStack:
    """Internal services over mutual TLS with the internal token; the gateway over TLS with
    API keys; each service with the settings its own process would have."""
    base = Settings.from_env({}, backend="memory", candidates=100)
    internal = base.replace(
        tls_cert_file=str(pki / "service.crt"),
        tls_key_file=str(pki / "service.key"),
        tls_client_ca_file=str(pki / "ca.crt"),
        internal_token_hash=hash_key(INTERNAL_TOKEN),
    )
    gateway = base.replace(
        **{
            "tls_cert_file": str(pki / "service.crt"),
            "tls_key_file": str(pki / "service.key"),
            "internal_ca_file": str(pki / "ca.crt"),
            "internal_token": INTERNAL_TOKEN,
            "api_key_hashes": ",".join(hash_key(k) for k in KEYS),
            **gateway_overrides,
        }
    )
    store, bus = InMemoryStateStore(), InMemoryBus()
    stack = InProcessStack()
    try:
        for name in ("retrieval", "ranking"):
            stack.services[name] = start_service(name, internal, bundle, "127.0.0.1:0", store)
        stack.services["gateway"] = start_service(
            "gateway",
            gateway,
            bundle,
            "localhost:0",
            publisher=bus.publisher(),
            retrieval_target=f"localhost:{stack.services['retrieval'].server.port}",
            ranking_target=f"localhost:{stack.services['ranking'].server.port}",
        )
    except Exception:
        stack.stop()
        raise
    return stack


@pytest.fixture(scope="module")
def secure(bundle, pki):
    stack = _secure_stack(bundle, pki)
    yield stack
    stack.stop()


def tls_channel(pki, target: str, client: str | None = None) -> grpc.Channel:
    kwargs = {}
    if client:
        kwargs = {
            "private_key": (pki / f"{client}.key").read_bytes(),
            "certificate_chain": (pki / f"{client}.crt").read_bytes(),
        }
    creds = grpc.ssl_channel_credentials((pki / "ca.crt").read_bytes(), **kwargs)
    return grpc.secure_channel(target, creds)


def raw_recommend(channel: grpc.Channel, bundle, metadata=()) -> gateway_pb2.RecommendResponse:
    """Recommend with exactly `metadata` on the wire (for credentials `Client` never sends)."""
    stub = gateway_pb2_grpc.GatewayStub(channel)
    request = gateway_pb2.RecommendRequest(user_id=bundle.users.id(3), k=5)
    return stub.Recommend(request, timeout=10, metadata=metadata)


def client(pki, target: str, key: str | None = None, tls: bool = True) -> Client:
    """A `Client` of the TLS gateway trusting the test CA, trying each call once (a refusal
    is the answer under test, not something to retry)."""
    settings = Tls.from_files(ca=pki / "ca.crt") if tls else False
    return Client(target, key, tls=settings, timeout_s=10, max_attempts=1)


def recommend(pki, target: str, bundle, key: str | None = None, tls: bool = True) -> Recommendation:
    with client(pki, target, key, tls) as c:
        return c.recommend(bundle.users.id(3), 5)


def test_tls_client_with_a_key_is_served_and_plaintext_is_refused(secure, bundle, pki):
    target = f"localhost:{secure.services['gateway'].server.port}"
    with tls_channel(pki, target) as channel:
        # Raw stub: the key as a bearer token, a header form `Client` never sends.
        reply = raw_recommend(channel, bundle, (("authorization", f"Bearer {KEYS[0]}"),))
        assert len(reply.items) == 5 and not reply.fallback_used  # both internal hops worked
    assert len(recommend(pki, target, bundle, KEYS[1]).items) == 5
    with pytest.raises(grpc.RpcError) as err:
        recommend(pki, target, bundle, KEYS[0], tls=False)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "metadata, message",
    [
        ((), "missing API key"),
        ((("authorization", "Bearer not-a-key"),), "invalid or revoked"),
        ((("x-api-key", KEYS[0] + "x"),), "invalid or revoked"),
        ((("authorization", KEYS[0]),), "missing API key"),  # no Bearer scheme
    ],
)
def test_missing_or_wrong_api_key_is_unauthenticated(secure, bundle, pki, metadata, message):
    target = f"localhost:{secure.services['gateway'].server.port}"
    # Raw stub: exactly these headers on the wire, some of them forms `Client` never sends.
    with tls_channel(pki, target) as channel:
        with pytest.raises(grpc.RpcError) as err:
            raw_recommend(channel, bundle, metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert message in err.value.details()


def list_services(channel: grpc.Channel) -> set[str]:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(
        stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
    )
    return {s.name for s in replies[0].list_services_response.service}


def test_health_stays_open_and_reflection_is_off_on_the_gateway_unless_set(secure, bundle, pki):
    target = f"localhost:{secure.services['gateway'].server.port}"
    with tls_channel(pki, target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            list_services(channel)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    stack = _secure_stack(bundle, pki, reflection=1)
    try:
        target = f"localhost:{stack.services['gateway'].server.port}"
        with tls_channel(pki, target) as channel:  # open, like health: no API key
            assert "shortlist.v1.Gateway" in list_services(channel)
    finally:
        stack.stop()


def test_plaintext_health_port_answers_probes_and_nothing_else(bundle, pki):
    """A TLS gateway with health_port: kubelet-style plaintext health checks succeed there;
    the API is not on that port, and plaintext on the main port is still refused."""
    from shortlist.tools.stack import free_port

    stack = _secure_stack(bundle, pki, health_port=free_port())
    try:
        server = stack.services["gateway"].server
        with grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
            health_stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "shortlist.v1.Gateway"):
                reply = health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            recommend(pki, f"127.0.0.1:{server.health_port}", bundle, tls=False)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with (
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
            pytest.raises(grpc.RpcError),
        ):
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        server.set_serving(False)  # the probe port follows the server's own states
        with grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        stack.stop()


def test_revoking_a_key_is_removing_its_hash(bundle, pki):
    stack = _secure_stack(bundle, pki, api_key_hashes=hash_key(KEYS[1]))
    try:
        target = f"localhost:{stack.services['gateway'].server.port}"
        with pytest.raises(grpc.RpcError) as err:
            recommend(pki, target, bundle, KEYS[0])
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert len(recommend(pki, target, bundle, KEYS[1]).items) == 5
    finally:
        stack.stop()


def test_internal_services_accept_only_the_gateway(secure, bundle, pki):
    target = f"localhost:{secure.services['ranking'].server.port}"
    request = ranking_pb2.RankRequest(user_id="u", k=1)
    # Plaintext, TLS without a client certificate, and a certificate from another CA: refused
    # by the transport.
    for channel in (
        grpc.insecure_channel(target),
        tls_channel(pki, target),
        tls_channel(pki, target, client="stranger"),
    ):
        with channel, pytest.raises(grpc.RpcError) as err:
            ranking_pb2_grpc.RankingStub(channel).Rank(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # A valid client certificate but not the internal token: UNAUTHENTICATED.
    with tls_channel(pki, target, client="service") as channel:
        stub = ranking_pb2_grpc.RankingStub(channel)
        for metadata in ((), (("x-shortlist-internal", "guess"),), (("x-api-key", KEYS[0]),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.Rank(request, timeout=5, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "gateway only" in err.value.details()
        # With the token the call reaches the servicer (which validates the request).
        with pytest.raises(grpc.RpcError) as err:
            stub.Rank(request, timeout=5, metadata=(("x-shortlist-internal", INTERNAL_TOKEN),))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_keys_are_never_logged(bundle, pki, caplog):
    caplog.set_level("DEBUG")
    stack = _secure_stack(bundle, pki)
    try:
        target = f"localhost:{stack.services['gateway'].server.port}"
        recommend(pki, target, bundle, KEYS[0])
        with pytest.raises(grpc.RpcError):
            recommend(pki, target, bundle, "wrong-key-secret-xyz")
    finally:
        stack.stop()
    text = caplog.text
    for secret in (*KEYS, "wrong-key-secret-xyz", INTERNAL_TOKEN):
        assert secret not in text


def test_rate_limit_per_api_key(bundle, pki):
    stack = _secure_stack(bundle, pki, rate_limit_per_s=2, rate_limit_burst=5)
    try:
        target = f"localhost:{stack.services['gateway'].server.port}"
        with client(pki, target, KEYS[0]) as first, client(pki, target, KEYS[1]) as second:
            first.wait_ready()  # the handshake before the calls: they come back to back
            user = bundle.users.id(3)
            codes = []
            for _ in range(8):
                try:
                    first.recommend(user, 5)
                    codes.append("OK")
                except grpc.RpcError as exc:
                    codes.append(exc.code().name)
                    assert "rate limit of 2 calls/s (burst 5)" in exc.details()
            assert codes[:5] == ["OK"] * 5 and "RESOURCE_EXHAUSTED" in codes[5:]
            # Another key has its own bucket; the first one refills at 2/s.
            assert second.recommend(user, 5).items
            time.sleep(0.6)
            assert first.recommend(user, 5).items
    finally:
        stack.stop()


def test_rate_limit_by_peer_without_keys(bundle):
    settings = Settings.from_env({}, backend="memory", rate_limit_per_s=1, rate_limit_burst=3)
    server = bare_gateway(settings)
    try:
        target = f"127.0.0.1:{server.port}"
        with (
            Client(target, timeout_s=5, max_attempts=1) as keyless,
            grpc.insecure_channel(target) as channel,
        ):
            codes = []
            for _ in range(5):
                try:
                    keyless.recommend("u", 1)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
            # The base servicer answers UNIMPLEMENTED until the bucket is empty.
            assert codes[:3] == [grpc.StatusCode.UNIMPLEMENTED] * 3
            assert codes[3:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
            # Health checks are never limited.
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(5):
                health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        server.stop(0)


def test_token_bucket_refills_and_forgets_old_clients():
    now = [0.0]
    buckets = TokenBuckets(rate=10, burst=2, max_clients=3, clock=lambda: now[0])
    assert buckets.take("a") == 0 and buckets.take("a") == 0
    assert buckets.take("a") == pytest.approx(0.1)
    now[0] += 0.1
    assert buckets.take("a") == 0
    for c in "bcde":
        buckets.take(c)
    assert len(buckets) == 3


def test_gateway_refuses_plaintext_or_keyless_beyond_loopback(pki):
    settings = Settings.from_env({})
    assert is_loopback("127.0.0.1:50051") and is_loopback("localhost:0")
    assert not is_loopback("[::]:50051") and not is_loopback("0.0.0.0:50051")
    check_gateway_policy(settings, "127.0.0.1:50051")  # local development: allowed
    with pytest.raises(InsecureConfiguration, match="without TLS .* and API keys"):
        check_gateway_policy(settings, "[::]:50051")
    with pytest.raises(InsecureConfiguration, match="API keys"):
        check_gateway_policy(
            settings.replace(tls_cert_file=str(pki / "service.crt")), "0.0.0.0:50051"
        )
    check_gateway_policy(settings.replace(insecure=1), "[::]:50051")  # explicitly allowed
    check_gateway_policy(
        settings.replace(tls_cert_file="x", api_key_hashes=hash_key("k")), "[::]:50051"
    )
    with pytest.raises(InsecureConfiguration):
        start_server(
            "gateway", lambda s: None, ("shortlist.v1.Gateway",), "0.0.0.0:0", settings=settings
        )


def test_key_hashes_must_be_sha256_hex_and_are_not_echoed():
    assert parse_hashes(f" {hash_key('a')}, ,{hash_key('b').upper()}") == {
        hash_key("a"),
        hash_key("b"),
    }
    with pytest.raises(ValueError) as err:
        parse_hashes("my-raw-secret-key")
    assert "my-raw-secret-key" not in str(err.value)


def test_hash_key_cli_prints_the_digest():
    from typer.testing import CliRunner

    from shortlist.tools.cli import app

    result = CliRunner().invoke(app, ["hash-key", "s3cret"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == hash_key("s3cret")
