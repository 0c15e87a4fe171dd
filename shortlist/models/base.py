"""The interface every retrieval model implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import scipy.sparse as sp

from shortlist.data.interactions import Interactions

if TYPE_CHECKING:  # serving imports this module and needs no torch
    from shortlist.compute.ranks import Ranks

# Early stopping: (user_factors, item_factors, k) -> held-out metrics with "ndcg@k" and
# "recall@k"; the caller builds it (offline evaluation), so models never import it.
Validator = Callable[[np.ndarray, np.ndarray, int], dict[str, float]]


@dataclass
class FitReport:
    """What training did: epochs run, seconds, and the validation curve if any."""

    epochs: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


class EmbeddingModel(Protocol):
    """A model whose score for (user, item) is `user_factors[u] @ item_factors[i]`.

    That contract is what lets FAISS serve any model by maximum inner product search.
    """

    name: str
    user_factors: np.ndarray
    item_factors: np.ndarray

    def fit(self, data: Interactions) -> FitReport: ...


class ItemItemModel(Protocol):
    """A model whose scores for a user are `history_row @ neighbours` (items x items, sparse:
    each item's kept neighbours). Serving it is a sparse row-sum over the user's likes, so
    it needs no user factors and a user's newest likes count at once."""

    name: str
    neighbours: sp.csr_matrix

    def fit(self, data: Interactions) -> FitReport: ...


RetrievalModel = EmbeddingModel | ItemItemModel


def is_item_item(model: object) -> bool:
    """Whether `model` scores by its neighbour table rather than by dot products."""
    return hasattr(model, "neighbours") and not hasattr(model, "user_factors")


@dataclass
class BestOnValid:
    """Early stopping for models trained by epochs: every `every` epochs (and the last),
    score the vectors on valid NDCG@`k`, keep the best epoch's, and stop after `patience`
    evaluations without a gain. No `validate`: nothing is scored, nothing stops.

    With several data-parallel ranks (`ranks`) only rank 0 scores; the decisions (stop,
    improved) are broadcast so every rank stops at the same epoch."""

    validate: Validator | None
    every: int
    last: int
    patience: int
    ranks: Ranks | None = None  # None: the single rank
    k: int = 20
    best: float = -1.0
    best_epoch: int = 0
    vectors: tuple[np.ndarray, np.ndarray] | None = None
    bad: int = 0
    improved: bool = False  # whether the latest check kept a new best

    def check(self, epoch: int, row: dict[str, float], vectors_of: Callable[[], tuple]) -> bool:
        """Score this epoch when due (metrics into `row`); True when training should stop."""
        self.improved = False
        if self.validate is None or not (epoch % self.every == 0 or epoch == self.last):
            return False
        if self.ranks is None or self.ranks.main:
            vectors = vectors_of()
            m = self.validate(*vectors, self.k)
            k = self.k
            row.update({f"recall@{k}": m[f"recall@{k}"], f"ndcg@{k}": m[f"ndcg@{k}"]})
            if m[f"ndcg@{k}"] > self.best:
                self.best, self.best_epoch, self.vectors = m[f"ndcg@{k}"], epoch, vectors
                self.bad, self.improved = 0, True
            else:
                self.bad += 1
        if self.ranks is not None:
            self.improved, self.bad = self.ranks.agree((self.improved, self.bad))
        return self.bad >= self.patience
