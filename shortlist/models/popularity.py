"""Most-liked items: the cold-start fallback and the baseline every model must beat."""

from __future__ import annotations

import numpy as np

from shortlist.data.interactions import Interactions


def item_popularity(data: Interactions) -> np.ndarray:
    """Number of likes per item (float32, length n_items)."""
    return np.asarray(data.positives.sum(axis=0), dtype=np.float32).ravel()


def top_items(popularity: np.ndarray, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the `n` most popular items, most popular first, skipping `exclude`."""
    order = np.argsort(-popularity, kind="stable")
    if exclude is not None and len(exclude):
        order = order[~np.isin(order, exclude)]
    return order[:n]
