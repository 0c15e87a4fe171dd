"""Fold-in: a user's vector from the item vectors of their feedback, without retraining.

Closed-form ridge regression in d x d: liked items are pulled toward the score level of a
typical training like, disliked (and skipped) items toward the level of a random item,
with a prior that keeps the vector near the trained one (zero for a new user).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shortlist.events import Kind

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

    For likes alone this is exactly the vector training gives a user with those likes.
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
