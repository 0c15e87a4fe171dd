"""The internal plane as deploy/k8s configures it, over real sockets bound beyond loopback
(0.0.0.0, dialled at the host's own address when it has one): mutual TLS, the internal
token and the gateway's identity in its client certificate. Every internal RPC without
credentials, with another identity, or with a public API key is refused; the gateway's
calls go through; an internal service refuses to start there without mutual TLS; every
public and internal RPC is fuzzed with auth on."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from shortlist.client import Client
from shortlist.config import Settings
from shortlist.feedback.bus import InMemoryBus
from shortlist.feedback.stores import InMemoryStateStore
from shortlist.rpc.security import InsecureConfiguration, hash_key
from shortlist.services.launch import InProcessStack, start_service
from shortlist.v1 import (
    common_pb2,
    feedback_pb2,
    feedback_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    ranking_pb2,
    ranking_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from tests.pki import issue, write_pem

pytestmark = pytest.mark.integration
TOKEN = "internal-token-of-the-plane-test"
API_KEY = "public-key-of-the-plane-test"
ADMIN_KEY = "admin-key-of-the-plane-test"  # the admin scope: the public side's widest key
GATEWAY_ID = "gateway.shortlist.internal"
SERVICES = ("retrieval", "ranking", "feedback")


def host_address() -> str:
    """This host's address on the interface of its default route, else 127.0.0.1 (the
    servers still bind 0.0.0.0, so the k8s-shaped policy applies either way). The probes
    are unicast documentation addresses: connecting a UDP socket sends no packet, it only
    picks a route (a broadcast address would be refused and give loopback)."""
    for probe_address in ("198.51.100.1", "203.0.113.1", "10.255.255.1"):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.connect((probe_address, 9))
            address = probe.getsockname()[0]
        except OSError:
            continue
        finally:
            probe.close()
        if not address.startswith("127.") and address != "0.0.0.0":
            return address
    return "127.0.0.1"


HOST = host_address()


@pytest.fixture(scope="module")
def plane_pki(tmp_path_factory) -> Path:
    """One CA (as the cert-manager Issuer of deploy/k8s), a certificate per service named
    by its Service DNS name, the gateway's client identity, and another service's."""
    root = tmp_path_factory.mktemp("plane-pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("shortlist internal CA", ca_key, None, ca_key, [], ca=True)
    write_pem(root, "ca", ca)
    leaves = {name: ([name, f"{name}.shortlist.svc"], [HOST, "127.0.0.1"]) for name in SERVICES}
    leaves["gateway"] = ([GATEWAY_ID], [])
    leaves["forged"] = ([GATEWAY_ID], [])  # the gateway's name, signed by another CA
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = issue("shortlist internal CA", other_key, None, other_key, [], ca=True)
    for name, (dns, ips) in leaves.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cn = dns[0] if name in ("gateway", "forged") else f"{name}.shortlist.internal"
        if name == "forged":
            cert = issue(cn, other_key, other_ca, key, dns, ips)
        else:
            cert = issue(cn, ca_key, ca, key, dns, ips)
        write_pem(root, name, cert, key)
    return root


def internal_settings(pki: Path, name: str) -> Settings:
    """What deploy/k8s gives an internal service (its own certificate, the CA of client
    certificates, the token's hash, the gateway's identity)."""
    return Settings.from_env(
        {},
        backend="memory",
        candidates=100,
        tls_cert_file=str(pki / f"{name}.crt"),
        tls_key_file=str(pki / f"{name}.key"),
        tls_client_ca_file=str(pki / "ca.crt"),
        internal_token_hash=hash_key(TOKEN),
        internal_peer_names=GATEWAY_ID,
    )


@pytest.fixture(scope="module")
def plane(bundle, plane_pki):
    pki = plane_pki
    store, bus = InMemoryStateStore(), InMemoryBus()
    stack = InProcessStack()
    try:
        for name in SERVICES:
            stack.services[name] = start_service(
                name,
                internal_settings(pki, name),
                bundle,
                "0.0.0.0:0",
                store,
                publisher=bus.publisher(),
                consumer=bus.consumer(),
            )
        gateway = Settings.from_env(
            {},
            backend="memory",
            candidates=100,
            insecure=1,  # the public side is not under test here
            api_key_hashes=f"{hash_key(API_KEY)},{hash_key(ADMIN_KEY)}:admin+recommend+feedback",
            internal_ca_file=str(pki / "ca.crt"),
            internal_cert_file=str(pki / "gateway.crt"),
            internal_key_file=str(pki / "gateway.key"),
            internal_token=TOKEN,
        )
        stack.services["gateway"] = start_service(
            "gateway",
            gateway,
            bundle,
            "127.0.0.1:0",
            publisher=bus.publisher(),
            retrieval_target=f"{HOST}:{stack.services['retrieval'].server.port}",
            ranking_target=f"{HOST}:{stack.services['ranking'].server.port}",
        )
    except Exception:
        stack.stop()
        raise
    yield stack
    stack.stop()


def channel(pki: Path, stack, name: str, client: str | None) -> grpc.Channel:
    """A TLS channel to service `name` at the host's address, verifying its certificate
    for its Service DNS name, with `client`'s certificate (None: no client certificate;
    "plaintext": no TLS at all)."""
    target = f"{HOST}:{stack.services[name].server.port}"
    options = [("grpc.ssl_target_name_override", name), ("grpc.use_local_subchannel_pool", 1)]
    if client == "plaintext":
        return grpc.insecure_channel(target, options=options[1:])
    kwargs = {}
    if client is not None:
        kwargs = {
            "private_key": (pki / f"{client}.key").read_bytes(),
            "certificate_chain": (pki / f"{client}.crt").read_bytes(),
        }
    creds = grpc.ssl_channel_credentials((pki / "ca.crt").read_bytes(), **kwargs)
    return grpc.secure_channel(target, creds, options=options)


# Every internal RPC, with a request the servicer accepts.
CALLS = [
    ("retrieval", "Retrieve", lambda c: retrieval_pb2_grpc.RetrievalStub(c).Retrieve,
     lambda: retrieval_pb2.RetrieveRequest(user_id="user-1", n=3)),
    ("retrieval", "SimilarItems", lambda c: retrieval_pb2_grpc.RetrievalStub(c).SimilarItems,
     lambda: common_pb2.SimilarItemsRequest(item_id="no-such-item", k=3)),
    ("ranking", "Rank", lambda c: ranking_pb2_grpc.RankingStub(c).Rank,
     lambda: ranking_pb2.RankRequest(user_id="u", k=1)),
    ("feedback", "Status", lambda c: feedback_pb2_grpc.FeedbackAdminStub(c).Status,
     lambda: feedback_pb2.FeedbackStatusRequest()),
    ("feedback", "UpsertItems", lambda c: feedback_pb2_grpc.FeedbackAdminStub(c).UpsertItems,
     lambda: feedback_pb2.UpsertItemsRequest()),
    ("feedback", "HideItems", lambda c: feedback_pb2_grpc.FeedbackAdminStub(c).HideItems,
     lambda: feedback_pb2.ItemIdsRequest(item_ids=["x"])),
    ("feedback", "ShowItems", lambda c: feedback_pb2_grpc.FeedbackAdminStub(c).ShowItems,
     lambda: feedback_pb2.ItemIdsRequest(item_ids=["x"])),
    ("feedback", "RemoveItems", lambda c: feedback_pb2_grpc.FeedbackAdminStub(c).RemoveItems,
     lambda: feedback_pb2.ItemIdsRequest()),
    ("feedback", "DeleteUser", lambda c: feedback_pb2_grpc.FeedbackAdminStub(c).DeleteUser,
     lambda: feedback_pb2.DeleteUserRequest()),
]  # fmt: skip
TOKEN_MD = (("x-shortlist-internal", TOKEN),)


@pytest.mark.parametrize("service,method,stub,request_of", CALLS, ids=[c[1] for c in CALLS])
def test_every_internal_rpc_is_refused_without_the_gateways_identity_and_token(
    plane, plane_pki, service, method, stub, request_of
):
    refusals = {
        # the transport refuses: no TLS, TLS without a client certificate, or one naming
        # the gateway signed by another CA (a forged identity)
        ("plaintext", TOKEN_MD): grpc.StatusCode.UNAVAILABLE,
        (None, TOKEN_MD): grpc.StatusCode.UNAVAILABLE,
        ("forged", TOKEN_MD): grpc.StatusCode.UNAVAILABLE,
        # a certificate from the same CA naming another identity, with the right token
        ("ranking" if service != "ranking" else "retrieval", TOKEN_MD): (
            grpc.StatusCode.PERMISSION_DENIED
        ),
        # the gateway's identity without the token, with a guess, with a public API key
        ("gateway", ()): grpc.StatusCode.UNAUTHENTICATED,
        ("gateway", (("x-shortlist-internal", "guess"),)): grpc.StatusCode.UNAUTHENTICATED,
        ("gateway", (("x-api-key", API_KEY), ("authorization", f"Bearer {API_KEY}"))): (
            grpc.StatusCode.UNAUTHENTICATED
        ),
        # keys of the wrong scope: API keys (public, even with the admin scope the HTTP
        # admin calls need) are not the internal credential, in whichever header
        ("gateway", (("x-api-key", ADMIN_KEY), ("authorization", f"Bearer {ADMIN_KEY}"))): (
            grpc.StatusCode.UNAUTHENTICATED
        ),
        ("gateway", (("x-shortlist-internal", ADMIN_KEY),)): grpc.StatusCode.UNAUTHENTICATED,
        ("gateway", (("x-shortlist-internal", API_KEY),)): grpc.StatusCode.UNAUTHENTICATED,
        # the gateway's own hashed token value is not the token either
        ("gateway", (("x-shortlist-internal", hash_key(TOKEN)),)): (
            grpc.StatusCode.UNAUTHENTICATED
        ),
    }
    for (client, metadata), code in refusals.items():
        with channel(plane_pki, plane, service, client) as ch:
            with pytest.raises(grpc.RpcError) as err:
                stub(ch)(request_of(), timeout=5, metadata=metadata)
            assert err.value.code() == code, (client, metadata, err.value.details())
            if code == grpc.StatusCode.PERMISSION_DENIED:
                assert GATEWAY_ID in err.value.details()
    # The gateway's identity with the token reaches the servicer: its answer, whatever it
    # is, is not a refusal of the caller.
    with channel(plane_pki, plane, service, "gateway") as ch:
        try:
            stub(ch)(request_of(), timeout=5, metadata=TOKEN_MD)
        except grpc.RpcError as exc:
            assert exc.code() not in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAVAILABLE,
            ), (method, exc.code(), exc.details())


def test_the_gateway_calls_the_internal_services_over_the_plane(plane, bundle):
    target = f"127.0.0.1:{plane.services['gateway'].server.port}"
    with Client(target, API_KEY, timeout_s=10) as client:
        reply = client.recommend(bundle.users.id(3), 5)
    assert len(reply.items) == 5 and not reply.fallback_used, reply.fallback_reason


@pytest.mark.parametrize(
    "missing",
    ["tls_client_ca_file", "internal_token_hash"],
)
def test_an_internal_service_beyond_loopback_needs_mutual_tls_and_the_token(
    bundle, plane_pki, missing
):
    settings = internal_settings(plane_pki, "ranking").replace(
        **{missing: ""}, internal_peer_names=""
    )
    with pytest.raises(InsecureConfiguration, match=missing):
        start_service("ranking", settings, bundle, "0.0.0.0:0", InMemoryStateStore())
    # loopback (local development) or an explicit insecure=1 may
    for address, insecure in (("127.0.0.1:0", 0), ("0.0.0.0:0", 1)):
        started = start_service(
            "ranking", settings.replace(insecure=insecure), bundle, address, InMemoryStateStore()
        )
        started.stop()


def test_peer_names_need_a_client_ca(bundle, plane_pki):
    settings = internal_settings(plane_pki, "ranking").replace(tls_client_ca_file="")
    with pytest.raises(InsecureConfiguration, match="internal_peer_names needs"):
        start_service("ranking", settings, bundle, "127.0.0.1:0", InMemoryStateStore())


# ---------------------------------------------------------------- fuzzing with auth on


def message_strategy(descriptor, depth: int = 0):
    """Any message of `descriptor`: every field drawn (strings of every kind, huge ones,
    out-of-range numbers, NaN, nested and repeated messages, maps)."""
    from google.protobuf import message_factory
    from google.protobuf.descriptor import FieldDescriptor as F
    from hypothesis import strategies as st

    from tests.integration.test_fuzz import int32, int64, texts

    scalars = {
        F.TYPE_STRING: texts,
        F.TYPE_INT32: int32,
        F.TYPE_ENUM: int32,
        F.TYPE_INT64: int64,
        F.TYPE_UINT32: st.integers(0, 2**32 - 1),
        F.TYPE_UINT64: st.integers(0, 2**64 - 1),
        F.TYPE_BOOL: st.booleans(),
        F.TYPE_FLOAT: st.floats(width=32),
        F.TYPE_DOUBLE: st.floats(),
        F.TYPE_BYTES: st.binary(max_size=64),
    }
    cls = message_factory.GetMessageClass(descriptor)
    fields = {}
    for f in descriptor.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            fields[f.name] = st.dictionaries(texts, texts, max_size=4)
            continue
        if f.message_type is not None:
            if depth >= 2:  # deep enough: the field is left out
                continue
            one = message_strategy(f.message_type, depth + 1)
        else:
            one = scalars[f.type]
        if f.is_repeated:
            fields[f.name] = st.lists(one, max_size=6 if depth else 40)
        else:
            fields[f.name] = one if f.message_type is None else st.one_of(st.none(), one)
    optional = {k: v for k, v in fields.items()}
    return st.fixed_dictionaries({}, optional=optional).map(
        lambda kw: cls(**{k: v for k, v in kw.items() if v is not None})
    )


def internal_fuzz_examples() -> int:
    return int(os.environ.get("FUZZ_EXAMPLES_INTERNAL", "500"))


# Raw stubs: the fuzzer sends arbitrary messages and credentials, which `Client` never builds.
GATEWAY_CALLS = [
    ("gateway", "Recommend", lambda c: gateway_pb2_grpc.GatewayStub(c).Recommend,
     lambda: gateway_pb2.RecommendRequest()),
    ("gateway", "SendFeedback", lambda c: gateway_pb2_grpc.GatewayStub(c).SendFeedback,
     lambda: gateway_pb2.SendFeedbackRequest()),
    ("gateway", "SimilarItems", lambda c: gateway_pb2_grpc.GatewayStub(c).SimilarItems,
     lambda: common_pb2.SimilarItemsRequest()),
]  # fmt: skip
GOOD = "<the call's own credential>"


def test_fuzz_every_public_and_internal_rpc_with_auth_on(plane, plane_pki):
    """Random requests to every RPC (>= 500 examples): with the right credential (the
    gateway's identity and the internal token; an API key on the gateway) the answer is OK
    or a client-error code with a message, never INTERNAL or UNKNOWN; with any other
    credential, UNAUTHENTICATED before the request is looked at."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.integration.test_fuzz import ALLOWED

    channels = {name: channel(plane_pki, plane, name, "gateway") for name in SERVICES}
    channels["gateway"] = grpc.insecure_channel(
        f"127.0.0.1:{plane.services['gateway'].server.port}",
        options=[("grpc.max_send_message_length", -1)],
    )
    credentials = {name: ("x-shortlist-internal", TOKEN) for name in SERVICES}
    credentials["gateway"] = ("x-api-key", API_KEY)
    calls = [
        (service, method, stub(channels[service]), type(request_of()).DESCRIPTOR)
        for service, method, stub, request_of in CALLS + GATEWAY_CALLS
    ]
    codes: dict[str, set[str]] = {}

    @given(
        pick=st.sampled_from(range(len(calls))),
        data=st.data(),
        token=st.one_of(
            st.just(GOOD),
            st.text(max_size=80),
            st.sampled_from(["", "guess", TOKEN + " ", TOKEN.upper(), TOKEN[:-1], API_KEY[:-1]]),
        ),
    )
    @settings(
        max_examples=internal_fuzz_examples(),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    def fuzz(pick, data, token):
        service, method, call, descriptor = calls[pick]
        request = data.draw(message_strategy(descriptor))
        header, good = credentials[service]
        token = good if token == GOOD else token
        metadata = ((header, token),)
        if not token.isprintable() or not token.isascii() or token != token.strip():
            metadata = ((f"{header}-bin", token.encode("utf-8", "surrogatepass")),)
        try:
            call(request, timeout=10, metadata=metadata)
            code, details = grpc.StatusCode.OK, "ok"
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
        codes.setdefault(f"{service}/{method}", set()).add(code.name)
        too_large = request.ByteSize() > 4 * 1024 * 1024  # refused before any interceptor
        if token == good:
            assert code in ALLOWED, f"{method}: {code.name} {details!r} for {str(request)[:200]}"
        elif too_large:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (method, code, details)
        else:
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method, code, details)
        assert details and details.strip()

    try:
        fuzz()
    finally:
        for ch in channels.values():
            ch.close()
    assert set(codes) == {f"{s}/{m}" for s, m, _, _ in CALLS + GATEWAY_CALLS}, codes
