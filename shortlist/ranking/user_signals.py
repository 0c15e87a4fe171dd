"""What the ranker knows of the user at request time: activity, recent likes and dislikes
(live feedback first, then training's), attributes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

RECENT_ITEMS = 50  # likes and dislikes (newest first) the similarity features look at


@dataclass
class UserSignals:
    """What the ranker knows of the user: how active, what they liked/disliked lately, and
    their attributes (NaN-filled when unknown)."""

    activity: float
    recent_likes: np.ndarray  # item indices, newest first
    recent_dislikes: np.ndarray  # item indices
    attributes: np.ndarray | None = None


def recent_in_order(recent: sp.csr_matrix, user: int) -> np.ndarray:
    """The user's row of a `recent_likes` matrix (newest first: data holds the age rank)."""
    lo, hi = recent.indptr[user], recent.indptr[user + 1]
    return recent.indices[lo:hi][np.argsort(recent.data[lo:hi], kind="stable")]
