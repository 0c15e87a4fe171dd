"""The serving form of the ranker (compiled by lleaves) scores as LightGBM does."""

from __future__ import annotations

import numpy as np
import pytest

from shortlist.ranking.lambdarank import (
    RankerConfig,
    compiled_scorer,
    list_folds,
    score,
    train_ranker,
)


def test_compiled_ranker_gives_lightgbms_scores_with_missing_values():
    rng = np.random.default_rng(0)
    n_lists, size, width = 120, 30, 6
    x = rng.normal(size=(n_lists * size, width)).astype(np.float32)
    x[rng.random(x.shape) < 0.15] = np.nan  # features a request lacks are NaN
    relevance = np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) * (x[:, 2] > 0)
    labels = (relevance > 1.0).astype(np.int32)
    groups = np.full(n_lists, size)
    half = n_lists // 2 * size
    booster = train_ranker(
        (x[:half], labels[:half], groups[: n_lists // 2]),
        [f"f{i}" for i in range(width)],
        RankerConfig(rounds=40, early_stopping=40, min_data_in_leaf=5),
    ).booster
    assert booster.num_trees() > 5
    compiled = compiled_scorer(booster)
    got, want = compiled(x[half:]), score(booster, x[half:])
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.std(want) > 0  # the scores vary, so agreeing on them says something


def test_cross_validated_ranker_scores_each_list_out_of_fold():
    rng = np.random.default_rng(1)
    n_lists, size, width = 80, 25, 4
    x = rng.normal(size=(n_lists * size, width)).astype(np.float32)
    labels = (x[:, 0] + 0.3 * rng.normal(size=len(x)) > 1.2).astype(np.int32)
    groups = np.full(n_lists, size)
    folds = list_folds(groups, 4)
    held = np.concatenate([rows for _, rows in folds])
    assert np.array_equal(np.sort(held), np.arange(len(x)))  # each row held out once
    for train, rows in folds:  # whole lists: no list on both sides of a fold
        assert not set(train // size) & set(rows // size)
    fit = train_ranker(
        (x, labels, groups),
        [f"f{i}" for i in range(width)],
        RankerConfig(rounds=60, early_stopping=20, min_data_in_leaf=5, folds=4),
    )
    assert 1 <= fit.rounds <= 60 and fit.booster.num_trees() == fit.rounds
    # out-of-fold scores are not the final model's (which saw every list), yet they follow
    # the signal: feature 0 decides the labels
    final = score(fit.booster, x)
    assert not np.allclose(fit.held_out_scores, final)
    assert np.corrcoef(fit.held_out_scores, x[:, 0])[0, 1] > 0.5


def test_cross_validation_needs_two_lists():
    x = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match="at least 2 lists"):
        train_ranker((x, np.zeros(5), np.array([5])), ["a", "b"])
