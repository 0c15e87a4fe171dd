"""Key scopes, user tokens (JWT) and per-caller event-id dedup over real sockets.

One in-memory stack (gateway, retrieval, ranking, the feedback worker) on loopback with
scoped API keys and HS256 user tokens; the worker's counters show what was applied.
"""

from __future__ import annotations

import time

import grpc
import jwt
import pytest

from shortlist.config import Settings
from shortlist.feedback.bus import InMemoryBus
from shortlist.feedback.stores import InMemoryStateStore
from shortlist.rpc.security import hash_key
from shortlist.rpc.server import start_server
from shortlist.services.launch import start_inprocess_stack
from shortlist.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.conftest import bare_gateway, eventually

FULL_KEY = "key-full-0123456789"  # configured without scopes: all public scopes
READ_KEY = "key-read-0123456789"  # recommend only
OTHER_KEY = "key-other-0123456789"
SECRET = "jwt-secret-for-tests-0123456789abcdef"
LIKE, VIEW = common_pb2.FEEDBACK_KIND_LIKE, common_pb2.FEEDBACK_KIND_VIEW


def token(sub: str, scope: str = "recommend feedback", secret: str = SECRET, **claims) -> str:
    payload = {"sub": sub, "scope": scope, "exp": int(time.time()) + 300, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


@pytest.fixture(scope="module")
def stack(bundle):
    settings = Settings.from_env(
        {},
        backend="memory",
        candidates=100,
        api_key_hashes=(
            f"{hash_key(FULL_KEY)},{hash_key(READ_KEY)}:recommend,{hash_key(OTHER_KEY)}"
        ),
        jwt_secret=SECRET,
    )
    bus = InMemoryBus()
    stack = start_inprocess_stack(
        settings, bundle, InMemoryStateStore(), bus.publisher(), bus.consumer()
    )
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def gateway(stack):
    with grpc.insecure_channel(stack.gateway_target) as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)


def key(k: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", k),)


def bearer(t: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {t}"),)


def recommend(gateway, user: str, metadata):
    request = gateway_pb2.RecommendRequest(user_id=user, k=3)
    return gateway.Recommend(request, timeout=10, metadata=metadata)


def send(gateway, events, metadata) -> gateway_pb2.SendFeedbackResponse:
    request = gateway_pb2.SendFeedbackRequest(events=events)
    return gateway.SendFeedback(request, timeout=10, metadata=metadata)


def like(user: str, item: str, event_id: str = "", ts: int = 0) -> common_pb2.FeedbackEvent:
    return common_pb2.FeedbackEvent(
        event_id=event_id, user_id=user, item_id=item, kind=LIKE, timestamp_ms=ts
    )


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def settled(worker, target: int) -> bool:
    return worker.applied + worker.duplicates >= target


def test_key_without_feedback_scope_may_recommend_only(gateway, bundle):
    user = bundle.users.id(1)
    assert len(recommend(gateway, user, key(READ_KEY)).items) == 3
    code, message = code_of(lambda: send(gateway, [like(user, bundle.items.id(0))], key(READ_KEY)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "lacks scope 'feedback'" in message and "SendFeedback" in message
    # A key configured without scopes keeps all of them.
    assert send(gateway, [like(user, bundle.items.id(0))], key(FULL_KEY)).event_ids


def test_user_token_acts_for_its_own_user_only(gateway, bundle):
    alice, bob = bundle.users.id(2), bundle.users.id(3)
    item = bundle.items.id(1)
    assert len(recommend(gateway, alice, bearer(token(alice))).items) == 3
    assert send(gateway, [like(alice, item)], bearer(token(alice))).event_ids
    code, message = code_of(lambda: recommend(gateway, bob, bearer(token(alice))))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "user_id does not match" in message
    # One event for another user in a batch refuses the batch.
    events = [like(alice, item), like(bob, item)]
    code, message = code_of(lambda: send(gateway, events, bearer(token(alice))))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "events[1].user_id" in message
    # The token's scope claim limits it; with a key, the key's scopes limit it as well.
    code, message = code_of(
        lambda: send(gateway, [like(alice, item)], bearer(token(alice, scope="recommend")))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "user token lacks scope" in message
    code, message = code_of(
        lambda: send(gateway, [like(alice, item)], key(READ_KEY) + bearer(token(alice)))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "API key" in message


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda u: token(u, exp=int(time.time()) - 60), "user token has expired"),
        (lambda u: "not.a.jwt", "invalid user token"),
        (lambda u: token(u, secret="another-secret-0123456789abcdefghij"), "invalid user token"),
        (lambda u: jwt.encode({"sub": u, "scope": "recommend"}, SECRET), "invalid user token"),
    ],
    ids=["expired", "garbage", "wrong-secret", "no-exp"],
)
def test_bad_or_expired_token_is_unauthenticated(gateway, bundle, make, message):
    user = bundle.users.id(4)
    code, details = code_of(lambda: recommend(gateway, user, bearer(make(user))))
    assert code == grpc.StatusCode.UNAUTHENTICATED and message in details


def test_no_credentials_or_a_wrong_key_is_unauthenticated(gateway, bundle):
    user = bundle.users.id(4)
    code, message = code_of(lambda: recommend(gateway, user, ()))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "missing credentials" in message
    code, message = code_of(lambda: recommend(gateway, user, key("no-such-key")))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "invalid or revoked" in message


def test_same_client_event_id_from_two_keys_is_applied_for_both(stack, gateway, bundle):
    worker = stack.services["feedback"].worker
    eventually(lambda: settled(worker, 0))
    start = worker.applied + worker.duplicates
    start_applied = worker.applied
    event = like(bundle.users.id(5), bundle.items.id(2), event_id="shared-id-1")
    assert send(gateway, [event], key(FULL_KEY)).event_ids == ["shared-id-1"]
    assert send(gateway, [event], key(OTHER_KEY)).event_ids == ["shared-id-1"]
    # The same key resending its id is a duplicate.
    assert send(gateway, [event], key(OTHER_KEY)).event_ids == ["shared-id-1"]
    eventually(lambda: settled(worker, start + 3))
    assert worker.applied - start_applied == 2


def test_batch_resent_without_event_ids_is_applied_once(stack, gateway, bundle):
    worker = stack.services["feedback"].worker
    eventually(lambda: settled(worker, 0))
    start, start_applied = worker.applied + worker.duplicates, worker.applied
    user, ts = bundle.users.id(6), int(time.time() * 1000)
    batch = [like(user, bundle.items.id(n), ts=ts + n) for n in range(3)]
    batch.append(common_pb2.FeedbackEvent(user_id=user, item_id="i", kind=VIEW, timestamp_ms=ts))
    first = send(gateway, batch, key(FULL_KEY)).event_ids
    again = send(gateway, batch, key(FULL_KEY)).event_ids  # a retry after, say, UNAVAILABLE
    assert first == again and len(set(first)) == 4
    eventually(lambda: settled(worker, start + 8))
    assert worker.applied - start_applied == 4
    # Without timestamps there is nothing stable to derive from: ids differ per call.
    no_ts = [like(user, bundle.items.id(0))]
    assert (
        send(gateway, no_ts, key(FULL_KEY)).event_ids
        != send(gateway, no_ts, key(FULL_KEY)).event_ids
    )


def test_tokens_alone_and_required_tokens(bundle):
    """Tokens without keys, and jwt_required with keys: a call without a token is refused;
    a valid one reaches the servicer (the base servicer answers UNIMPLEMENTED)."""
    for extra in ({}, {"api_key_hashes": hash_key(FULL_KEY), "jwt_required": 1}):
        settings = Settings.from_env({}, backend="memory", jwt_secret=SECRET, **extra)
        server = bare_gateway(settings)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = gateway_pb2_grpc.GatewayStub(channel)
                code, message = code_of(lambda s=stub: recommend(s, "u1", key(FULL_KEY)))
                assert code == grpc.StatusCode.UNAUTHENTICATED
                assert "missing user token" in message
                code, _ = code_of(
                    lambda s=stub: recommend(s, "u1", key(FULL_KEY) + bearer(token("u1")))
                )
                assert code == grpc.StatusCode.UNIMPLEMENTED
        finally:
            server.stop(0)


def test_short_jwt_secret_is_refused(bundle):
    settings = Settings.from_env({}, backend="memory", jwt_secret="short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        start_server(
            "gateway", lambda s: None, ("shortlist.v1.Gateway",), "127.0.0.1:0", settings=settings
        )
