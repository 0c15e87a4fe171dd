"""Trained users' shortlists, computed offline by exact search and served from the bundle.

A trained user's vector only changes when feedback folds it in, and then retrieval searches
the index as before. Until then their top-N is fixed by the bundle, so `shortlist train`
computes it once (exact inner product over all items, training items excluded), a little
wider than the served N so that the live seen/disliked items and the request's exclusions
can be taken out of it at request time. The search this replaces was the largest share of a
Recommend's CPU (docs/decisions/0001-precomputed-shortlists.md), and exact search is also at
least as good as the ANN index it stands in for.

Exact search costs users x items, so past a budget (`precompute_users`) only the most active
users get a row; the others are searched at request time like a folded-in user
(docs/decisions/0051-precompute-budget.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from shortlist.data.mapped import load_mapped
from shortlist.retrieval.fusion import source_sets

ITEMS_FILE = "shortlist_items.npy"
SCORES_FILE = "shortlist_scores.npy"
SOURCES_FILE = "shortlist_sources.npy"
ROWS_FILE = "shortlist_rows.npy"
# `shortlist train`'s default budget in users x items pairs: every user of a Gowalla-sized
# dataset, and a bounded step past it (docs/decisions/0051-precompute-budget.md).
PRECOMPUTE_PAIRS = 2e10


def precompute_users(likes: sp.csr_matrix, max_pairs: float) -> np.ndarray:
    """The users whose shortlists `shortlist train` precomputes, in index order: all of them
    when users x items is within `max_pairs`, else the max_pairs // items users with the
    most likes (they send most requests; equal counts in user order)."""
    n_users, n_items = likes.shape
    keep = int(max_pairs // max(n_items, 1))
    if keep >= n_users:
        return np.arange(n_users)
    counts = np.diff(likes.indptr)
    return np.sort(np.argsort(-counts, kind="stable")[:keep])


@dataclass
class PrecomputedShortlists:
    """rows x width best items (int32, best first) and their scores (float32). A row
    shorter than width (tiny catalogues) is padded with -1 and is then the user's whole
    list of candidates."""

    items: np.ndarray
    scores: np.ndarray
    # fused shortlists: per item a bit per source that proposed it (bit j: source_names[j])
    sources: np.ndarray | None = None
    source_names: tuple[str, ...] = ()
    # per user, their row (-1: none, searched at request time); None: row u is user u's
    rows: np.ndarray | None = None

    @classmethod
    def compute(
        cls,
        user_vectors: np.ndarray,
        item_vectors: np.ndarray,
        exclude: sp.csr_matrix,
        width: int,
        batch_size: int = 1024,
        users: np.ndarray | None = None,
    ) -> PrecomputedShortlists:
        """Exact top-`width` by dot product for `users` (all by default), `exclude` (their
        training items) left out; equal scores in item order."""
        # torch only here, offline: the serving processes never import it
        from shortlist.models.topk import scored_top_k

        n_users = len(user_vectors)
        users = np.arange(n_users) if users is None else users
        items, scores = scored_top_k(user_vectors, item_vectors, users, width, exclude, batch_size)
        return cls(items.astype(np.int32), scores, rows=user_rows(users, n_users))

    def row(self, user: int) -> int:
        """The user's row (what `pick`, `at` and `sources_at` take), -1 when they have none."""
        return user if self.rows is None else int(self.rows[user])

    def pick(self, row: int, n: int, exclude: np.ndarray) -> np.ndarray | None:
        """Where in `row` its top-n without the `exclude`d item indices are, or None when
        there is no row (-1) or it cannot tell (fewer than n left of a row cut at width)."""
        if row < 0:
            return None
        row = self.items[row]
        keep = row >= 0
        complete = not keep[-1]
        if len(exclude):
            keep &= ~np.isin(row, exclude)
        picked = np.flatnonzero(keep)[:n]
        if len(picked) < n and not complete:
            return None
        return picked

    def at(self, row: int, picked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The items and scores at positions `picked` of `row`."""
        return self.items[row, picked].astype(np.int64), np.array(self.scores[row, picked])

    def sources_at(self, row: int, picked: np.ndarray) -> list[tuple[str, ...]]:
        """The sources that proposed the items at positions `picked` of `row`."""
        if self.sources is None:
            return []
        return source_sets(np.asarray(self.sources[row, picked]), self.source_names)

    def save(self, directory: Path) -> None:
        np.save(directory / ITEMS_FILE, self.items)
        np.save(directory / SCORES_FILE, self.scores)
        if self.sources is not None:
            np.save(directory / SOURCES_FILE, self.sources)
        if self.rows is not None:
            np.save(directory / ROWS_FILE, self.rows)

    @classmethod
    def load(
        cls, directory: Path, source_names: tuple[str, ...] = ()
    ) -> PrecomputedShortlists | None:
        """Memory-mapped (processes serving one bundle share its pages); None when the
        bundle has none."""
        if not (directory / ITEMS_FILE).exists():
            return None

        def optional(name: str) -> np.ndarray | None:
            path = directory / name
            return load_mapped(path) if path.exists() else None

        return cls(
            load_mapped(directory / ITEMS_FILE),
            load_mapped(directory / SCORES_FILE),
            optional(SOURCES_FILE),
            source_names,
            optional(ROWS_FILE),
        )


def user_rows(users: np.ndarray, n_users: int) -> np.ndarray | None:
    """`PrecomputedShortlists.rows` for rows holding `users` in order (None: all users, in
    order)."""
    if len(users) == n_users and np.array_equal(users, np.arange(n_users)):
        return None
    rows = np.full(n_users, -1, np.int32)
    rows[users] = np.arange(len(users), dtype=np.int32)
    return rows
