"""The session model (SASRec) learns planted structure, and its fold-in is its encoder: a
user's vector recomputed from their likes in order equals the trained one."""

from __future__ import annotations

import numpy as np
import pytest

from shortlist.data.splits import select_likes
from shortlist.data.synthetic import generate
from shortlist.evaluation.metrics import evaluate
from shortlist.models import registry
from shortlist.models.sasrec import ordered_likes


@pytest.mark.timeout(600)  # seconds of CPU; minutes on a busy shared host
def test_sasrec_beats_random_and_encode_reproduces_its_user_vectors():
    data = generate(n_users=300, n_items=200, n_topics=5, likes_per_user=20, seed=3)
    held = np.random.default_rng(0).random(data.positives.nnz) < 0.2
    train, test = select_likes(data, ~held), select_likes(data, held)
    model = registry.build("sasrec", {"epochs": 20, "batch_size": 32, "lr": 0.003})
    report = model.fit(train)
    assert report.epochs == 20
    got = evaluate(model.user_factors, model.item_factors, train.positives, test.positives, (20,))
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(model.user_factors.shape).astype(np.float32)
    floor = evaluate(noise, model.item_factors, train.positives, test.positives, (20,))
    assert got["ndcg@20"] > 2 * floor["ndcg@20"], (got, floor)
    again = model.encode(ordered_likes(train)[:5])
    np.testing.assert_allclose(again, model.user_factors[:5], rtol=1e-4, atol=1e-5)
