"""The DeepFM ranker: it learns a planted signal, its numpy forward pass is the one it was
early-stopped with, it survives the bundle, and the blend keeps only each list's order."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from shortlist.bundle.files import load_bundle, save_bundle
from shortlist.ranking.deepfm import DeepFMConfig, DeepFMWeights, InputScaling, train_deepfm
from shortlist.ranking.features import RANK_COLUMN
from shortlist.ranking.lambdarank import mean_list_ndcg
from shortlist.ranking.scorer import blend, with_order


def planted_lists(n_lists: int, size: int, seed: int):
    """Lists where a candidate is liked when two features interact (x0 * x1 large), with
    a third column mostly missing and a fourth pure noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_lists * size, 4)).astype(np.float32)
    x[rng.random(len(x)) < 0.7, 2] = np.nan
    signal = x[:, 0] * x[:, 1]
    y = np.zeros(len(x), np.float32)
    for start in range(0, len(x), size):
        top = start + np.argsort(-signal[start : start + size])[:3]
        y[top] = 1.0
    return x, y, np.full(n_lists, size)


@pytest.fixture(scope="module")
def fitted():
    data = planted_lists(300, 30, seed=0)
    return data, train_deepfm(data, DeepFMConfig(max_epochs=30, patience=5))


def test_deepfm_learns_a_feature_interaction_no_single_feature_shows(fitted):
    _, (weights, epochs, valid_ndcg) = fitted
    x, y, sizes = planted_lists(100, 30, seed=1)  # lists it never saw
    learnt = mean_list_ndcg(weights.score(x), y, sizes)
    by_one_feature = max(mean_list_ndcg(s * x[:, c], y, sizes) for c in (0, 1) for s in (1, -1))
    assert 1 <= epochs <= 30
    assert learnt > by_one_feature + 0.2, (learnt, by_one_feature)
    assert learnt > 0.6 and valid_ndcg > 0.6


def test_numpy_forward_pass_gives_the_early_stopping_ndcg_of_the_torch_model(fitted):
    (x, y, sizes), (weights, _, valid_ndcg) = fitted
    n_valid = int(len(sizes) * DeepFMConfig().valid_share)
    rows = int(sizes[:n_valid].sum())
    served = mean_list_ndcg(weights.score(x[:rows]), y[:rows], sizes[:n_valid])
    assert served == pytest.approx(valid_ndcg, abs=1e-9)


def test_weights_round_trip_through_a_file(fitted, tmp_path):
    (x, _, _), (weights, _, _) = fitted
    weights.save(tmp_path / "deep.npz")
    again = DeepFMWeights.load(tmp_path / "deep.npz")
    assert len(again.layers) == len(weights.layers) == 3
    np.testing.assert_array_equal(again.score(x), weights.score(x))
    assert np.isfinite(weights.score(x)).all()  # NaN features are inputs, not outputs


def test_blend_ignores_each_rankers_scale_and_offset():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    np.testing.assert_allclose(blend(a, b), blend(10 * a + 3, 0.1 * b - 7), atol=1e-5)
    assert np.isfinite(blend(np.ones(1), np.zeros(1))).all()  # one candidate, no spread
    # each ranker's own order survives when the other is indifferent
    assert (np.argsort(blend(a, np.zeros(50))) == np.argsort(a)).all()


def test_bundle_serves_the_blend_and_refuses_a_deep_ranker_of_other_features(bundle, tmp_path):
    assert bundle.deep_ranker is not None
    x = np.random.default_rng(0).normal(size=(20, len(bundle.deep_ranker.scaling.mean)))
    x = x.astype(np.float32)
    x[:, RANK_COLUMN] = np.arange(len(x))  # the shortlist's places, as the service fills them
    lambdarank = bundle.ranker.predict(x, num_threads=1)
    served = blend(lambdarank, bundle.deep_ranker.score(x))
    weight = bundle.manifest["ranker_order_weight"]  # the retrieval order beside the rankers
    expected = with_order(served, x[:, RANK_COLUMN], weight)
    np.testing.assert_allclose(bundle.scorer(x), expected, atol=1e-5)
    deep = bundle.deep_ranker
    narrower = InputScaling(deep.scaling.mean[:-1], deep.scaling.std[:-1], deep.scaling.flagged)
    other = replace(
        bundle,
        deep_ranker=DeepFMWeights(narrower, deep.linear, deep.bias, deep.factors, deep.layers),
    )
    path = save_bundle(other, tmp_path)
    with pytest.raises(ValueError, match="DeepFM ranker takes"):
        load_bundle(path)
