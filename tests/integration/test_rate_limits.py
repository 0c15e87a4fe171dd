"""Rate limits by events as well as calls, over a real socket: a SendFeedback batch takes a
token per event from its caller's event bucket; calls are limited on their own; a batch
larger than the burst can never pass and says so. The buckets are per process (per pod)."""

from __future__ import annotations

import grpc
import pytest

from shortlist.config import Settings
from shortlist.rpc.security import TokenBuckets, hash_key
from shortlist.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.conftest import bare_gateway

pytestmark = pytest.mark.integration
KEYS = ("events-key-one-0123456789", "events-key-two-0123456789")


def feedback(n: int) -> gateway_pb2.SendFeedbackRequest:
    like = common_pb2.FEEDBACK_KIND_LIKE
    events = [common_pb2.FeedbackEvent(user_id="u", item_id=f"i{k}", kind=like) for k in range(n)]
    return gateway_pb2.SendFeedbackRequest(events=events)


def code_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def test_feedback_is_limited_by_events_per_key_and_calls_separately():
    settings = Settings.from_env(
        {},
        api_key_hashes=",".join(hash_key(k) for k in KEYS),
        rate_limit_events_per_s=1,  # refills slowly: the test sees the burst only
        rate_limit_events_burst=10,
        rate_limit_per_s=1,
        rate_limit_burst=4,
    )
    server = bare_gateway(settings)
    passed = grpc.StatusCode.UNIMPLEMENTED  # through the limits, to the bare servicer
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)

            def send(n: int, key: str = KEYS[0]):
                md = (("x-api-key", key),)
                return code_of(lambda: stub.SendFeedback(feedback(n), timeout=5, metadata=md))

            assert send(6)[0] == passed  # 6 of 10 event tokens
            code, details = send(6)  # 6 more than the 4 left: refused, by events
            assert code == exhausted and "events/s (burst 10)" in details, details
            assert send(3)[0] == passed  # 3 of the 4 left
            code, details = send(11, KEYS[1])  # larger than the burst: never
            assert code == exhausted and "exceeds the rate limit's burst of 10" in details
            assert send(5, KEYS[1])[0] == passed  # the other key has its own buckets
            # The call bucket (4) counts calls whatever their size: the first key made 3.
            md = (("x-api-key", KEYS[0]),)
            request = gateway_pb2.RecommendRequest(user_id="u", k=1)
            assert code_of(lambda: stub.Recommend(request, timeout=5, metadata=md))[0] == passed
            code, details = code_of(lambda: stub.Recommend(request, timeout=5, metadata=md))
            assert code == exhausted and "calls/s" in details, details
    finally:
        server.stop(0)


def test_token_buckets_take_a_cost():
    now = [0.0]
    buckets = TokenBuckets(rate=2, burst=10, clock=lambda: now[0])
    assert buckets.take("a", 7) == 0
    assert buckets.take("a", 7) == pytest.approx(2.0)  # 4 missing at 2/s
    now[0] = 2.0
    assert buckets.take("a", 7) == 0
    assert buckets.take("a", 11) == float("inf")
