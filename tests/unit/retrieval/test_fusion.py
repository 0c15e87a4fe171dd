"""Reciprocal-rank fusion: a hand-computed case, determinism, source ranks, weight choice."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from shortlist.retrieval.fusion import (
    FusionConfig,
    FusionGrid,
    choose_fusion,
    fuse,
    item_item_scores,
    ndcg20,
)


def test_fuse_matches_a_hand_computed_rrf_case():
    lists = {"a": np.array([[10, 20, 30]]), "b": np.array([[20, 40, -1]])}
    cfg = FusionConfig({"a": 1.0, "b": 2.0}, k=1.0)
    fused = fuse(lists, cfg, 4)
    # 10: 1/2; 20: 1/3 + 2/2; 30: 1/4; 40: 2/3
    assert fused.items[0].tolist() == [20, 40, 10, 30]
    np.testing.assert_allclose(fused.scores[0], [1 / 3 + 1, 2 / 3, 1 / 2, 1 / 4], rtol=1e-6)
    assert fused.ranks["a"][0].tolist() == [1, -1, 0, 2]
    assert fused.ranks["b"][0].tolist() == [0, 1, -1, -1]
    assert fused.sources(0) == [("a", "b"), ("b",), ("a",), ("a",)]
    bits = fused.source_bits()[0].tolist()
    assert bits == [3, 2, 1, 1]
    # a row padded past its items names only the items
    assert fuse(lists, cfg, 6).sources(0) == fused.sources(0)


def test_fuse_breaks_ties_by_item_index_and_is_deterministic():
    lists = {"a": np.array([[7, 3], [1, 2]]), "b": np.array([[3, 7], [2, 1]])}
    cfg = FusionConfig({"a": 1.0, "b": 1.0}, k=60.0)
    first = fuse(lists, cfg, 2)
    assert first.items.tolist() == [[3, 7], [1, 2]]  # equal scores: smaller index first
    again = fuse({"b": lists["b"], "a": lists["a"]}, cfg, 2)
    np.testing.assert_array_equal(first.items, again.items)
    np.testing.assert_array_equal(first.scores, again.scores)


def test_zero_weight_sources_are_left_out_and_n_cuts():
    lists = {"a": np.array([[1, 2, 3]]), "b": np.array([[9, 8, 7]])}
    fused = fuse(lists, FusionConfig({"a": 1.0, "b": 0.0}), 2)
    assert fused.items.tolist() == [[1, 2]]
    assert list(fused.ranks) == ["a"]
    with pytest.raises(ValueError):
        fuse(lists, FusionConfig({"c": 1.0}), 2)


def test_choose_fusion_prefers_the_source_that_finds_the_labels():
    # source "good" ranks each user's label first; "bad" never proposes it
    n_users = 30
    labels = sp.csr_matrix(
        (np.ones(n_users), (np.arange(n_users), np.arange(n_users) + 100)), shape=(n_users, 200)
    )
    primary = np.tile(np.arange(20), (n_users, 1))
    good = np.column_stack([np.arange(n_users) + 100, np.tile(np.arange(50, 69), (n_users, 1))])
    cfg, report = choose_fusion(
        {"primary": primary, "good": good}, labels, np.arange(n_users), "primary"
    )
    assert cfg.weights["good"] > 0 and cfg.weights["primary"] == 1.0
    assert report["ndcg@20"] > 0.6 and report["trials"] >= 2
    again, _ = choose_fusion(
        {"primary": primary, "good": good}, labels, np.arange(n_users), "primary"
    )
    assert again == cfg


def test_item_item_scores_is_a_sparse_row_sum_without_excluded_items():
    table = sp.csr_matrix(
        np.array([[0, 1, 2, 0], [1, 0, 0, 3], [0, 0, 0, 1], [0, 0, 0, 0]], np.float32)
    )
    items, scores = item_item_scores(table, np.array([0, 1]), np.array([0, 1]), 3)
    # row 0 + row 1 = [1, 1, 2, 3]; items 0 and 1 excluded
    assert items.tolist() == [3, 2] and scores.tolist() == [3.0, 2.0]
    assert item_item_scores(table, np.array([], np.int64), np.array([]), 3)[0].size == 0
    # a newest like weighing 3x (a short-term boost): 3 * row 0 + row 1 = [1, 3, 6, 3]
    weighted = item_item_scores(table, np.array([0, 1]), np.array([0, 1]), 3, np.array([3.0, 1.0]))
    assert weighted[0].tolist() == [2, 3] and weighted[1].tolist() == [6.0, 3.0]


def test_fusion_config_round_trips_through_the_manifest():
    cfg = FusionConfig({"spectral": 1.0, "item-item": 0.5, "popularity": 0.0}, 10.0, "spectral")
    again = FusionConfig.from_json(cfg.to_json())
    assert again == cfg and again.used == ["spectral", "item-item"]
    assert FusionConfig.from_json(None) is None


def test_precomputed_rows_name_each_items_sources():
    from shortlist.retrieval.precomputed import PrecomputedShortlists

    lists = {"a": np.array([[10, 20, 30]]), "b": np.array([[20, 40, -1]])}
    fused = fuse(lists, FusionConfig({"a": 1.0, "b": 2.0}, k=1.0), 4)
    pre = PrecomputedShortlists(
        fused.items.astype(np.int32), fused.scores, fused.source_bits(), tuple(fused.ranks)
    )
    picked = pre.pick(0, 3, np.array([40]))
    items, _ = pre.at(0, picked)
    assert items.tolist() == [20, 10, 30]
    assert pre.sources_at(0, picked) == [("a", "b"), ("a",), ("a",)]
    assert pre.items[0].tolist() == [20, 40, 10, 30]
    assert pre.sources_at(0, np.array([2, 1])) == [("a",), ("b",)]  # 10, then 40


def reference_fuse(lists, config, n):
    """Weighted RRF written out per row with dicts: (items, scores, ranks) of each row's top
    n, equal scores in item order."""
    used = [s for s in config.used if s in lists]
    out = []
    for row in range(len(lists[used[0]])):
        score, rank = {}, {s: {} for s in used}
        for s in used:
            for r, item in enumerate(lists[s][row].tolist()):
                if item >= 0:
                    score[item] = score.get(item, 0.0) + config.weights[s] / (config.k + r + 1)
                    rank[s][item] = r
        top = sorted(score, key=lambda i: (-score[i], i))[:n]
        out.append(
            (top, [score[i] for i in top], {s: [rank[s].get(i, -1) for i in top] for s in used})
        )
    return out


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    weights=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]), min_size=3, max_size=3),
    k=st.sampled_from([10.0, 60.0]),
    n=st.integers(1, 25),
)
def test_fuse_and_the_weight_search_grid_match_rrf_written_out(seed, weights, k, n):
    """Lists with padding, items shared between sources and ties in the fused score (equal
    ranks in two sources weighted alike): `fuse` (items, scores, each source's ranks) and the
    grid's tops are the per-row RRF, item for item."""
    rng = np.random.default_rng(seed)
    lists = {}
    for s in ("a", "b", "c", "d"):
        width = int(rng.integers(1, 12))
        rows = [rng.permutation(30)[:width] for _ in range(7)]
        block = np.stack(rows)
        block[rng.random(block.shape) < 0.2] = -1  # padding (and holes the grid must skip)
        lists[s] = np.sort(block, axis=1)[:, ::-1] if s == "d" else block
    config = FusionConfig({"a": 1.0, **dict(zip("bcd", weights))}, k, "a")
    fused = fuse(lists, config, n)
    assert list(fused.ranks) == config.used
    for row, (items, scores, ranks) in enumerate(reference_fuse(lists, config, n)):
        m = len(items)
        assert fused.items[row, :m].tolist() == items and (fused.items[row, m:] == -1).all()
        np.testing.assert_allclose(fused.scores[row, :m], scores, rtol=1e-6)
        for s in config.used:
            assert fused.ranks[s][row, :m].tolist() == ranks[s]
    np.testing.assert_array_equal(FusionGrid(lists).top(config, n), fused.items)


def test_ndcg20_matches_a_hand_computed_case():
    # user 0: labels {3, 5}, top [5, 1, 3]: hits at ranks 1 and 3
    # user 1: no labels, left out of the mean; user 2: label {7}, top [-1, 7, ...]: rank 2
    labels = sp.csr_matrix((np.ones(3), ([0, 0, 2], [3, 5, 7])), shape=(3, 10), dtype=np.float32)
    top = np.array([[5, 1, 3], [2, 3, 4], [-1, 7, 0]])
    d = 1.0 / np.log2(np.arange(2, 5))
    user0 = (d[0] + d[2]) / (d[0] + d[1])
    user2 = d[1] / d[0]
    assert ndcg20(top, labels, np.arange(3)) == pytest.approx((user0 + user2) / 2, rel=1e-12)
    # rows pick the users: the same lists for users 2 and 0 only
    assert ndcg20(top[[2, 0]], labels, np.array([2, 0])) == pytest.approx((user0 + user2) / 2)
