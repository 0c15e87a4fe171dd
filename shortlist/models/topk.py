"""Exact top-K items per user by dot product, with excluded items removed and ties broken
by item index (shared by retrieval's precomputed shortlists and offline evaluation)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

from shortlist.models.base import is_item_item
from shortlist.models.progress import track


def top_k(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    users: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """The `k` best items per user by dot product, with `exclude` items (training) removed.

    Excluded items never appear: where fewer than `k` items are left (tiny catalogues) the
    remaining slots hold -1.
    """
    return scored_top_k(user_factors, item_factors, users, k, exclude, batch_size)[0]


def scored_top_k(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    users: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None = None,
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """`top_k` and the dot products of its items (float32; 0 in the -1 slots)."""
    items = torch.from_numpy(np.ascontiguousarray(item_factors, dtype=np.float32))

    def scores_of(batch: np.ndarray) -> torch.Tensor:
        u = torch.from_numpy(np.ascontiguousarray(user_factors[batch], dtype=np.float32))
        return u @ items.T

    return ranked_top_k(scores_of, items.shape[0], users, k, exclude, batch_size)


def item_item_top_k(
    neighbours: sp.csr_matrix,
    history: sp.csr_matrix,
    users: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None = None,
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """`scored_top_k` of an item-item model: each user's scores are their `history` row
    times the `neighbours` table (a sparse product, dense per batch only). Items no liked
    item points to are left out (-1 slots), not ranked by a zero score."""
    hist = history.tocsr().astype(np.float32)
    table = neighbours.tocsr()

    def scores_of(batch: np.ndarray) -> torch.Tensor:
        scores = torch.from_numpy(np.asarray((hist[batch] @ table).todense(), np.float32))
        scores[scores <= 0] = -torch.inf  # no neighbour of any liked item: not a candidate
        return scores

    return ranked_top_k(scores_of, table.shape[1], users, k, exclude, batch_size)


def ranked_top_k(
    scores_of: Callable[[np.ndarray], torch.Tensor],
    n_items: int,
    users: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None = None,
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (items, scores) per user of any scoring, `exclude` removed, ties by index."""
    users = np.asarray(users, dtype=np.int64)
    out = np.full((len(users), k), -1, dtype=np.int64)
    out_scores = np.zeros((len(users), k), dtype=np.float32)
    width = min(k, n_items)
    excl = exclude.tocsr() if exclude is not None else None
    for lo in track(range(0, len(users), batch_size), "top-k"):
        b = users[lo : lo + batch_size]
        scores = scores_of(b)
        if excl is not None:
            sub = excl[b]
            rows = np.repeat(np.arange(len(b)), np.diff(sub.indptr))
            scores[
                torch.from_numpy(rows), torch.from_numpy(sub.indices.astype(np.int64))
            ] = -torch.inf
        idx, vals = _top_with_ties_by_index(scores, width)
        missing = np.isneginf(vals.numpy())
        out[lo : lo + len(b), :width] = np.where(missing, -1, idx.numpy())
        out_scores[lo : lo + len(b), :width] = np.where(missing, 0.0, vals.numpy())
    return out, out_scores


def model_top_k(
    model: object,
    history: sp.csr_matrix,
    users: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None = None,
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (items, scores) of any retrieval model, the one path for both kinds: dot
    products of an embedding model, `history @ neighbours` of an item-item one."""
    if is_item_item(model):
        return item_item_top_k(model.neighbours, history, users, k, exclude, batch_size)
    return scored_top_k(model.user_factors, model.item_factors, users, k, exclude, batch_size)


def _top_with_ties_by_index(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top `k` per row, sorted by score, equal scores in item-index order.

    `torch.topk` breaks ties arbitrarily (and differently for different k), which makes
    e.g. recall@20 depend on whether @50 was asked for too; tied scores are common with
    popularity-like models. Rows whose k-th score is tied beyond the cut get the tied
    items with the lowest indices.
    """
    # One more than k: a row's k-th score is tied beyond the cut exactly when its (k+1)-th
    # equals it. Counting the scores at or above the k-th instead passes over every item of
    # every row again, which cost more than the dot products at 256 factors.
    vals, idx = torch.topk(scores, min(k + 1, scores.shape[1]), dim=1, sorted=True)
    if 0 < k < vals.shape[1]:
        ambiguous = torch.nonzero(vals[:, k] == vals[:, k - 1]).ravel()
    else:
        ambiguous = torch.zeros(0, dtype=torch.int64)
    vals, idx = vals[:, :k], idx[:, :k]
    thr = vals[:, -1:]
    if len(ambiguous):
        sub, t = scores[ambiguous], thr[ambiguous]
        greater, tie = sub > t, sub == t
        need = k - greater.sum(1, keepdim=True)
        chosen = greater | (tie & (tie.cumsum(1, dtype=torch.int32) <= need))
        idx[ambiguous] = torch.nonzero(chosen)[:, 1].view(len(ambiguous), k)
    idx = torch.sort(idx, dim=1).values
    vals = scores.gather(1, idx)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return idx.gather(1, order), vals.gather(1, order)
