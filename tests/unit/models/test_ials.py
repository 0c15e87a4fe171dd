"""The weighted-MF source: its CG solve reaches the exact ridge solution, it beats random on
planted structure, and serving's user step lists what the fitted model lists."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from shortlist.data.splits import random_holdout
from shortlist.data.synthetic import generate
from shortlist.evaluation.metrics import evaluate
from shortlist.evaluation.protocols import random_scores_baseline
from shortlist.feedback.vectors import NO_SHORT_TERM, SHORT_TERM
from shortlist.models import registry
from shortlist.models.ials import (
    REG_GRID,
    MFSource,
    cg_sweep,
    climb,
    exact_users,
    liked_product,
    recency_confidence,
    ridge_gram,
)
from shortlist.models.sparse_tensor import csr_tensor
from shortlist.models.topk import model_top_k


def test_cg_reaches_the_closed_form_ridge_solve():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(12, 4))
    likes = sp.csr_matrix((rng.random((5, 12)) < 0.3).astype(np.float64))
    reg, alpha = 0.5, 3.0
    x = cg_sweep(likes, np.zeros((5, 4)), y=y, gram=ridge_gram(y, reg), alpha=alpha, steps=20)
    for u in range(5):
        liked = y[likes[u].indices]
        a = y.T @ y + reg * np.eye(4) + alpha * liked.T @ liked
        expected = np.linalg.solve(a, (1 + alpha) * liked.sum(axis=0))
        np.testing.assert_allclose(x[u], expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_liked_product_is_the_likes_weighted_sum(dtype):
    """alpha * sum over each row's likes of y_i (y_i . v_u), against the dense formula, with
    empty rows and an unsorted input matrix."""
    rng = np.random.default_rng(1)
    likes = sp.random(300, 2000, density=0.004, format="csr", random_state=rng, dtype=dtype)
    likes.data[:] = 1.0
    likes.data[likes.indptr[5] : likes.indptr[6]] = 0.0  # an empty row
    likes.eliminate_zeros()
    shuffled = likes.copy()
    shuffled.indices = shuffled.indices.copy()
    for u in range(300):  # each row's columns reversed: the tensor must sort them
        lo, hi = shuffled.indptr[u], shuffled.indptr[u + 1]
        shuffled.indices[lo:hi] = shuffled.indices[lo:hi][::-1]
    shuffled.has_sorted_indices = False
    v, y = rng.normal(size=(300, 8)).astype(dtype), rng.normal(size=(2000, 8)).astype(dtype)
    expected = 3.0 * (likes.toarray() * (v @ y.T)) @ y
    got = liked_product(csr_tensor(shuffled, dtype), torch.from_numpy(v), torch.from_numpy(y), 3.0)
    assert got.dtype == torch.from_numpy(v).dtype
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got.numpy(), expected, rtol=tol, atol=tol)
    assert not got.numpy()[5].any()


@pytest.fixture(scope="module")
def planted():
    data = generate(
        n_users=200, n_items=150, n_topics=5, likes_per_user=15, dislikes_per_user=8, seed=3
    )
    return random_holdout(data, test_fraction=0.2, valid_fraction=0.1, seed=0)


@pytest.fixture(scope="module")
def fitted(planted):
    model = registry.build("ials", {"factors": 16, "regularization": 1.0, "iterations": 8})
    model.fit(planted.train_valid())
    return model


def test_ials_beats_random_on_planted_structure(planted, fitted):
    floor = np.mean([random_scores_baseline(planted, seed=s)["ndcg@20"] for s in range(3)])
    train = planted.train_valid().positives
    m = evaluate(fitted.user_factors, fitted.item_factors, train, planted.test.positives)
    assert m["ndcg@20"] > 1.6 * floor, (m, floor)


def test_served_user_step_lists_what_the_fit_lists(planted, fitted):
    train = planted.train_valid().positives.tocsr()
    source = MFSource.of(fitted)
    users = np.arange(20)
    offline = model_top_k(fitted, train, users, 10, train)[0]
    agree = []
    for u in users:
        history = train[u].indices
        served = source.top(history, history, 10)
        assert not np.isin(served, history).any()
        agree.append(len(np.intersect1d(served, offline[u])) / 10)
    # the fit's last user step is the exact solve serving does
    assert np.mean(agree) == 1.0, agree
    np.testing.assert_allclose(
        source.user_vector(train[3].indices), fitted.user_factors[3], rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(
    ("values", "start", "expected"),
    [
        ([1, 2, 3, 4, 3, 2, 1], 3, 3),  # the start is best: one step each way, stays
        ([1, 2, 3, 4, 5, 6, 7], 3, 6),  # climbs up to the end
        ([7, 6, 5, 4, 3, 2, 1], 3, 0),  # up is worse: climbs down
        ([1, 1, 1, 1, 1, 1, 1], 3, 3),  # ties keep the start
    ],
)
def test_climb_stops_where_the_next_value_is_worse(values, start, expected):
    tried = []

    def score(i: int) -> float:
        tried.append(i)
        return values[i]

    assert climb(score, len(values), start) == expected
    assert len(tried) <= len(values)


def test_regularization_is_chosen_on_held_out_likes_and_kept_for_a_refit(planted, fitted):
    model = registry.build("ials", {"factors": 8, "iterations": 3})
    model.fit(planted.train)
    chosen = model.config.regularization
    assert chosen in REG_GRID and chosen in model.reg_trials
    assert model.reg_trials[chosen] == max(model.reg_trials.values())
    assert 2 <= len(model.reg_trials) < len(REG_GRID)


def test_recency_confidence_weighs_the_newest_likes_more():
    history = np.array([2, 5, 7, 9, 11])
    assert np.array_equal(recency_confidence(history, None, SHORT_TERM), np.ones(5))
    assert np.array_equal(recency_confidence(history, np.array([9]), NO_SHORT_TERM), np.ones(5))
    conf = recency_confidence(history, np.array([9, 4, 2, 5]), SHORT_TERM)  # 4: not a like
    extra = conf - 1
    # the extra confidence sums to weight x likes, newest first, older likes unchanged
    assert extra.sum() == pytest.approx(SHORT_TERM.weight * len(history))
    assert extra[3] > extra[0] > extra[1] > 0 and extra[2] == extra[4] == 0
    assert extra[3] / extra[0] == pytest.approx(2 ** (2 / SHORT_TERM.half_life))


def test_the_served_user_step_turns_to_the_newest_likes(planted, fitted):
    train = planted.train_valid().positives.tocsr()
    source = MFSource.of(fitted)
    topics = planted.train.item_features["topic"].astype(np.int64)
    user = 0
    own = np.bincount(topics[train[user].indices], minlength=5)
    new = int(np.argmin(own))
    fresh = np.flatnonzero(topics == new)
    fresh = fresh[~np.isin(fresh, train[user].indices)][:4]
    history = np.union1d(train[user].indices, fresh)
    plain = source.top(history, history, 10)
    turned = source.top(history, history, 10, recency_confidence(history, fresh[::-1], SHORT_TERM))
    assert (
        np.isin(turned, np.flatnonzero(topics == new)).sum()
        > np.isin(plain, np.flatnonzero(topics == new)).sum()
    )


@pytest.mark.parametrize("likes", [1, 7, 16, 17, 80])
def test_the_served_user_step_is_the_exact_ridge_solve_short_or_long(likes):
    """Short histories go by Woodbury's identity, long ones by the direct solve: both are
    the confidence-weighted ridge solve, recency boost included."""
    rng = np.random.default_rng(likes)
    y = rng.standard_normal((200, 32)).astype(np.float32)
    gram = y.astype(np.float64).T @ y + 12.5 * np.eye(32)
    source = MFSource(y, gram, alpha=10.0)
    history = rng.choice(200, likes, replace=False)
    conf = recency_confidence(history, history[::-1][:3], SHORT_TERM)
    yh = y[history].astype(np.float64)
    a = gram + 10.0 * (yh * conf[:, None]).T @ yh
    expected = np.linalg.solve(a, (1.0 + 10.0 * conf) @ yh)
    served = source.user_vector(history, conf)
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)


def test_the_fits_last_user_step_is_the_explicit_solve_for_every_history():
    """Users with no likes (zero vector), short histories (Woodbury) and long ones."""
    rng = np.random.default_rng(4)
    y = rng.standard_normal((200, 32)).astype(np.float32)
    gram = y.astype(np.float64).T @ y + 12.5 * np.eye(32)
    counts = [0, 1, 5, 16, 17, 60]
    likes = sp.csr_matrix(
        (
            np.ones(sum(counts), np.float32),
            np.concatenate([rng.choice(200, c, replace=False) for c in counts]),
            np.cumsum([0, *counts]),
        ),
        shape=(len(counts), 200),
    )
    got = exact_users(likes, y=y, gram=gram, alpha=10.0)
    assert got.dtype == np.float32 and not got[0].any()
    for u, c in enumerate(counts[1:], start=1):
        yh = y[likes[u].indices].astype(np.float64)
        expected = np.linalg.solve(gram + 10.0 * yh.T @ yh, 11.0 * yh.sum(axis=0))
        assert len(yh) == c
        np.testing.assert_allclose(got[u], expected, rtol=1e-5, atol=1e-6)
