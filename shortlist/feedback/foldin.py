"""Fold-in: a user's vector from the item vectors of their feedback, without retraining.

Closed-form ridge regression in d x d: liked items are pulled toward the score level of a
typical training like, disliked (and skipped) items toward the level of a random item,
with a prior that keeps the vector near the trained one (zero for a new user).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shortlist.feedback.events import Kind

# (target, weight) per kind: "like" and "dislike" targets are calibrated per bundle.
KIND_WEIGHTS: dict[Kind, float] = {
    Kind.LIKE: 1.0,
    Kind.DISLIKE: 1.0,
    Kind.SKIP: 0.3,
    Kind.VIEW: 0.0,
}


@dataclass(frozen=True)
class FoldInTargets:
    """Score levels measured on the training data of a bundle."""

    like: float
    dislike: float
    prior_strength: float = 1.0


def fold_in(
    item_vectors: np.ndarray,
    items: Sequence[int],
    kinds: Sequence[Kind],
    targets: FoldInTargets,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """Solve (Qᵀ W Q + λI) v = Qᵀ W y + λ v0 for the user's vector v."""
    dim = item_vectors.shape[1]
    v0 = np.zeros(dim, np.float64) if prior is None else prior.astype(np.float64)
    weights = np.array([KIND_WEIGHTS[k] for k in kinds], np.float64)
    keep = weights > 0
    if not keep.any():
        return v0.astype(np.float32)
    q = item_vectors[np.asarray(items)[keep]].astype(np.float64)
    w = weights[keep]
    y = np.array([targets.like if k == Kind.LIKE else targets.dislike for k in kinds])[keep]
    lam = targets.prior_strength
    a = (q.T * w) @ q + lam * np.eye(dim)
    b = (q.T * w) @ y + lam * v0
    return np.linalg.solve(a, b).astype(np.float32)


# Signed weights of the linear (encoder) fold-in: dislikes push the vector away.
LINEAR_WEIGHTS: dict[Kind, float] = {
    Kind.LIKE: 1.0,
    Kind.DISLIKE: -1.0,
    Kind.SKIP: -0.3,
    Kind.VIEW: 0.0,
}


def linear_fold_in(
    encoder: np.ndarray,
    items: Sequence[int],
    kinds: Sequence[Kind],
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """For linear models: the trained vector plus the signed encoder rows of new feedback.

    For likes alone this is exactly the vector training gives a user with those likes (with
    a spectral model's recency weighting, every new like counts as the newest).
    """
    w = np.array([LINEAR_WEIGHTS[k] for k in kinds], np.float32)
    v = w @ encoder[np.asarray(items, np.int64)]
    return v if prior is None else prior + v


def calibrate_targets(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    seed: int = 0,
    sample: int = 20_000,
) -> FoldInTargets:
    """Mean score of training likes and of random (user, item) pairs."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(users), size=min(sample, len(users)))
    like = np.einsum("nd,nd->n", user_vectors[users[pick]], item_vectors[items[pick]]).mean()
    rand_items = rng.integers(0, len(item_vectors), size=len(pick))
    dislike = np.einsum("nd,nd->n", user_vectors[users[pick]], item_vectors[rand_items]).mean()
    return FoldInTargets(like=float(like), dislike=float(min(dislike, like - 1e-3)))


def _weights(table: dict[Kind, float]) -> np.ndarray:
    """A kind-indexed lookup array (index 0, no kind: weight 0)."""
    out = np.zeros(max(int(k) for k in Kind) + 1, np.float64)
    for kind, w in table.items():
        out[int(kind)] = w
    return out


LINEAR_BY_KIND = _weights(LINEAR_WEIGHTS)
RIDGE_BY_KIND = _weights(KIND_WEIGHTS)


def linear_deltas(
    encoder: np.ndarray, rows: np.ndarray, items: np.ndarray, weights: np.ndarray, n_rows: int
) -> np.ndarray:
    """Σ weight · encoder[item] per row: (n_rows, d), one sparse product for the batch,
    in float64 over the encoder rows the batch names only: converting the whole encoder per
    batch cost milliseconds of CPU per event when events come a few per batch
    (docs/decisions/0015-fold-in.md)."""
    import scipy.sparse as sp

    used, local = np.unique(items, return_inverse=True)
    s = sp.csr_matrix((weights, (rows, local.ravel())), shape=(n_rows, len(used)))
    return np.asarray(s @ encoder[used].astype(np.float64))


def batched_fold_in(
    item_vectors: np.ndarray,
    rows: np.ndarray,
    items: np.ndarray,
    kinds: np.ndarray,
    targets: FoldInTargets,
    priors: np.ndarray,
) -> np.ndarray:
    """`fold_in` for many users at once. Entry n is (user row, item index, kind as int),
    rows ascending; priors (n_users, d). Users are grouped by padded length and each
    group's d x d systems are built by one batched product and solved by one batched
    solve (padding has kind 0: weight 0)."""
    n, dim = len(priors), item_vectors.shape[1]
    lam = targets.prior_strength
    counts = np.bincount(rows, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(rows)) - starts[rows]
    widths = np.maximum(8, 2 ** np.ceil(np.log2(np.maximum(counts, 1)))).astype(np.int64)
    y_by_kind = np.full(len(RIDGE_BY_KIND), targets.dislike)
    y_by_kind[int(Kind.LIKE)] = targets.like
    out = np.empty((n, dim), np.float32)
    for width in np.unique(widths):
        group = np.flatnonzero(widths == width)
        step = max(1, int(4_000_000 // (width * dim)))  # at most ~32 MiB of padded vectors
        for lo in range(0, len(group), step):
            part = group[lo : lo + step]
            slot = np.full(n, -1, np.int64)
            slot[part] = np.arange(len(part))
            take = slot[rows] >= 0
            idx = np.zeros((len(part), width), np.int64)
            kind = np.zeros((len(part), width), np.int64)
            idx[slot[rows[take]], pos[take]] = items[take]
            kind[slot[rows[take]], pos[take]] = kinds[take]
            q = item_vectors[idx].astype(np.float64)  # (g, L, d)
            w = RIDGE_BY_KIND[kind]
            b = np.einsum("gld,gl->gd", q, w * y_by_kind[kind]) + lam * priors[part]
            if width < dim:
                # Woodbury: (λI + Qsᵀ Qs)⁻¹ = (I - Qsᵀ (λI + Qs Qsᵀ)⁻¹ Qs) / λ with
                # Qs = sqrt(w) Q, so an L x L system per user instead of d x d.
                qs = q * np.sqrt(w)[..., None]
                m = np.matmul(qs, qs.transpose(0, 2, 1))
                m[:, np.arange(width), np.arange(width)] += lam
                z = np.linalg.solve(m, np.einsum("gld,gd->gl", qs, b)[..., None])[..., 0]
                out[part] = (b - np.einsum("gld,gl->gd", qs, z)) / lam
            else:
                qw = q * w[..., None]
                a = np.matmul(qw.transpose(0, 2, 1), q)
                a[:, np.arange(dim), np.arange(dim)] += lam
                out[part] = np.linalg.solve(a, b[..., None])[..., 0]
    return out
