"""The served shortlist is the fusion of the vector search, the item-item and weighted-MF
sources and popularity: through the real retrieval stage (Redis state), precomputed for
trained users, computed live once a user likes something, each item with the sources that
proposed it."""

from __future__ import annotations

import numpy as np

from shortlist.config import Settings
from shortlist.data.interactions import row_items
from shortlist.feedback.events import Kind
from shortlist.feedback.stores.redis_store import RedisStateStore
from shortlist.feedback.vectors import SHORT_TERM
from shortlist.models.ials import recency_confidence
from shortlist.retrieval.fusion import fuse, item_item_scores
from shortlist.retrieval.index import search
from shortlist.retrieval.retrieve import latest_likes
from shortlist.services.local import LocalRetriever
from tests.conftest import ev


def retriever(bundle, redis_url, redis_prefix, **settings) -> LocalRetriever:
    s = Settings.from_env({}, redis_url=redis_url, redis_prefix=redis_prefix, **settings)
    return LocalRetriever(bundle, RedisStateStore(redis_url, redis_prefix), s)


def by_hand(
    bundle, user: int, history: np.ndarray, exclude: np.ndarray, n: int, recent=None
) -> np.ndarray:
    """The fused top-n recomputed from the bundle's parts (each source's top depth); `recent`
    (a user with live likes: their newest likes first) weigh more in the weighted-MF step
    and in the item-item sum."""
    depth = bundle.fusion.depth
    vec, _ = search(bundle.index, bundle.user_vectors[user], depth, exclude)
    lists = {bundle.fusion.primary: vec}
    weights = recency_confidence(history, recent, SHORT_TERM) if recent is not None else None
    table = bundle.item_item
    lists["item-item"] = item_item_scores(table, history, exclude, depth, weights)[0]
    if bundle.fusion.weights.get("ials", 0) > 0:
        lists["ials"] = bundle.ials.top(history, exclude, depth, weights)
    lists["popularity"] = bundle.popular_items(depth, exclude)
    width = max(len(v) for v in lists.values())
    rows = {s: np.pad(v, (0, width - len(v)), constant_values=-1)[None] for s, v in lists.items()}
    items = fuse(rows, bundle.fusion, n).items[0]
    return items[items >= 0]


def test_the_bundle_carries_the_item_item_source_and_its_fusion(bundle):
    assert bundle.item_item is not None and bundle.item_item.shape == (200, 200)
    assert bundle.fusion.primary == bundle.manifest["model"]
    assert set(bundle.fusion.weights) == {
        bundle.fusion.primary,
        "item-item",
        "ials",
        "popularity",
    }
    assert bundle.ials is not None and bundle.ials.item_factors.shape[0] == 200
    assert bundle.fusion.depth == 100  # the conftest bundle's candidates
    assert "fusion_choice" in bundle.manifest and bundle.manifest["fusion_choice"]["trials"] > 0


def test_a_searched_trained_user_gets_the_fused_shortlist(bundle, redis_url, redis_prefix):
    stage = retriever(bundle, redis_url, redis_prefix, retrieval_precomputed=0)
    u = 21
    got = stage.retrieve(bundle.users.id(u), 40, [], "", 5)
    liked = row_items(bundle.likes, u)
    want = by_hand(bundle, u, liked, bundle.seen_items(u), 40)
    assert got.item_ids() == bundle.items.ids(want)
    assert len(got.sources) == len(got) and all(got.sources)
    assert any("item-item" in s for s in got.sources) or bundle.fusion.weights["item-item"] == 0
    assert not set(got.items) & set(bundle.seen_items(u))


def test_the_precomputed_shortlist_is_the_same_fusion(bundle, redis_url, redis_prefix):
    precomputed = retriever(bundle, redis_url, redis_prefix)
    searched = retriever(bundle, redis_url, redis_prefix, retrieval_precomputed=0)
    user = bundle.users.id(33)
    a = precomputed.retrieve(user, 30, [], "", 5)
    b = searched.retrieve(user, 30, [], "", 5)
    assert a.item_ids() == b.item_ids()
    assert list(a.sources) == list(b.sources)


def test_live_likes_move_the_item_item_source_at_once(bundle, redis_url, redis_prefix):
    store = RedisStateStore(redis_url, redis_prefix)
    stage = retriever(bundle, redis_url, redis_prefix)
    u = 44
    user = bundle.users.id(u)
    before = stage.retrieve(user, 50, [], "", 5)
    # two liked items the user had not seen, with strong item-item neighbours
    seen = set(bundle.seen_items(u))
    strength = np.asarray(bundle.item_item.sum(axis=1)).ravel()
    new_likes = [int(i) for i in np.argsort(-strength, kind="stable") if i not in seen][:2]
    ids = bundle.items.ids(np.array(new_likes))
    store.apply([ev(900 + j, user, i, Kind.LIKE) for j, i in enumerate(ids)], {}, bundle.version)
    after = stage.retrieve(user, 50, [], "", 5)
    assert not set(ids) & set(after.item_ids())  # liked: seen, never recommended again
    history = np.union1d(row_items(bundle.likes, u), new_likes)
    exclude = np.union1d(bundle.seen_items(u), new_likes)
    recent = latest_likes(bundle, u, store.user_state(user, bundle.version))
    assert list(recent[:2]) == new_likes[::-1]  # the live likes, newest first
    want = by_hand(bundle, u, history, exclude, 50, recent)
    assert after.item_ids() == bundle.items.ids(want)
    assert after.item_ids() != before.item_ids()
    store.close()
