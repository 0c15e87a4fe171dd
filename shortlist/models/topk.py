"""Exact top-K items per user by dot product, with excluded items removed and ties broken
by item index (shared by retrieval's precomputed shortlists and offline evaluation)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


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
    users = np.asarray(users, dtype=np.int64)
    out = np.full((len(users), k), -1, dtype=np.int64)
    out_scores = np.zeros((len(users), k), dtype=np.float32)
    width = min(k, items.shape[0])
    excl = exclude.tocsr() if exclude is not None else None
    for lo in range(0, len(users), batch_size):
        b = users[lo : lo + batch_size]
        u = torch.from_numpy(np.ascontiguousarray(user_factors[b], dtype=np.float32))
        scores = u @ items.T
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


def _top_with_ties_by_index(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top `k` per row, sorted by score, equal scores in item-index order.

    `torch.topk` breaks ties arbitrarily (and differently for different k), which makes
    e.g. recall@20 depend on whether @50 was asked for too; tied scores are common with
    popularity-like models. Rows whose k-th score is tied beyond the cut get the tied
    items with the lowest indices.
    """
    vals, idx = torch.topk(scores, k, dim=1, sorted=True)
    thr = vals[:, -1:]
    ambiguous = torch.nonzero((scores >= thr).sum(1) > k).ravel()
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
