"""Rate limits by events as well as calls, over a real socket: a SendFeedback batch takes a
token per event from its caller's event bucket; calls are limited on their own; a batch
larger than the burst can never pass and says so. The buckets are per process (per pod)."""

from __future__ import annotations

import grpc
import pytest

from shortlist.client import Client, Feedback
from shortlist.config import Settings
from shortlist.rpc.security import TokenBuckets, hash_key
from tests.conftest import bare_gateway

pytestmark = pytest.mark.integration
KEYS = ("events-key-one-0123456789", "events-key-two-0123456789")


def feedback(n: int) -> list[Feedback]:
    return [Feedback("u", f"i{k}", "like") for k in range(n)]


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
        # one attempt per call: each call is counted once by the limits
        target = f"127.0.0.1:{server.port}"
        with (
            Client(target, KEYS[0], timeout_s=5, max_attempts=1) as one,
            Client(target, KEYS[1], timeout_s=5, max_attempts=1) as two,
        ):

            def send(n: int, client: Client = one):
                return code_of(lambda: client.send_feedback(*feedback(n)))

            assert send(6)[0] == passed  # 6 of 10 event tokens
            code, details = send(6)  # 6 more than the 4 left: refused, by events
            assert code == exhausted and "events/s (burst 10)" in details, details
            assert send(3)[0] == passed  # 3 of the 4 left
            code, details = send(11, two)  # larger than the burst: never
            assert code == exhausted and "exceeds the rate limit's burst of 10" in details
            assert send(5, two)[0] == passed  # the other key has its own buckets
            # The call bucket (4) counts calls whatever their size: the first key made 3.
            assert code_of(lambda: one.recommend("u", 1))[0] == passed
            code, details = code_of(lambda: one.recommend("u", 1))
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
