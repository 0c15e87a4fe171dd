"""Every user's precomputed fused shortlist, computed in parts of users (bounded memory; on
Dask the parts are the tasks), is the list the whole user set gives in one part."""

from __future__ import annotations

import numpy as np

from shortlist.data.synthetic import generate
from shortlist.models import registry
from shortlist.retrieval.fusion import FusionConfig
from shortlist.training import pipeline
from shortlist.training.sources import fit_sources


def test_parts_of_users_give_the_one_part_lists(monkeypatch):
    data = generate(n_users=300, n_items=120, likes_per_user=12, dislikes_per_user=3, seed=2)
    primary = registry.build("spectral", {"rank": 16, "ideal_rank": 8})
    primary.fit(data)
    sources = fit_sources(data, "spectral", primary, {}, {"factors": 8, "regularization": 1.0})
    fusion = FusionConfig(
        weights={"spectral": 1.0, "item-item": 0.5, "ials": 0.5}, primary="spectral", depth=40
    )
    seen = (data.positives + data.negatives).tocsr()
    whole = pipeline.fused_precomputed(sources, fusion, data.positives, seen, 32)
    monkeypatch.setattr(pipeline, "PRECOMPUTE_USERS", 70)  # 5 parts, the last one short
    parts = pipeline.fused_precomputed(sources, fusion, data.positives, seen, 32)
    assert whole.items.shape == parts.items.shape == (300, 32)
    assert (whole.items >= 0).all()  # a full list for everyone
    np.testing.assert_array_equal(parts.items, whole.items)
    np.testing.assert_array_equal(parts.scores, whole.scores)
    np.testing.assert_array_equal(parts.sources, whole.sources)
    assert parts.source_names == whole.source_names == ("spectral", "item-item", "ials")
    # the seen items are never listed
    for u in range(0, 300, 37):
        assert not set(parts.items[u]) & set(seen[u].indices)
