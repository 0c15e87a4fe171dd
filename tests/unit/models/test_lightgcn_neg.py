"""LightGCN with a negative graph of dislikes, on planted structure.

Two groups of users share a common topic X; group g also likes topic Y_g and dislikes
Y_(1-g). Most likes are in X, so the likes graph alone reaches Y_0 and Y_1 alike through the
shared X likers; the dislike graph says which of the two a user's group turns away from.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from shortlist.data.ids import IdMap
from shortlist.data.interactions import Interactions
from shortlist.data.splits import random_holdout
from shortlist.evaluation.metrics import evaluate
from shortlist.evaluation.protocols import validator
from shortlist.models import registry
from shortlist.models.lightgcn_neg import combine
from shortlist.models.topk import top_k

N_USERS, PER_TOPIC = 240, 50  # items: X = 0..49, Y_0 = 50..99, Y_1 = 100..149


def _planted(seed: int = 5) -> tuple[Interactions, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_items = 3 * PER_TOPIC
    group = np.arange(N_USERS) % 2
    pop = 1.0 / np.arange(1, PER_TOPIC + 1) ** 0.5
    pop /= pop.sum()
    rows, cols, nrows, ncols = [], [], [], []
    for u in range(N_USERS):
        own, other = PER_TOPIC * (1 + group[u]), PER_TOPIC * (2 - group[u])
        liked = np.concatenate(
            [rng.choice(PER_TOPIC, 10, replace=False, p=pop), own + rng.choice(PER_TOPIC, 5)]
        )
        liked = np.unique(liked)
        rows += [u] * len(liked)
        cols += liked.tolist()
        disliked = other + rng.choice(PER_TOPIC, 6, replace=False)
        nrows += [u] * len(disliked)
        ncols += disliked.tolist()
    shape = (N_USERS, n_items)
    data = Interactions(
        users=IdMap([f"u{u}" for u in range(N_USERS)]),
        items=IdMap([f"i{i}" for i in range(n_items)]),
        positives=sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape),
        negatives=sp.csr_matrix((np.ones(len(nrows)), (nrows, ncols)), shape=shape),
    )
    return data, group


FAST = dict(
    dim=32,
    epochs=10,
    batch_size=512,
    negatives=64,
    lr=0.01,
    neg_dim=16,
    neg_epochs=12,
    neg_batch_size=256,
    eval_every=2,
    threads=1,
    progress=False,
)


def _disliked_topic_share(users, items, train, data, group) -> float:
    """Share of top-20 slots (train likes and actual dislikes excluded) in the disliked topic."""
    exclude = (train + data.negatives).tocsr()
    top = top_k(users, items, np.arange(N_USERS), 20, exclude=exclude)
    other = PER_TOPIC * (2 - group)[:, None]
    return float(((top >= other) & (top < other + PER_TOPIC)).mean())


@pytest.fixture(scope="module")
def fitted():
    data, group = _planted()
    split = random_holdout(data, test_fraction=0.2, valid_fraction=0.2, seed=0)
    model = registry.build("lightgcn-neg", FAST)
    model.fit(split.train, validate=validator(split.train, split.valid))
    return data, group, split, model


def test_combined_vectors_score_pos_minus_beta_neg():
    rng = np.random.default_rng(0)
    pos = (rng.normal(size=(3, 4)), rng.normal(size=(5, 4)))
    neg = (rng.normal(size=(3, 2)), rng.normal(size=(5, 2)))
    has = np.array([True, False, True])
    u, i = combine(pos, neg, 0.3, has)
    expected = pos[0] @ pos[1].T - 0.3 * (neg[0] @ neg[1].T) * has[:, None]
    np.testing.assert_allclose(u @ i.T, expected, rtol=1e-5, atol=1e-5)


def test_negative_graph_pushes_down_items_like_the_dislikes(fitted):
    data, group, split, model = fitted
    assert model.beta > 0, "valid chose beta = 0: the dislike graph did not help on valid"
    train = split.train.positives
    without = _disliked_topic_share(*model.pos_factors, train, data, group)
    with_neg = _disliked_topic_share(model.user_factors, model.item_factors, train, data, group)
    assert with_neg < without
    assert with_neg < 0.5 * without


def test_negative_graph_model_stays_above_random(fitted):
    data, group, split, model = fitted
    m = evaluate(
        model.user_factors, model.item_factors, split.train.positives, split.test.positives
    )
    random_recall = 20 / data.n_items
    assert m["recall@20"] > 2 * random_recall
    pos_only = evaluate(*model.pos_factors, split.train.positives, split.test.positives)
    assert m["recall@20"] >= pos_only["recall@20"]


def test_without_dislikes_it_is_the_positive_part():
    data, _ = _planted()
    bare = Interactions(users=data.users, items=data.items, positives=data.positives)
    model = registry.build("lightgcn-neg", {**FAST, "epochs": 2})
    model.fit(bare)
    assert model.beta == 0.0 and model.neg_factors is None
    np.testing.assert_array_equal(model.user_factors, model.pos_factors[0])
