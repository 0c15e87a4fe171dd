"""The promotion gate judges both bundles on the same recent slice and refuses a worse one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from shortlist.data.synthetic import generate
from shortlist.evaluation.gate import gate, recent_slice, served_metrics
from shortlist.retrieval.index import build_index
from shortlist.training.pipeline import TrainConfig, train_bundle

pytestmark = pytest.mark.slow  # trains a bundle


@pytest.fixture(scope="module")
def split():
    data = generate(n_users=300, n_items=200, n_topics=5, likes_per_user=20, seed=5)
    return recent_slice(data, 0.1)


@pytest.fixture(scope="module")
def good(split):
    history, _ = split
    return train_bundle(history, TrainConfig(dim=16, epochs=15, candidates=100, deep_ranker=False))


@pytest.fixture(scope="module")
def worse(good):
    """The same bundle with its item vectors scrambled and no weighted-MF source (a fused
    source good on its own): retrieval far worse."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=good.item_vectors.shape).astype(np.float32)
    return dataclasses.replace(
        good,
        version="worse",
        item_vectors=vectors,
        index=build_index(vectors, "flat"),
        precomputed=None,
        ials=None,
        ranker=None,
        deep_ranker=None,
    )


def test_recent_slice_holds_out_the_latest_likes_in_time(split):
    history, recent = split
    assert recent.positives.nnz > 0
    assert history.timestamps.max() <= recent.timestamps.min()
    both = history.positives.multiply(recent.positives)
    assert both.nnz == 0  # a like is in one part only


def test_served_metrics_never_recommend_what_the_user_saw_before_the_slice(good, split):
    history, recent = split
    metrics = served_metrics(good, history, recent)
    assert 0.0 < metrics["ndcg@20"] <= 1.0
    assert metrics["users"] == int((np.diff(recent.positives.indptr) > 0).sum())


def test_the_gate_refuses_a_worse_candidate_and_passes_a_better_one(good, worse, split):
    history, recent = split
    refused = gate(worse, good, history, recent, margin=0.02)
    assert not refused.promoted
    assert refused.candidate["ndcg@20"] < refused.serving["ndcg@20"] * 0.98
    assert "NOT promoted" in refused.summary()
    passed = gate(good, worse, history, recent, margin=0.02)
    assert passed.promoted
    with pytest.raises(ValueError, match="margin"):
        gate(good, worse, history, recent, margin=1.5)
