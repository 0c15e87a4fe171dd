"""Key scopes, user tokens (JWT) and per-caller event-id dedup over real sockets.

One in-memory stack (gateway, retrieval, ranking, the feedback worker) on loopback with
scoped API keys and HS256 user tokens; the worker's counters show what was applied.
"""

from __future__ import annotations

import time

import grpc
import jwt
import pytest

from shortlist.client import Client, Feedback
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
def target(stack) -> str:
    return stack.gateway_target


def as_caller(target: str, key: str | None = None, token: str | None = None) -> Client:
    """A client with these credentials (what an app holding them sends), one attempt."""
    return Client(target, key, token=token, timeout_s=10, max_attempts=1)


def recommend(target: str, user: str, key: str | None = None, token: str | None = None):
    with as_caller(target, key, token) as client:
        return client.recommend(user, 3)


def send(target: str, events, key: str | None = None, token: str | None = None) -> list[str]:
    with as_caller(target, key, token) as client:
        return client.send_feedback(*events)


def like(user: str, item: str, event_id: str = "", ts: int = 0) -> Feedback:
    return Feedback(user, item, "like", event_id=event_id, timestamp_ms=ts)


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def settled(worker, target: int) -> bool:
    return worker.applied + worker.duplicates >= target


def test_key_without_feedback_scope_may_recommend_only(target, bundle):
    user = bundle.users.id(1)
    assert len(recommend(target, user, READ_KEY).items) == 3
    code, message = code_of(lambda: send(target, [like(user, bundle.items.id(0))], READ_KEY))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "lacks scope 'feedback'" in message and "SendFeedback" in message
    # A key configured without scopes keeps all of them.
    assert send(target, [like(user, bundle.items.id(0))], FULL_KEY)


def test_user_token_acts_for_its_own_user_only(target, bundle):
    alice, bob = bundle.users.id(2), bundle.users.id(3)
    item = bundle.items.id(1)
    assert len(recommend(target, alice, token=token(alice)).items) == 3
    assert send(target, [like(alice, item)], token=token(alice))
    code, message = code_of(lambda: recommend(target, bob, token=token(alice)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "user_id does not match" in message
    # One event for another user in a batch refuses the batch.
    events = [like(alice, item), like(bob, item)]
    code, message = code_of(lambda: send(target, events, token=token(alice)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "events[1].user_id" in message
    # The token's scope claim limits it; with a key, the key's scopes limit it as well.
    code, message = code_of(
        lambda: send(target, [like(alice, item)], token=token(alice, scope="recommend"))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "user token lacks scope" in message
    code, message = code_of(lambda: send(target, [like(alice, item)], READ_KEY, token=token(alice)))
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
def test_bad_or_expired_token_is_unauthenticated(target, bundle, make, message):
    user = bundle.users.id(4)
    code, details = code_of(lambda: recommend(target, user, token=make(user)))
    assert code == grpc.StatusCode.UNAUTHENTICATED and message in details


def test_no_credentials_or_a_wrong_key_is_unauthenticated(target, bundle):
    user = bundle.users.id(4)
    code, message = code_of(lambda: recommend(target, user))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "missing credentials" in message
    code, message = code_of(lambda: recommend(target, user, "no-such-key"))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "invalid or revoked" in message


def test_same_client_event_id_from_two_keys_is_applied_for_both(stack, target, bundle):
    worker = stack.services["feedback"].worker
    eventually(lambda: settled(worker, 0))
    start = worker.applied + worker.duplicates
    start_applied = worker.applied
    event = like(bundle.users.id(5), bundle.items.id(2), event_id="shared-id-1")
    assert send(target, [event], FULL_KEY) == ["shared-id-1"]
    assert send(target, [event], OTHER_KEY) == ["shared-id-1"]
    # The same key resending its id is a duplicate.
    assert send(target, [event], OTHER_KEY) == ["shared-id-1"]
    eventually(lambda: settled(worker, start + 3))
    assert worker.applied - start_applied == 2


def test_batch_resent_without_event_ids_is_applied_once(stack, target, bundle):
    worker = stack.services["feedback"].worker
    eventually(lambda: settled(worker, 0))
    start, start_applied = worker.applied + worker.duplicates, worker.applied
    user, ts = bundle.users.id(6), int(time.time() * 1000)

    def event(item: str, kind: int, at: int) -> common_pb2.FeedbackEvent:
        return common_pb2.FeedbackEvent(user_id=user, item_id=item, kind=kind, timestamp_ms=at)

    batch = [event(bundle.items.id(n), LIKE, ts + n) for n in range(3)] + [event("i", VIEW, ts)]
    # Raw stub: events without ids, which `Client` never sends (it gives each one an id);
    # the gateway's own derived ids are under test.
    channel = grpc.insecure_channel(target)
    stub = gateway_pb2_grpc.GatewayStub(channel)

    def send_raw(events) -> list[str]:
        request = gateway_pb2.SendFeedbackRequest(events=events)
        reply = stub.SendFeedback(request, timeout=10, metadata=(("x-api-key", FULL_KEY),))
        return list(reply.event_ids)

    with channel:
        first = send_raw(batch)
        again = send_raw(batch)  # a retry after, say, UNAVAILABLE
        assert first == again and len(set(first)) == 4
        eventually(lambda: settled(worker, start + 8))
        assert worker.applied - start_applied == 4
        # Without timestamps there is nothing stable to derive from: ids differ per call.
        no_ts = [event(bundle.items.id(0), LIKE, 0)]
        assert send_raw(no_ts) != send_raw(no_ts)


def test_tokens_alone_and_required_tokens(bundle):
    """Tokens without keys, and jwt_required with keys: a call without a token is refused;
    a valid one reaches the servicer (the base servicer answers UNIMPLEMENTED)."""
    for extra in ({}, {"api_key_hashes": hash_key(FULL_KEY), "jwt_required": 1}):
        settings = Settings.from_env({}, backend="memory", jwt_secret=SECRET, **extra)
        server = bare_gateway(settings)
        target = f"127.0.0.1:{server.port}"
        try:
            code, message = code_of(lambda t=target: recommend(t, "u1", FULL_KEY))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            assert "missing user token" in message
            code, _ = code_of(lambda t=target: recommend(t, "u1", FULL_KEY, token("u1")))
            assert code == grpc.StatusCode.UNIMPLEMENTED
        finally:
            server.stop(0)


def test_short_jwt_secret_is_refused(bundle):
    settings = Settings.from_env({}, backend="memory", jwt_secret="short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        start_server(
            "gateway", lambda s: None, ("shortlist.v1.Gateway",), "127.0.0.1:0", settings=settings
        )
