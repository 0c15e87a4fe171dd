"""The retrieval search memo: exact (same answers as the index), bounded, and invalidated by a
user's new state because the state is part of its key."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import redis
from prometheus_client import REGISTRY

from shortlist.config import Settings
from shortlist.feedback.stores.redis_store import RedisStateStore
from shortlist.retrieval.index import build_index, search
from shortlist.retrieval.memo import SearchMemo
from shortlist.services.local import LocalRetriever


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(500, 16)).astype(np.float32)


def test_memo_answers_as_the_index_does_and_says_when_it_answered(items):
    index = build_index(items, kind="flat")
    memo = SearchMemo(index, entries=10)
    query, exclude = items[3] + items[7], np.array([3, 7, 11])
    first = memo.search(query, 20, exclude)
    again = memo.search(query.copy(), 20, exclude.copy())
    want = search(index, query, 20, exclude)
    assert first[2] is False and again[2] is True
    for got in (first, again):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert again[0].dtype == want[0].dtype and not again[1].flags.writeable
    # any part of the key changing is a new search with its own answer
    for q, n, ex in ((query, 20, exclude[:2]), (query, 21, exclude), (items[4], 20, exclude)):
        idx, scores, hit = memo.search(q, n, ex)
        assert not hit
        np.testing.assert_array_equal(idx, search(index, q, n, ex)[0])
    assert len(memo) == 4


def test_memo_keeps_the_most_recently_used_entries_only(items):
    memo = SearchMemo(build_index(items, kind="flat"), entries=2)
    none = np.array([], np.int64)
    memo.search(items[0], 5, none)
    memo.search(items[1], 5, none)
    assert memo.search(items[0], 5, none)[2]  # 0 is now the most recent
    memo.search(items[2], 5, none)  # evicts 1
    assert len(memo) == 2
    assert memo.search(items[0], 5, none)[2]
    assert not memo.search(items[1], 5, none)[2]
    off = SearchMemo(memo.index, entries=0)
    off.search(items[0], 5, none)
    assert not off.search(items[0], 5, none)[2] and len(off) == 0


def memo_lookups(answer: str) -> float:
    value = REGISTRY.get_sample_value(
        "shortlist_retrieval_answers_total",
        {"service": "retrieval", "answer": answer, "arm": "a"},
    )
    return value or 0.0


def test_retrieval_repeats_from_the_memo_until_the_users_state_changes(
    bundle, redis_url, redis_prefix
):
    # searches only: the bundle's precomputed shortlists would answer trained users
    settings = Settings.from_env(
        {}, redis_url=redis_url, redis_prefix=redis_prefix, retrieval_precomputed=0
    )
    retrieval = LocalRetriever(bundle, RedisStateStore(redis_url, redis_prefix), settings)
    user = bundle.users.id(4)
    hits, misses = memo_lookups("memo"), memo_lookups("search")
    first = retrieval.retrieve(user, 30, [], "", 5).item_ids()
    second = retrieval.retrieve(user, 30, [], "", 5).item_ids()
    assert second == first and len(first) == 30
    assert memo_lookups("search") == misses + 1 and memo_lookups("memo") == hits + 1
    # The user has now seen the best item (as the feedback service records it).
    redis.Redis.from_url(redis_url).sadd(f"{redis_prefix}{{u:{user}}}:seen", first[0])
    after = retrieval.retrieve(user, 30, [], "", 5).item_ids()
    # searched again without it; the rest stays (a fused list may reorder a little: the
    # seen item leaves every source's ranking, decision 0028)
    assert first[0] not in after and len(after) == 30
    assert len(set(after) & set(first[1:])) >= 25, (first, after)
    assert memo_lookups("search") == misses + 2


def test_hot_swaps_release_the_memos_of_replaced_bundles(bundle, redis_url, redis_prefix):
    settings = Settings.from_env({}, redis_url=redis_url, redis_prefix=redis_prefix)
    retrieval = LocalRetriever(bundle, RedisStateStore(redis_url, redis_prefix), settings)
    for n in range(1, 6):
        retrieval.use_bundle(dataclasses.replace(bundle, version=f"{bundle.version}-{n}"))
        found = retrieval.retrieve(bundle.users.id(3), 10, [], "", 5)
        assert found.model_version == f"{bundle.version}-{n}" and len(found) == 10
    kept = {f"{bundle.version}-4", f"{bundle.version}-5"}
    assert set(retrieval.memos) == set(retrieval.bundles.by_version) == kept
