"""Top-K metrics with the LightGCN-paper definitions, computed in batches.

Recall@K = hits in top K / |test items|; NDCG@K with binary relevance and ideal DCG over
min(K, |test items|); Precision@K = hits / K; HitRate@K = 1 if any hit. All are averaged
over users with at least one test item. Items the user has in training are never ranked.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from shortlist.models.progress import track
from shortlist.models.topk import model_top_k, top_k


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def hit_matrix(top: np.ndarray, test: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
    """Boolean (len(users), K): whether each ranked item is a test item of its user."""
    sub = test[users].tocsr()
    sub.sort_indices()
    hits = np.zeros(top.shape, dtype=bool)
    for r in track(range(len(users)), "evaluation", every=1024):
        row = sub.indices[sub.indptr[r] : sub.indptr[r + 1]]
        if len(row):
            pos = np.searchsorted(row, top[r])
            pos[pos >= len(row)] = 0
            hits[r] = row[pos] == top[r]
    return hits


def per_user_metrics(
    hits: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-user recall/ndcg/precision/hit-rate at each K from a hit matrix (users x maxK)."""
    out: dict[str, np.ndarray] = {}
    n_rel = np.maximum(np.asarray(n_relevant, np.float64), 1.0)
    disc = _discounts(hits.shape[1])
    cum_idcg = np.concatenate([[0.0], np.cumsum(disc)])
    for k in ks:
        h = hits[:, :k]
        n_hit = h.sum(1).astype(np.float64)
        dcg = (h * disc[:k]).sum(1)
        idcg = cum_idcg[np.minimum(n_rel, k).astype(np.int64)]
        out[f"recall@{k}"] = n_hit / n_rel
        out[f"ndcg@{k}"] = dcg / idcg
        out[f"precision@{k}"] = n_hit / k
        out[f"hitrate@{k}"] = (n_hit > 0).astype(np.float64)
    return out


def long_tail_items(popularity: np.ndarray, head_share: float = 0.2) -> np.ndarray:
    """Boolean mask of long-tail items: all but the `head_share` most popular ones."""
    n_head = int(np.ceil(len(popularity) * head_share))
    tail = np.ones(len(popularity), dtype=bool)
    tail[np.argsort(-popularity, kind="stable")[:n_head]] = False
    return tail


def evaluate(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    ks: Sequence[int] = (20,),
    batch_size: int = 1024,
) -> dict[str, float]:
    """All metrics averaged over users with test items, plus coverage and long-tail share.

    `coverage@K`: share of the catalogue appearing in at least one top-K list.
    `longtail@K`: share of recommended slots filled by long-tail items (outside the 20%
    most liked in training).
    """
    test = test.tocsr()
    n_rel = np.diff(test.indptr)
    users = np.flatnonzero(n_rel > 0)
    max_k = max(ks)
    if len(users) == 0:
        names = ("recall", "ndcg", "precision", "hitrate", "coverage", "longtail")
        return {**{f"{m}@{k}": 0.0 for k in ks for m in names}, "users": 0}
    top = top_k(user_factors, item_factors, users, max_k, exclude=train, batch_size=batch_size)
    return evaluate_top(top, users, train, test, item_factors.shape[0], ks)


def evaluate_model(
    model: object,
    history: sp.csr_matrix,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    ks: Sequence[int] = (20,),
) -> dict[str, float]:
    """`evaluate` of any retrieval model (`shortlist.models.topk.model_top_k`): embedding
    models by their factors, item-item ones by `history @ neighbours`."""
    test = test.tocsr()
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    top = model_top_k(model, history, users, max(ks), exclude=train)[0]
    return evaluate_top(top, users, train, test, train.shape[1], ks)


def evaluate_top(
    top: np.ndarray,
    users: np.ndarray,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    n_items: int,
    ks: Sequence[int] = (20,),
) -> dict[str, float]:
    """`evaluate`'s metrics of ranked lists (`top`: one row per user of `users`, -1 padded)."""
    test = test.tocsr()
    if len(users) == 0:
        names = ("recall", "ndcg", "precision", "hitrate", "coverage", "longtail")
        return {**{f"{m}@{k}": 0.0 for k in ks for m in names}, "users": 0}
    n_rel = np.diff(test.indptr)
    hits = hit_matrix(top, test, users)
    per_user = per_user_metrics(hits, n_rel[users], ks)
    result = {name: float(v.mean()) for name, v in per_user.items()}
    tail = long_tail_items(np.asarray(train.sum(axis=0)).ravel())
    for k in ks:
        shown = top[:, :k]
        shown = shown[shown >= 0]
        result[f"coverage@{k}"] = float(len(np.unique(shown)) / max(n_items, 1))
        result[f"longtail@{k}"] = float(tail[shown].mean()) if len(shown) else 0.0
    result["users"] = int(len(users))
    return result
