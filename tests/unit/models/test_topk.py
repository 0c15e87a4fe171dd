"""Exact top-k: the best k per row by score, equal scores in item-index order, however the
ties fall around the cut."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from shortlist.models.topk import scored_top_k


def reference(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: sort by (-score, item), keep k; -1 / 0 where the row runs out of items."""
    items = np.full((len(scores), k), -1)
    values = np.zeros((len(scores), k), np.float32)
    for r, row in enumerate(scores):
        order = np.lexsort((np.arange(len(row)), -row))
        order = order[np.isfinite(row[order])][:k]
        items[r, : len(order)] = order
        values[r, : len(order)] = row[order]
    return items, values


@settings(max_examples=80, deadline=None)
@given(
    n_users=st.integers(1, 12),
    n_items=st.integers(1, 40),
    k=st.integers(1, 45),
    levels=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    excluded=st.floats(0.0, 0.6),
)
def test_ties_at_and_around_the_cut_go_to_the_lowest_items(
    n_users, n_items, k, levels, seed, excluded
):
    rng = np.random.default_rng(seed)
    # few distinct scores: ties at, above and below every row's k-th place
    users = rng.integers(0, levels, (n_users, 1)).astype(np.float32) + 1
    item_levels = rng.integers(0, levels, (n_items, 1)).astype(np.float32)
    mask = sp.csr_matrix(rng.random((n_users, n_items)) < excluded)
    items, values = scored_top_k(users, item_levels, np.arange(n_users), k, mask, batch_size=5)
    dense = (users @ item_levels.T).astype(np.float32)
    dense[mask.toarray()] = -np.inf
    want_items, want_values = reference(dense, k)
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_array_equal(values, want_values)
