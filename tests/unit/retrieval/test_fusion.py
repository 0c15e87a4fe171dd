"""Reciprocal-rank fusion: a hand-computed case, determinism, source ranks, weight choice."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from shortlist.retrieval.fusion import (
    FusionConfig,
    choose_fusion,
    fuse,
    item_item_scores,
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
    items, _ = pre.take(0, 3, np.array([40]))
    assert items.tolist() == [20, 10, 30]
    assert pre.sources_of(0, items) == [("a", "b"), ("a",), ("a",)]
