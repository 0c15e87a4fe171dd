"""The co-located gateway (colocate=1): retrieval and ranking called in its own process."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from shortlist.bundle.ab import ARM_A, ARM_B, arm_for
from shortlist.client import Client, Recommendation
from shortlist.feedback.bus import KafkaEventPublisher
from shortlist.feedback.stores import RedisStateStore
from shortlist.ranking.context import RequestContext
from shortlist.rpc.inprocess import in_process
from shortlist.rpc.validation import InvalidInput
from shortlist.services.launch import start_service
from shortlist.services.local import LocalRanker, LocalRetriever
from shortlist.services.stages import Candidates
from tests.integration.test_ab import expected_items


def test_a_stage_in_process_keeps_the_stub_contract():
    def missing(item):
        raise InvalidInput(f"no {item}", grpc.StatusCode.NOT_FOUND)

    def broken():
        raise ValueError("bad state")

    def slow(x):
        time.sleep(0.05)
        return x

    assert in_process("Echo", 1, lambda x: x, "x") == "x"
    with pytest.raises(grpc.RpcError) as not_found:
        in_process("Missing", None, missing, "item-1")
    assert not_found.value.code() == grpc.StatusCode.NOT_FOUND
    assert not_found.value.details() == "no item-1"
    with pytest.raises(grpc.RpcError) as failed:
        in_process("Broken", None, broken)
    assert failed.value.code() == grpc.StatusCode.INTERNAL and "bad state" in failed.value.details()
    with pytest.raises(grpc.RpcError) as late:
        in_process("Slow", 0.01, slow, "x")
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert in_process("Slow", 5, slow, "x") == "x"


def start_colocated(settings, bundle, bundle_b=None):
    """A co-located gateway over the real Redis and broker, on a free port."""
    return start_service(
        "gateway",
        settings.replace(colocate=1),
        bundle,
        "127.0.0.1:0",
        store=RedisStateStore(settings.redis_url, settings.redis_prefix),
        publisher=KafkaEventPublisher(settings.kafka_bootstrap, settings.feedback_topic),
        bundle_b=bundle_b,
    )


@pytest.fixture
def colocated(settings, bundle, stack):
    started = start_colocated(settings, bundle)
    yield started
    started.stop()


def _recommend(
    target: str, user_id: str, k: int = 10, context: dict | None = None
) -> Recommendation:
    with Client(target, timeout_s=10) as client:
        return client.recommend(user_id, k, context=context)


def _similar(target: str, item_id: str) -> list[str]:
    with Client(target, timeout_s=10) as client:
        return client.similar_items(item_id, 5).item_ids


def test_colocated_gateway_answers_as_the_four_service_stack(colocated, stack, bundle):
    target = f"127.0.0.1:{colocated.server.port}"
    for user in range(8):
        mine = _recommend(target, bundle.users.id(user), context={"moment": "home"})
        theirs = _recommend(stack.gateway_target, bundle.users.id(user), context={"moment": "home"})
        assert [i.item_id for i in mine.items] == [i.item_id for i in theirs.items]
        assert [i.score for i in mine.items] == pytest.approx([i.score for i in theirs.items])
        assert not mine.fallback_used and mine.model_version == bundle.version
    assert _recommend(target, "never-seen").fallback_reason == "unknown_user"
    with pytest.raises(grpc.RpcError) as bad:
        _recommend(target, bundle.users.id(0), k=0)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    item = bundle.items.id(5)
    assert _similar(target, item) == _similar(stack.gateway_target, item)


def test_colocated_stage_failures_take_the_same_fallbacks(colocated, bundle, monkeypatch):
    target = f"127.0.0.1:{colocated.server.port}"
    gateway = colocated.servicer
    user = bundle.users.id(1)
    with pytest.raises(grpc.RpcError) as unknown_item:
        _similar(target, "no-such-item")
    assert unknown_item.value.code() == grpc.StatusCode.NOT_FOUND
    ranked = _recommend(target, user)

    def broken(*args):
        raise RuntimeError("ranker lost")

    # the stages run in this process: the shortlist is handed over as indices, not messages
    assert isinstance(gateway.retriever, LocalRetriever)
    assert isinstance(gateway.ranker, LocalRanker)
    monkeypatch.setattr(gateway.ranker, "_rank", broken)
    fallback = _recommend(target, user)
    assert fallback.fallback_reason == "ranking_unavailable:INTERNAL"
    assert len(fallback.items) == len(ranked.items)  # retrieval order instead
    with Client(target, timeout_s=10) as client:  # reasons asked: the ranker gets the list
        stranger = client.recommend("never-seen", 10, with_reasons=True)
    assert stranger.fallback_reason == "unknown_user,ranking_unavailable:INTERNAL"
    assert stranger.items  # the popularity list, still served
    monkeypatch.setattr(gateway.retriever, "_retrieve", broken)
    popular = _recommend(target, user)
    assert popular.fallback_reason == "retrieval_unavailable:INTERNAL" and popular.items


def test_colocated_hot_swap_reaches_retrieval_and_ranking(colocated, bundle, bundle_b):
    gateway = colocated.servicer
    colocated.swap_bundle(bundle_b)
    assert gateway.retriever.bundle is bundle_b
    assert gateway.ranker.bundle is bundle_b
    reply = _recommend(f"127.0.0.1:{colocated.server.port}", bundle.users.id(2))
    assert reply.model_version == bundle_b.version and not reply.fallback_used


def test_colocated_ab_arms_serve_their_own_bundles(ab_settings, bundle, bundle_b, stack):
    started = start_colocated(ab_settings, bundle, bundle_b)
    try:
        versions = {ARM_A: bundle.version, ARM_B: bundle_b.version}
        seen = set()
        for u in range(40):
            user = bundle.users.id(u)
            reply = _recommend(f"127.0.0.1:{started.server.port}", user)
            arm = arm_for(user, ab_settings.ab_share_b, ab_settings.ab_salt)
            mine = bundle if arm == ARM_A else bundle_b
            assert reply.arm == arm and reply.model_version == versions[arm]
            assert not reply.fallback_used
            # exactly that arm's bundle's retrieve-then-rank result (no context sent)
            assert [i.item_id for i in reply.items] == expected_items(
                mine, user, 10, ab_settings.candidates
            )
            seen.add(arm)
        assert seen == {ARM_A, ARM_B}
    finally:
        started.stop()


def test_an_empty_shortlist_is_refused_as_over_grpc(colocated, bundle):
    empty = Candidates(
        bundle.version,
        "trained",
        False,
        items=np.zeros(0, np.int64),
        scores=np.zeros(0, np.float32),
        catalogue=[],
    )
    with pytest.raises(grpc.RpcError) as refused:
        colocated.servicer.ranker.rank(bundle.users.id(0), empty, RequestContext(), {}, 5, 5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "candidates (count)" in refused.value.details()
