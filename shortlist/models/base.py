"""The interface every retrieval model implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from shortlist.data.interactions import Interactions

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
