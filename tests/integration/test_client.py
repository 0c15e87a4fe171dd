"""`shortlist.client` over real sockets: typed replies from the stack, retries from the
service config (UNAVAILABLE only), deadlines by default, API keys and TLS."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest

from shortlist.client import AsyncClient, Client, Contribution, Feedback, Tls, service_config
from shortlist.rpc.server import start_server
from shortlist.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.conftest import eventually
from tests.integration.test_security import KEYS, _secure_stack


class Scripted(gateway_pb2_grpc.GatewayServicer):
    """Answers each call with the next code of `codes` (then OK), and records the requests."""

    def __init__(self, codes=(), delay_s: float = 0.0) -> None:
        self.codes = list(codes)
        self.delay_s = delay_s
        self.requests: list = []
        self.metadata: list[dict[str, str]] = []
        self.remaining: list[float | None] = []  # each call's deadline as the server saw it
        self.lock = threading.Lock()

    def _next(self, request, context) -> None:
        with self.lock:
            self.requests.append(request)
            self.metadata.append(dict(context.invocation_metadata()))
            self.remaining.append(context.time_remaining())
            code = self.codes.pop(0) if self.codes else None
        if self.delay_s:
            time.sleep(self.delay_s)
        if code is not None:
            context.abort(code, f"scripted {code.name}")

    def Recommend(self, request, context):  # noqa: N802
        self._next(request, context)
        item = common_pb2.ScoredItem(item_id="item-1", score=0.5)
        return gateway_pb2.RecommendResponse(items=[item], model_version="v1", arm="a")

    def SendFeedback(self, request, context):  # noqa: N802
        self._next(request, context)
        return gateway_pb2.SendFeedbackResponse(event_ids=[e.event_id for e in request.events])


@pytest.fixture
def scripted():
    servicers: list = []

    def start(codes=(), delay_s: float = 0.0):
        servicer = Scripted(codes, delay_s)
        server = start_server(
            "gateway",
            lambda s: gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, s),
            ("shortlist.v1.Gateway",),
            "127.0.0.1:0",
        )
        servicers.append(server)
        return servicer, f"127.0.0.1:{server.port}"

    yield start
    for server in servicers:
        server.stop(0)


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def test_unavailable_is_retried_and_the_call_succeeds(scripted):
    servicer, target = scripted([UNAVAILABLE, UNAVAILABLE])
    with Client(target, max_attempts=3, timeout_s=30) as client:  # a deadline spans attempts
        reply = client.recommend("u1", 1)
    assert reply.item_ids == ["item-1"] and reply.model_version == "v1"
    assert len(servicer.requests) == 3


def test_other_codes_and_a_single_attempt_are_not_retried(scripted):
    servicer, target = scripted([grpc.StatusCode.INVALID_ARGUMENT])
    with Client(target) as client, pytest.raises(grpc.RpcError) as info:
        client.recommend("u1", 1)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(servicer.requests) == 1
    servicer, target = scripted([UNAVAILABLE])
    with Client(target, max_attempts=1) as client, pytest.raises(grpc.RpcError) as info:
        client.recommend("u1", 1)
    assert info.value.code() == UNAVAILABLE and len(servicer.requests) == 1


def test_a_retried_feedback_batch_carries_the_same_event_ids(scripted):
    servicer, target = scripted([UNAVAILABLE])
    with Client(target, timeout_s=30) as client:
        ids = client.send_feedback(Feedback("u1", "i1"), Feedback("u1", "i2", "dislike"))
    first, second = servicer.requests
    assert [e.event_id for e in first.events] == [e.event_id for e in second.events] == ids
    assert all(ids) and len(set(ids)) == 2
    assert [e.kind for e in first.events] == [
        common_pb2.FEEDBACK_KIND_LIKE,
        common_pb2.FEEDBACK_KIND_DISLIKE,
    ]


def test_calls_have_a_deadline_by_default(scripted):
    _servicer, target = scripted(delay_s=1.0)
    with Client(target, timeout_s=0.1) as client, pytest.raises(grpc.RpcError) as info:
        started = time.monotonic()
        client.recommend("u1", 1)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.09 < time.monotonic() - started < 0.9  # at the deadline, not at once


@pytest.mark.parametrize("timeout_s", [0.3, 1.0, 5.0])
def test_a_short_deadline_is_the_calls_own(scripted, timeout_s):
    """A call within its deadline succeeds and the server sees that deadline (a service
    config timeout would fail deadlines of about a second at once: grpc/grpc#34547)."""
    servicer, target = scripted(delay_s=0.05)
    with Client(target, timeout_s=timeout_s) as client:
        assert client.recommend("u1", 1).item_ids == ["item-1"]
        assert client.recommend("u1", 1, timeout_s=timeout_s / 2).item_ids == ["item-1"]
    first, second = servicer.remaining
    slack = 0.02 + timeout_s * 0.02  # the grpc-timeout header rounds the deadline up
    assert first is not None and timeout_s * 0.5 < first <= timeout_s + slack
    assert second is not None and timeout_s * 0.25 < second <= timeout_s / 2 + slack


def test_credentials_go_as_metadata(scripted):
    servicer, target = scripted()
    with Client(target, "key-1", token="a.b.c") as client:
        client.recommend("u1", 1)
    assert servicer.metadata[0]["x-api-key"] == "key-1"
    assert servicer.metadata[0]["authorization"] == "Bearer a.b.c"


def test_bad_arguments_are_refused_before_any_call():
    with pytest.raises(ValueError, match="feedback kind"):
        Feedback("u", "i", "love").to_proto()
    with pytest.raises(ValueError, match="max_attempts"):
        Client("127.0.0.1:1", max_attempts=9)
    assert '"retryableStatusCodes": ["UNAVAILABLE"]' in service_config()
    assert "retryPolicy" not in service_config(max_attempts=1)


def test_typed_calls_against_the_stack(stack, bundle, admin):
    from shortlist.v1 import feedback_pb2

    user = bundle.users.id(5)
    with Client(stack.gateway_target) as client:
        before = client.recommend(user, 5, context={"device": "ios"}, exclude=[bundle.items.id(0)])
        assert len(before.items) == 5 and before.model_version == bundle.version
        assert bundle.items.id(0) not in before.item_ids and not before.fallback_used
        assert before.raw.items[0].item_id == before.items[0].item_id
        applied = admin.Status(feedback_pb2.FeedbackStatusRequest(), timeout=5).events_applied
        ids = client.send_feedback(Feedback(user, before.items[0].item_id, "like"))
        assert len(ids) == 1
        eventually(
            lambda: (
                admin.Status(feedback_pb2.FeedbackStatusRequest(), timeout=5).events_applied
                > applied
            )
        )
        after = client.recommend(user, 5, context={"device": "ios"})
        assert before.items[0].item_id not in after.item_ids  # liked: seen, not shown again
        similar = client.similar_items(bundle.items.id(3), 4)
        assert len(similar.items) == 4 and similar.model_version == bundle.version
        with pytest.raises(grpc.RpcError) as info:
            client.similar_items("no-such-item", 4)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reasons_and_rules_against_the_stack(stack, bundle):
    """`with_reasons` and `rules` reach the gateway; the reasons come back typed."""
    user = bundle.users.id(7)
    with Client(stack.gateway_target, timeout_s=10) as client:
        plain = client.recommend(user, 5)
        assert all(item.reasons is None for item in plain.items)
        outsider = next(i for i in reversed(bundle.items.to_list()) if i not in plain.item_ids)
        rules = common_pb2.Rules()
        rules.pinned.add(item_id=outsider, position=0)
        reply = client.recommend(user, 5, with_reasons=True, rules=rules)
    assert reply.item_ids == [outsider, *plain.item_ids[:4]]
    pinned, ranked = reply.items[0].reasons, reply.items[1].reasons
    assert pinned is not None and pinned.rules == ("pinned",) and "pinned" in pinned.sources
    assert ranked is not None and ranked.sources and not ranked.rules
    assert isinstance(ranked.top_features, tuple) and ranked.top_features
    top = ranked.top_features[0]
    assert isinstance(top, Contribution) and top.feature and top.contribution != 0
    assert ranked.because_liked == tuple(reply.raw.items[1].reasons.because_liked)

    async def calls():
        async with AsyncClient(stack.gateway_target, timeout_s=10) as client:
            return await client.recommend(user, 5, with_reasons=True, rules=rules)

    assert asyncio.run(calls()).items == reply.items  # the same typed items, reasons too


def test_async_client_against_the_stack(stack, bundle):
    async def calls():
        async with AsyncClient(stack.gateway_target) as client:
            return await client.recommend(bundle.users.id(6), 3)

    reply = asyncio.run(calls())
    assert len(reply.items) == 3 and reply.model_version == bundle.version


def test_tls_with_an_api_key(bundle, pki):
    stack = _secure_stack(bundle, pki)
    try:
        target = f"localhost:{stack.services['gateway'].server.port}"
        tls = Tls.from_files(ca=pki / "ca.crt")
        with Client(target, KEYS[0], tls=tls) as client:
            assert len(client.recommend(bundle.users.id(3), 5).items) == 5
        with Client(target, "wrong-key", tls=tls) as client, pytest.raises(grpc.RpcError) as info:
            client.recommend(bundle.users.id(3), 5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with Client(target, KEYS[0], max_attempts=1) as plain, pytest.raises(grpc.RpcError):
            plain.recommend(bundle.users.id(3), 5)  # plaintext to a TLS port
    finally:
        stack.stop()
