"""Reasons with each item and request-time rules, over the real gRPC path (the four services
on sockets, Redis, the broker), and the co-located gateway giving the same answers."""

from __future__ import annotations

import collections

import grpc
import numpy as np
import pytest

from shortlist.client import Client, Recommendation
from shortlist.ranking.user_signals import recent_in_order
from shortlist.v1 import common_pb2, feedback_pb2
from tests.integration.test_colocated import start_colocated

USER = "user-007"


def recommend(client: Client, k=10, user=USER, **fields) -> Recommendation:
    return client.recommend(user, k, **fields)


def topic(bundle, item_id: str) -> str:
    return bundle.item_attribute_values["topic"][bundle.items.index(item_id)]


def test_reasons_are_off_by_default_and_leave_the_ranking_unchanged(client):
    plain = recommend(client)
    assert all(item.reasons is None for item in plain.items)
    explained = recommend(client, with_reasons=True)
    assert [i.item_id for i in explained.items] == [i.item_id for i in plain.items]
    assert [i.score for i in explained.items] == pytest.approx([i.score for i in plain.items])
    assert all(item.reasons is not None for item in explained.items)


def test_each_item_names_its_source_the_likes_behind_it_and_the_ranker_features(client, bundle):
    reply = recommend(client, with_reasons=True)
    u = bundle.users.index(USER)
    likes = recent_in_order(bundle.recent_likes, u)[:50]
    features = set(bundle.ranker.feature_name())
    for item in reply.items:
        r = item.reasons
        # the list's source, or the fused sources that proposed the item (decision 0028)
        fused = set(bundle.manifest.get("fusion", {}).get("weights", {}))
        assert r.sources and set(r.sources) <= {"precomputed", bundle.manifest["model"], *fused}
        # the two liked items with the largest dot product of retrieval vectors
        sims = bundle.item_vectors[likes] @ bundle.item_vectors[bundle.items.index(item.item_id)]
        expected = [bundle.items.id(likes[j]) for j in np.argsort(-sims, kind="stable")[:2]]
        assert list(r.because_liked) == expected
        assert 1 <= len(r.top_features) <= 3
        assert {f.feature for f in r.top_features} <= features
        sizes = [abs(f.contribution) for f in r.top_features]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] > 0
        assert not r.rules


def test_include_and_exclude_filter_by_item_attribute(client, bundle):
    keep = common_pb2.Rules()
    keep.include.add(attribute="topic", values=["jazz", "rock"])
    reply = recommend(client, rules=keep)
    assert len(reply.items) == 10
    assert {topic(bundle, i.item_id) for i in reply.items} <= {"jazz", "rock"}
    plain = [i.item_id for i in recommend(client, k=100).items]
    wanted = [i for i in plain if topic(bundle, i) in {"jazz", "rock"}][:10]
    assert [i.item_id for i in reply.items] == wanted  # the ranked order, filtered

    drop = common_pb2.Rules()
    drop.exclude.add(attribute="topic", values=["jazz"])
    reply = recommend(client, rules=drop)
    assert len(reply.items) == 10 and all(topic(bundle, i.item_id) != "jazz" for i in reply.items)


def test_a_narrow_filter_widens_the_candidates(client, bundle, settings):
    """Candidates are 100 (settings): of the topic rarest among them, fewer than k pass, so
    the gateway asks retrieval for more, and the answer is k items of the topic."""
    first = [topic(bundle, i.item_id) for i in recommend(client, k=settings.candidates).items]
    u = bundle.users.index(USER)
    seen = set(bundle.seen_items(u).tolist())
    unseen = collections.Counter(
        t for i, t in enumerate(bundle.item_attribute_values["topic"]) if i not in seen
    )
    rare = min(unseen, key=lambda t: first.count(t))
    k = min(unseen[rare], first.count(rare) + 5)
    assert first.count(rare) < k
    rules = common_pb2.Rules()
    rules.include.add(attribute="topic", values=[rare])
    reply = recommend(client, k=k, rules=rules)
    assert len(reply.items) == k
    assert all(topic(bundle, i.item_id) == rare for i in reply.items)


def test_at_most_n_items_per_attribute_value(client, bundle):
    rules = common_pb2.Rules()
    rules.caps.add(attribute="topic", max_items=2)
    reply = recommend(client, k=10, rules=rules)
    counts = collections.Counter(topic(bundle, i.item_id) for i in reply.items)
    assert len(reply.items) == 10 and max(counts.values()) == 2  # 5 topics x 2
    plain = recommend(client, k=10)
    assert max(collections.Counter(topic(bundle, i.item_id) for i in plain.items).values()) > 2


def test_pinned_items_take_their_positions(client, bundle):
    plain = [i.item_id for i in recommend(client, k=10).items]
    outsider = next(i for i in bundle.items.to_list()[::-1] if i not in plain)
    rules = common_pb2.Rules()
    rules.pinned.add(item_id=outsider, position=0)
    rules.pinned.add(item_id=plain[5], position=2)
    reply = recommend(client, k=10, rules=rules, with_reasons=True)
    ids = [i.item_id for i in reply.items]
    assert ids[0] == outsider and ids[2] == plain[5] and len(ids) == 10
    rest = [i for i in plain if i != plain[5]][:8]
    assert [i for n, i in enumerate(ids) if n not in (0, 2)] == rest
    assert list(reply.items[0].reasons.rules) == ["pinned"]
    assert "pinned" in reply.items[0].reasons.sources
    scores = [i.score for i in reply.items]
    assert scores == sorted(scores, reverse=True)


def test_freshness_boosts_items_upserted_within_the_window(client, admin, bundle):
    user = "user-011"
    plain = [i.item_id for i in recommend(client, k=10, user=user).items]
    item = plain[6]
    admin.UpsertItems(
        feedback_pb2.UpsertItemsRequest(
            items=[feedback_pb2.CatalogueItem(item_id=item, attributes={"label": "new-release"})]
        ),
        timeout=5,
    )
    rules = common_pb2.Rules()
    rules.freshness.window_seconds = 3600
    rules.freshness.boost = 100.0
    reply = recommend(client, k=10, user=user, rules=rules, with_reasons=True)
    assert reply.items[0].item_id == item and list(reply.items[0].reasons.rules) == ["fresh"]
    assert [i.item_id for i in reply.items[1:]] == [i for i in plain if i != item][:9]
    # an upserted attribute is a rule attribute at once, beside the bundle's
    label = common_pb2.Rules()
    label.include.add(attribute="label", values=["new-release"])
    assert [i.item_id for i in recommend(client, k=10, user=user, rules=label).items] == [item]


def test_unknown_users_get_the_popularity_list_under_the_rules(client, bundle):
    rules = common_pb2.Rules()
    rules.exclude.add(attribute="topic", values=["jazz"])
    reply = recommend(client, k=5, user="nobody-at-all", rules=rules, with_reasons=True)
    assert reply.fallback_reason == "unknown_user" and len(reply.items) == 5
    assert all(topic(bundle, i.item_id) != "jazz" for i in reply.items)
    assert all(list(i.reasons.sources) == ["popularity"] for i in reply.items)
    order = np.argsort(-bundle.popularity, kind="stable")
    popular = [bundle.items.id(i) for i in order if topic(bundle, bundle.items.id(i)) != "jazz"]
    assert [i.item_id for i in reply.items] == popular[:5]


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda r: r.include.add(attribute="genre", values=["x"]), "rules.include[0].attribute"),
        (lambda r: r.caps.add(attribute="topic", max_items=-1), "rules.caps[0].max_items"),
        (lambda r: r.pinned.add(item_id="jazz-001", position=10), "rules.pinned[0].position"),
        (lambda r: r.pinned.add(item_id="no-such-item", position=1), "rules.pinned[0].item_id"),
        (lambda r: r.exclude.add(attribute="topic"), "rules.exclude[0].values"),
        (lambda r: setattr(r.freshness, "window_seconds", -1), "rules.freshness.window_seconds"),
    ],
)
def test_invalid_rules_are_refused_naming_the_field(client, build, field):
    rules = common_pb2.Rules()
    build(rules)
    with pytest.raises(grpc.RpcError) as refused:
        recommend(client, k=10, rules=rules)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(field), refused.value.details()


def test_the_colocated_gateway_gives_the_same_answers(settings, bundle, client, stack):
    rules = common_pb2.Rules()
    rules.caps.add(attribute="topic", max_items=3)
    rules.exclude.add(attribute="topic", values=["rock"])
    colocated = start_colocated(settings, bundle)
    try:
        with Client(f"127.0.0.1:{colocated.server.port}", timeout_s=10) as c:
            local = recommend(c, rules=rules, with_reasons=True)
    finally:
        colocated.stop()
    remote = recommend(client, rules=rules, with_reasons=True)
    assert [i.item_id for i in local.items] == [i.item_id for i in remote.items]
    assert [list(i.reasons.because_liked) for i in local.items] == [
        list(i.reasons.because_liked) for i in remote.items
    ]
    assert [list(i.reasons.sources) for i in local.items] == [
        list(i.reasons.sources) for i in remote.items
    ]


def test_the_store_records_when_an_item_was_upserted(store):
    """Both stores: attributes, upsert times (kept when nothing changed) and hidden items."""
    assert store.upsert_items({"a": {"genre": "jazz"}}) == 1
    first = store.catalogue_items()
    assert first.attributes == {"a": {"genre": "jazz"}} and set(first.updated_ms) == {"a"}
    assert store.upsert_items({"a": {"genre": "jazz"}}) == 0  # unchanged: time kept
    assert store.catalogue_items().updated_ms == first.updated_ms
    store.hide_items(["a"])
    assert store.catalogue_items().hidden == {"a"}
    store.remove_items(["a"])
    gone = store.catalogue_items()
    assert gone.attributes == {} and gone.updated_ms == {} and gone.hidden == {"a"}


@pytest.mark.parametrize("down", ["ranking", "retrieval"])
def test_fallbacks_keep_the_rules_with_the_bundles_attributes(settings, bundle, stack, down):
    """With a stage away the answer is retrieval's order (ranking down) or popularity
    (retrieval down), still under the rules."""
    from shortlist.services.launch import start_service
    from shortlist.tools.stack import free_port

    dead = f"127.0.0.1:{free_port()}"
    targets = {"retrieval": stack.target("retrieval"), "ranking": stack.target("ranking")}
    targets[down] = dead
    gateway = start_service(
        "gateway",
        settings,
        bundle,
        "127.0.0.1:0",
        retrieval_target=targets["retrieval"],
        ranking_target=targets["ranking"],
    )
    rules = common_pb2.Rules()
    rules.include.add(attribute="topic", values=["jazz"])
    rules.caps.add(attribute="topic", max_items=3)
    try:
        with Client(f"127.0.0.1:{gateway.server.port}", timeout_s=10) as c:
            reply = recommend(c, k=5, rules=rules)
    finally:
        gateway.stop()
    assert reply.fallback_reason.startswith(f"{down}_unavailable")
    assert len(reply.items) == 3 and all(topic(bundle, i.item_id) == "jazz" for i in reply.items)
