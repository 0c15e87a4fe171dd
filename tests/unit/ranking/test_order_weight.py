"""The retrieval order blended beside the ranker's score, its weight chosen out of fold."""

from __future__ import annotations

import numpy as np

from shortlist.ranking.lambdarank import mean_list_ndcg
from shortlist.ranking.scorer import ORDER_WEIGHTS, choose_order_weight, with_order


def test_weight_zero_leaves_the_ranker_scores_and_a_large_weight_follows_the_order():
    scores = np.array([0.1, 3.0, 0.2, 2.0], np.float32)
    ranks = np.arange(4, dtype=np.float32)
    assert with_order(scores, ranks, 0.0) is scores
    by_hand = (scores - scores.mean()) / (scores.std() + 1e-9)
    prior = -np.log1p(ranks)
    by_hand += 0.5 * (prior - prior.mean()) / (prior.std() + 1e-9)
    np.testing.assert_allclose(with_order(scores, ranks, 0.5), by_hand, rtol=1e-6)
    assert list(np.argsort(-with_order(scores, ranks, 16.0))) == [0, 1, 2, 3]


def planted_lists(n_lists: int, good_ranker: bool, seed: int = 0):
    """Lists of 20 whose labels sit near the top of the retrieval order; the ranker's scores
    either find them (plus noise) or are pure noise."""
    rng = np.random.default_rng(seed)
    scores, ranks, labels = [], [], []
    for _ in range(n_lists):
        rank = np.arange(20, dtype=np.float32)
        y = (rng.random(20) < 0.5 * np.exp(-rank / 4)).astype(np.float32)
        y[rng.integers(0, 5)] = 1.0  # every list holds a label, as the ranker's lists do
        noise = rng.normal(size=20).astype(np.float32)
        scores.append(3 * y + noise if good_ranker else noise)
        ranks.append(rank)
        labels.append(y)
    sizes = np.full(n_lists, 20)
    return np.concatenate(scores), np.concatenate(ranks), np.concatenate(labels), sizes


def test_a_noise_ranker_leans_on_the_order_and_a_good_one_does_not():
    scores, ranks, labels, sizes = planted_lists(300, good_ranker=False)
    weight, ndcg = choose_order_weight(scores, ranks, labels, sizes)
    assert weight >= 4.0
    # never below the retrieval order on the lists it was chosen on
    assert ndcg >= mean_list_ndcg(-ranks, labels, sizes) - 1e-9
    assert ndcg > mean_list_ndcg(scores, labels, sizes)

    scores, ranks, labels, sizes = planted_lists(300, good_ranker=True)
    weight, ndcg = choose_order_weight(scores, ranks, labels, sizes)
    assert weight <= 1.0 and weight in ORDER_WEIGHTS
    assert ndcg >= mean_list_ndcg(scores, labels, sizes)
    assert ndcg > mean_list_ndcg(-ranks, labels, sizes)
