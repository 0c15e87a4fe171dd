"""Property-based fuzzing of every public RPC over a real gRPC socket to the in-process stack
(real Redis and broker): random and malformed messages, unicode, empty and huge values, and
raw garbage bytes. Whatever comes in, the answer is OK or a client-error status code with a
message that says what was wrong: never INTERNAL/UNKNOWN, never a hang past the deadline.
"""

from __future__ import annotations

import os
import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shortlist.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

pytestmark = pytest.mark.integration

CALL_TIMEOUT_S = 10.0
# Client mistakes; UNAVAILABLE only where the server itself says why (the bus).
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "120")),  # more for a longer hunt
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
METHODS = ("Recommend", "SendFeedback", "SimilarItems")

# Unicode of every kind (no lone surrogates: protobuf strings are UTF-8), empty, whitespace,
# NULs and control characters, very long strings.
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\t\n", "\x00", "user-0001\x00", "🙂" * 10, "ｕｓｅｒ", "٣"]),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=400),
    st.integers(1, 200_000).map(lambda n: "x" * n),
)
int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
small_k = st.one_of(st.integers(-5, 120), int32)


@pytest.fixture(scope="module")
def raw_channel(stack):
    """No client-side size caps: oversized messages reach the server."""
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(stack.gateway_target, options=options) as channel:
        yield channel


@pytest.fixture(scope="module")
def gateway(raw_channel):
    """Raw stub: the fuzzer sends arbitrary and oversized messages `Client` never builds."""
    return gateway_pb2_grpc.GatewayStub(raw_channel)


def ids_from(bundle, kind: str):
    known = st.sampled_from(
        [bundle.users.id(i) for i in range(20)]
        if kind == "user"
        else [bundle.items.id(i) for i in range(len(bundle.items))]
    )
    return st.one_of(known, texts)


def check(call, request):
    """Run one call; return its status code after checking the contract."""
    start = time.monotonic()
    try:
        call(request, timeout=CALL_TIMEOUT_S)
        code, details = grpc.StatusCode.OK, "ok"
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
    elapsed = time.monotonic() - start
    assert code in ALLOWED, f"{code.name}: {details!r} for {str(request)[:300]!r}"
    assert details and details.strip(), f"{code.name} without a message"
    assert elapsed < CALL_TIMEOUT_S
    return code


@given(data=st.data())
@FUZZ
def test_recommend(gateway, bundle, data):
    context = data.draw(
        st.one_of(
            st.dictionaries(texts, texts, max_size=5),
            st.dictionaries(
                st.sampled_from(["hour", "day_of_week", "device"]),
                st.one_of(st.integers(-(10**30), 10**30).map(str), texts),
                max_size=3,
            ),
            st.integers(0, 200).map(lambda n: {f"k{i}": "v" for i in range(n)}),
        )
    )
    request = gateway_pb2.RecommendRequest(
        user_id=data.draw(ids_from(bundle, "user")),
        k=data.draw(small_k),
        context=context,
        exclude_item_ids=data.draw(st.lists(ids_from(bundle, "item"), max_size=30)),
    )
    if data.draw(st.booleans()):  # many exclusions, some past the limit
        request.exclude_item_ids.extend(
            [bundle.items.id(i % len(bundle.items)) for i in range(data.draw(st.integers(0, 1500)))]
        )
    check(gateway.Recommend, request)


@given(data=st.data())
@FUZZ
def test_send_feedback(gateway, bundle, data):
    event = st.builds(
        common_pb2.FeedbackEvent,
        event_id=st.one_of(st.just(""), texts),
        user_id=ids_from(bundle, "user"),
        item_id=ids_from(bundle, "item"),
        kind=st.one_of(st.integers(0, 5), int32),
        timestamp_ms=st.one_of(st.just(0), int64),
    )
    events = data.draw(st.lists(event, max_size=8))
    if data.draw(st.integers(0, 9)) == 0:  # past the per-call limit
        events = events * 200 + [common_pb2.FeedbackEvent()] * 1001
    request = gateway_pb2.SendFeedbackRequest(events=events)
    code = check(gateway.SendFeedback, request)
    if not events:
        assert code == grpc.StatusCode.INVALID_ARGUMENT


@given(data=st.data(), k=small_k)
@FUZZ
def test_similar_items(gateway, bundle, data, k):
    request = common_pb2.SimilarItemsRequest(item_id=data.draw(ids_from(bundle, "item")), k=k)
    check(gateway.SimilarItems, request)


garbage = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"",
            b"\xff" * 16,
            b"\x0a\xff\xff\xff\xff\x0f",  # field 1, length far past the end
            b"\x0a\x02\xc3\x28",  # field 1 (a string) that is not UTF-8
            b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # k = -1 as a varint
            b"\x1a\x04\x0a\x02\xff\xfe",  # a context entry with a non-UTF-8 key
            b"\x0a\x00" * 1000,  # many empty repeated/overwritten fields
            b"\x08" + b"\x80" * 20,  # an overlong varint
        ]
    ),
)


@given(method=st.sampled_from(METHODS), payload=garbage)
@FUZZ
def test_raw_garbage_bytes(raw_channel, method, payload):
    call = raw_channel.unary_unary(
        f"/shortlist.v1.Gateway/{method}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    start = time.monotonic()
    try:
        call(payload, timeout=CALL_TIMEOUT_S)
        code, details = grpc.StatusCode.OK, "ok"
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
    assert time.monotonic() - start < CALL_TIMEOUT_S
    assert code in ALLOWED, f"{method} {payload[:60]!r}: {code.name} {details!r}"
    assert details and details.strip()


@pytest.mark.parametrize("size", [5 * 1024 * 1024])
def test_oversized_message_is_refused_with_a_message(gateway, size):
    with pytest.raises(grpc.RpcError) as err:
        gateway.Recommend(gateway_pb2.RecommendRequest(user_id="u" * size, k=5), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in err.value.details()


def test_stack_still_answers_after_fuzzing(client, bundle):
    assert len(client.recommend(bundle.users.id(1), 5).items) == 5
