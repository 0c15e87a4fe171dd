"""Precomputed shortlists: every trained user's exact top-N, cut by live exclusions at request
time, and given up for an index search as soon as feedback moves the user's vector."""

from __future__ import annotations

import numpy as np
import pytest
import redis
import scipy.sparse as sp
from prometheus_client import REGISTRY

from shortlist.bundle.files import load_bundle, save_bundle
from shortlist.config import Settings
from shortlist.data.mapped import is_mapped
from shortlist.feedback.stores.redis_store import RedisStateStore
from shortlist.retrieval.precomputed import PrecomputedShortlists, user_rows
from shortlist.services.local import LocalRetriever


def exact_top(users: np.ndarray, items: np.ndarray, exclude: sp.csr_matrix, u: int, n: int):
    scores = items @ users[u]
    scores[exclude[u].indices] = -np.inf
    order = np.argsort(-scores, kind="stable")[:n]
    return order[np.isfinite(scores[order])], scores[order]


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(1)
    users = rng.normal(size=(40, 8)).astype(np.float32)
    items = rng.normal(size=(120, 8)).astype(np.float32)
    seen = sp.random(40, 120, density=0.1, random_state=2, format="csr")
    return users, items, seen


def test_each_row_is_the_users_exact_top_without_their_training_items(vectors):
    users, items, seen = vectors
    pre = PrecomputedShortlists.compute(users, items, seen, width=30, batch_size=16)
    assert pre.items.shape == (40, 30) and pre.items.dtype == np.int32
    for u in range(40):
        want, scores = exact_top(users, items, seen, u, 30)
        np.testing.assert_array_equal(pre.items[u], want)
        np.testing.assert_allclose(pre.scores[u], scores, rtol=1e-5, atol=1e-5)
        assert not set(pre.items[u]) & set(seen[u].indices)


def test_pick_removes_live_exclusions_and_declines_when_a_cut_row_runs_short(vectors):
    users, items, seen = vectors
    pre = PrecomputedShortlists.compute(users, items, seen, width=30)
    row = pre.items[5].astype(np.int64)
    got, scores = pre.at(5, pre.pick(5, 20, np.array([row[0], row[3], 999])))
    np.testing.assert_array_equal(got, np.delete(row, [0, 3])[:20])
    np.testing.assert_array_equal(scores, np.delete(pre.scores[5], [0, 3])[:20])
    assert pre.pick(5, 29, row[:2]) is None  # 28 left of a row cut at 30: a search must answer
    assert pre.at(5, pre.pick(5, 30, np.array([], np.int64)))[0].tolist() == row.tolist()


def test_a_row_padded_past_the_catalogue_is_the_whole_list(vectors):
    users, items, seen = vectors
    pre = PrecomputedShortlists.compute(users, items[:10], seen[:, :10], width=16)
    u = 3
    left = 10 - seen[u, :10].nnz
    assert (pre.items[u] >= 0).sum() == left and pre.items[u, -1] == -1
    got, _ = pre.at(u, pre.pick(u, 16, pre.items[u, :1].astype(np.int64)))
    assert len(got) == left - 1 and (got >= 0).all()


def test_bundles_save_and_load_them_memory_mapped(bundle, tmp_path):
    assert bundle.precomputed is not None  # the trained test bundle carries them
    save_bundle(bundle, tmp_path)
    loaded = load_bundle(tmp_path)
    assert is_mapped(loaded.precomputed.items)  # pages shared by the processes on a node
    np.testing.assert_array_equal(loaded.precomputed.items, bundle.precomputed.items)
    np.testing.assert_array_equal(loaded.precomputed.scores, bundle.precomputed.scores)


def answers(answer: str) -> float:
    value = REGISTRY.get_sample_value(
        "shortlist_retrieval_answers_total",
        {"service": "retrieval", "answer": answer, "arm": "a"},
    )
    return value or 0.0


def retrieval(bundle, redis_url, redis_prefix, **settings) -> LocalRetriever:
    s = Settings.from_env({}, redis_url=redis_url, redis_prefix=redis_prefix, **settings)
    return LocalRetriever(bundle, RedisStateStore(redis_url, redis_prefix), s)


def test_retrieval_answers_a_trained_user_from_it_until_feedback_moves_their_vector(
    bundle, redis_url, redis_prefix
):
    stub = retrieval(bundle, redis_url, redis_prefix)
    user = bundle.users.id(11)
    exclude: list[str] = []
    before = answers("precomputed")
    ids = stub.retrieve(user, 30, exclude, "", 5).item_ids()
    assert answers("precomputed") == before + 1
    # the bundle's fused shortlist (vector search, item-item and popularity by rank)
    assert bundle.fusion is not None and bundle.precomputed.sources is not None
    assert ids == bundle.items.ids(bundle.precomputed.items[11][:30])
    # live seen and disliked items (as the feedback service writes them) and the request's
    # exclusions are left out, and the rest keeps its order
    r = redis.Redis.from_url(redis_url)
    r.sadd(f"{redis_prefix}{{u:{user}}}:seen", ids[0])
    r.sadd(f"{redis_prefix}{{u:{user}}}:dis", ids[2])
    exclude.append(ids[4])
    after = stub.retrieve(user, 30, exclude, "", 5).item_ids()
    assert after[:27] == [i for n, i in enumerate(ids) if n not in (0, 2, 4)]
    assert answers("precomputed") == before + 2
    # a folded-in vector is searched in the index instead
    searched = answers("search")
    vector = bundle.user_vectors[12].astype(np.float32)
    r.hset(f"{redis_prefix}{{u:{user}}}:vec", bundle.version, vector.tobytes())
    folded = stub.retrieve(user, 30, exclude, "", 5)
    assert folded.user_source == "folded_in" and answers("search") == searched + 1
    assert answers("precomputed") == before + 2


def test_retrieval_can_be_told_to_search_always(bundle, redis_url, redis_prefix):
    stub = retrieval(bundle, redis_url, redis_prefix, retrieval_precomputed=0)
    before, searched = answers("precomputed"), answers("search")
    got = stub.retrieve(bundle.users.id(7), 20, [], "", 5)
    assert len(got) == 20 and got.user_source == "trained"
    assert answers("precomputed") == before and answers("search") == searched + 1


def test_a_user_without_a_precomputed_row_is_searched(bundle, redis_url, redis_prefix, tmp_path):
    """A bundle trained past its precompute budget holds rows for its most active users
    only (`shortlist.retrieval.precomputed.precompute_users`); the files keep the mapping
    and retrieval searches for everyone else."""
    full = bundle.precomputed
    kept = np.array([3, 11, 20])
    bundle.precomputed = PrecomputedShortlists(
        full.items[kept],
        full.scores[kept],
        full.sources[kept],
        full.source_names,
        user_rows(kept, len(bundle.users)),
    )
    try:
        save_bundle(bundle, tmp_path)
    finally:
        bundle.precomputed = full
    loaded = load_bundle(tmp_path)
    assert loaded.precomputed.items.shape[0] == 3
    assert [loaded.precomputed.row(u) for u in (3, 4, 11, 20)] == [0, -1, 1, 2]
    stub = retrieval(loaded, redis_url, redis_prefix)
    for user, answer in ((11, "precomputed"), (12, "search")):
        before = answers(answer)
        got = stub.retrieve(loaded.users.id(user), 30, [], "", 5)
        assert answers(answer) == before + 1 and got.user_source == "trained"
        if answer == "precomputed":
            assert got.item_ids() == bundle.items.ids(full.items[user][:30])
        assert not set(got.item_ids()) & set(bundle.items.ids(bundle.seen_items(user)))
