"""The serving form of the ranker (compiled by lleaves) scores as LightGBM does."""

from __future__ import annotations

import numpy as np

from shortlist.ranker import RankerConfig, compiled_scorer, score, train_ranker


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
        (x[half:], labels[half:], groups[n_lists // 2 :]),
        [f"f{i}" for i in range(width)],
        RankerConfig(rounds=40, early_stopping=40, min_data_in_leaf=5),
    )
    assert booster.num_trees() > 5
    compiled = compiled_scorer(booster)
    got, want = compiled(x[half:]), score(booster, x[half:])
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.std(want) > 0  # the scores vary, so agreeing on them says something
