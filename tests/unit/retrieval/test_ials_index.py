"""The weighted-MF source on a large catalogue: its user solve searched in its own IVF index
(built at load) gives the exact scoring's list, never an excluded item."""

from __future__ import annotations

from types import SimpleNamespace

import faiss
import numpy as np

from shortlist.models.ials import MFSource
from shortlist.retrieval.fusion import FusionConfig
from shortlist.retrieval.index import EXACT_MAX_ITEMS
from shortlist.retrieval.retrieve import Shortlist, fused_shortlist, prepare_for_retrieval


def test_a_large_catalogue_searches_the_mf_index_with_the_exact_lists_items():
    rng = np.random.default_rng(0)
    n_items, dim = EXACT_MAX_ITEMS + 5_000, 32
    centres = rng.normal(size=(40, dim))
    factors = centres[rng.integers(0, 40, n_items)] + 0.5 * rng.normal(size=(n_items, dim))
    factors = (0.1 * factors).astype(np.float32)
    gram = factors.T.astype(np.float64) @ factors + 10 * np.eye(dim)
    mf = MFSource(factors, gram, 10.0)
    primary = faiss.IndexFlatIP(8)
    bundle = SimpleNamespace(
        ials=mf,
        index=primary,
        user_vectors=np.zeros((5, 8), np.float32),
        item_vectors=np.zeros((n_items, 8), np.float32),
        fusion=FusionConfig({"vectors": 0.0, "ials": 1.0}, primary="vectors"),
    )
    prepare_for_retrieval(bundle)
    assert isinstance(bundle.ials_index, faiss.IndexIVFFlat)
    assert bundle.ials_index.ntotal == n_items
    found = Shortlist(np.zeros(0, np.int64), np.zeros(0, np.float32), "trained", "search")
    overlaps = []
    for seed in range(5):
        history = np.random.default_rng(seed).choice(n_items, 30, replace=False)
        exclude = np.union1d(history, np.random.default_rng(seed + 9).choice(n_items, 500))
        served = fused_shortlist(bundle, found, history, exclude, 200).items
        exact = mf.top(history, exclude, 200)
        assert len(served) == 200 and not np.isin(served, exclude).any()
        overlaps.append(len(np.intersect1d(served, exact)) / 200)
    assert min(overlaps) >= 0.9, overlaps
