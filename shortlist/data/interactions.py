"""The in-memory form of a dataset: positive and negative user-item matrices plus id maps."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from shortlist.data.ids import IdMap


@dataclass
class Interactions:
    """Likes (`positives`) and explicit dislikes (`negatives`) as CSR matrices users x items.

    `timestamps` (optional) holds, aligned with `positives.data`, the unix time of each like.
    `sequence` (optional, same alignment) holds each like's position in its user's history
    where a source lists likes in order but without times (1 = oldest; 0 = position unknown,
    counted as older than any); `recency()` gives whichever of the two orders likes in time.
    `user_features` / `item_features` are optional dense numeric attribute tables.
    `item_attribute_values` (optional) holds each item attribute as text, one value per item
    ("" where none), as the items file gave it: what request rules filter on.
    `context` (optional) holds, per request-context key a client sends (e.g. "moment"), the
    value recorded with each like, aligned with `positives.data` ("" where none was).
    """

    users: IdMap
    items: IdMap
    positives: sp.csr_matrix
    negatives: sp.csr_matrix | None = None
    timestamps: np.ndarray | None = None
    sequence: np.ndarray | None = None
    user_features: dict[str, np.ndarray] = field(default_factory=dict)
    item_features: dict[str, np.ndarray] = field(default_factory=dict)
    context: dict[str, np.ndarray] = field(default_factory=dict)
    item_attribute_values: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (len(self.users), len(self.items))
        self.positives = sp.csr_matrix(self.positives, dtype=np.float32)
        if self.positives.shape != shape:
            raise ValueError(f"positives shape {self.positives.shape} != {shape}")
        if self.negatives is None:
            self.negatives = sp.csr_matrix(shape, dtype=np.float32)
        self.negatives = sp.csr_matrix(self.negatives, dtype=np.float32)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def nnz(self) -> int:
        return int(self.positives.nnz)

    def recency(self) -> np.ndarray | None:
        """Per like, a key that orders each user's likes oldest to newest (None: unknown)."""
        return self.timestamps if self.timestamps is not None else self.sequence

    def fingerprint(self) -> str:
        """A content hash of the matrices and id maps, recorded in every artifact."""
        h = hashlib.sha256()
        for ids in (self.users.to_list(), self.items.to_list()):
            h.update("\x1f".join(ids).encode())
        for m in (self.positives, self.negatives):
            m = m.tocsr()
            m.sort_indices()
            h.update(m.indptr.tobytes())
            h.update(m.indices.tobytes())
        return h.hexdigest()[:16]

    def with_positives(self, positives: sp.csr_matrix) -> Interactions:
        """The same dataset (ids, negatives, features) with other positives, e.g. a split."""
        return Interactions(
            users=self.users,
            items=self.items,
            positives=positives,
            negatives=self.negatives,
            user_features=self.user_features,
            item_features=self.item_features,
            item_attribute_values=self.item_attribute_values,
        )


def rank_in_user(likes: sp.csr_matrix, order: np.ndarray) -> np.ndarray:
    """Per like (aligned with `likes.data`), its rank among its user's likes by `order`:
    1 for the oldest, the user's count for the newest; ties by item index."""
    rows = np.repeat(np.arange(likes.shape[0]), np.diff(likes.indptr))
    by_time = np.lexsort((likes.indices, np.asarray(order, np.float64), rows))
    rank = np.empty(likes.nnz, np.int64)
    rank[by_time] = np.arange(likes.nnz) - likes.indptr[rows[by_time]] + 1
    return rank


def merged_values(parts: list[tuple[sp.csr_matrix, np.ndarray]]) -> np.ndarray:
    """Per-like values of disjoint like matrices, aligned with the data of their sum."""
    rows, cols, values = [], [], []
    for matrix, vals in parts:
        coo = matrix.tocsr().tocoo()
        rows.append(coo.row)
        cols.append(coo.col)
        values.append(np.asarray(vals))
    order = np.lexsort((np.concatenate(cols), np.concatenate(rows)))
    return np.concatenate(values)[order]


def row_items(matrix: sp.csr_matrix, user: int) -> np.ndarray:
    """The column indices of one CSR row, as `matrix[user].indices` (without building a
    1-row matrix, which costs more than the read; docs/decisions/0017-tried-and-not-kept.md)."""
    return matrix.indices[matrix.indptr[user] : matrix.indptr[user + 1]]
