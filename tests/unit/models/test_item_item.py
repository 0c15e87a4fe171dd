"""Item-item sources: EASE matches its closed form, EASE and item-kNN beat random on
planted structure, and both are scored through the one model path."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from shortlist.data.splits import random_holdout
from shortlist.data.synthetic import generate
from shortlist.evaluation.metrics import evaluate_model
from shortlist.evaluation.protocols import random_scores_baseline, run_protocol
from shortlist.models import item_item, registry
from shortlist.models.base import is_item_item
from shortlist.models.item_item import ease_weights, knn_table, truncate_rows
from shortlist.models.topk import model_top_k


def _likes(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), n_items))


def test_ease_matches_the_closed_form_on_a_hand_case():
    x = _likes([[0, 1], [0, 1, 2], [1, 2], [0, 2]], 3)
    l2 = 1.0
    # X^T X = [[3,2,2],[2,3,2],[2,2,3]]; P = (X^T X + I)^-1; B = -P / diag(P), diag 0
    gram = np.array([[3, 2, 2], [2, 3, 2], [2, 2, 3]], float) + l2 * np.eye(3)
    p = np.linalg.inv(gram)
    expected = -p / np.diag(p)
    np.fill_diagonal(expected, 0.0)
    b = ease_weights(x, np.arange(3), l2)
    np.testing.assert_allclose(b, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.diag(b) == 0)
    # by hand: gram = 2 J + 2 I, so P = (I - J / 4) / 2 (J = ones); -P_01 / P_00 = 1/3
    np.testing.assert_allclose(b[0, 1], 1.0 / 3.0, rtol=1e-5)


def test_truncate_rows_keeps_the_largest_positive_weights():
    dense = np.array([[0.0, 0.5, -1.0, 0.2], [0.3, 0.0, 0.3, 0.9]], np.float32)
    t = truncate_rows(dense, 2).toarray()
    np.testing.assert_allclose(t, [[0, 0.5, 0, 0.2], [0.3, 0, 0, 0.9]])  # tie: column 0


def test_knn_is_the_shrunk_cosine_without_the_diagonal():
    x = _likes([[0, 1], [0, 1, 2], [1, 2], [0, 2]], 3)
    table = knn_table(x, neighbours=2, shrink=1.0, block=2).toarray()
    # items 0 and 1: co-liked by 2 users, 3 likes each: 2 / (sqrt(9) + 1)
    assert table[0, 1] == pytest.approx(0.5)
    assert np.all(np.diag(table) == 0)
    np.testing.assert_allclose(table, table.T, rtol=1e-6)


@pytest.fixture(scope="module")
def planted():
    data = generate(
        n_users=200, n_items=150, n_topics=5, likes_per_user=15, dislikes_per_user=8, seed=3
    )
    return random_holdout(data, test_fraction=0.2, valid_fraction=0.1, seed=0)


@pytest.mark.parametrize("name", ["ease", "item-knn", "item-item"])
def test_item_item_beats_random_on_planted_structure(planted, name):
    floor = np.mean([random_scores_baseline(planted, seed=s)["ndcg@20"] for s in range(3)])
    model = registry.build(name, {})
    train = planted.train_valid()
    model.fit(train)
    assert is_item_item(model)
    assert model.neighbours.shape == (train.n_items, train.n_items)
    assert model.neighbours.diagonal().sum() == 0
    m = evaluate_model(model, train.positives, train.positives, planted.test.positives)
    assert m["ndcg@20"] > 1.6 * floor, (m, floor)
    assert m["recall@20"] > 0.1


def test_ease_chooses_l2_on_held_out_training_likes(planted):
    model = registry.build("ease", {})
    model.fit(planted.train)
    assert set(model.l2_trials) and model.chosen_l2 in model.l2_trials
    assert model.config.l2 == model.chosen_l2
    assert model.chosen_l2 == max(model.l2_trials, key=lambda g: (model.l2_trials[g], -g))


def test_item_item_takes_knn_above_the_cap(planted):
    model = registry.build("item-item", {"max_items": 10})
    model.fit(planted.train)
    assert model.kind == "item-knn"
    small = registry.build("item-item", {})
    small.fit(planted.train)
    assert small.kind == "ease"


def test_protocol_b_runs_an_item_item_model(planted):
    result = run_protocol(planted, "B", "ease", {"l2": 50.0})
    assert result.metrics["recall@20"] > 0 and result.valid_metrics["ndcg@20"] > 0


def test_model_top_k_never_returns_history_and_pads_unreachable_items():
    x = _likes([[0], [2]], 4)
    model = registry.build("item-knn", {"shrink": 0.0})
    weights = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    model.neighbours = sp.csr_matrix(weights)
    items, scores = model_top_k(model, x, np.array([0, 1]), 3, exclude=x)
    assert items[0].tolist() == [1, -1, -1]  # only item 1 is reachable from item 0
    assert items[1].tolist() == [-1, -1, -1]  # item 2 has no neighbours
    assert scores[0, 0] == 1.0


def test_option_searches_hold_out_a_sample_of_users_past_the_pair_budget(monkeypatch):
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((400, 50)) < 0.3).astype(np.float32))
    keep, test = item_item._holdout(x, 0.2, 0)
    every = np.flatnonzero(np.diff(test.indptr))
    assert len(every) > 350  # within the budget: every user with a like drawn
    assert (keep + test != x).nnz == 0
    monkeypatch.setattr(item_item, "HOLDOUT_PAIRS", 100 * 50)
    monkeypatch.setattr(item_item, "HOLDOUT_MIN_USERS", 10)
    keep, sampled = item_item._holdout(x, 0.2, 0)
    some = np.flatnonzero(np.diff(sampled.indptr))
    assert 85 <= len(some) <= 100 and set(some) <= set(every)
    for u in some:  # the same likes drawn as without the budget
        np.testing.assert_array_equal(sampled[u].indices, test[u].indices)
    assert (keep + sampled != x).nnz == 0
