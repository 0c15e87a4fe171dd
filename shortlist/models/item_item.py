"""Item-item retrieval models: a user's score for item j is the sum, over the items i they
liked, of a learned weight B[i, j] (`history row @ neighbours`).

Two ways to learn B, both ending in the same served form, a sparse neighbour table that
keeps each item's `neighbours` largest positive weights (a user is then scored by a sparse
row-sum over their history, never a dense solve at request time):

- EASE (Steck 2019): B = argmin ||X - XB||^2 + l2 ||B||^2 with diag(B) = 0, in closed form
  B = -P / diag(P), P = (X^T X + l2 I)^-1. The solve is items x items dense, so it runs over
  at most `max_items` items (the most liked of those with at least `min_likes` likes); the
  other items get no weights. l2 is chosen on a held-out slice of the training likes.
- item-kNN: shrunk cosine c_ij / (sqrt(n_i n_j) + shrink), computed in blocks of rows with
  sparse products (never the dense items x items product), top `neighbours` per row: the
  item-item source for catalogues above EASE's cap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from shortlist import compute
from shortlist.data.interactions import Interactions
from shortlist.models.base import FitReport
from shortlist.models.progress import bar

# Largest items x items solve EASE does: a float32 20k x 20k matrix is 1.6 GB, and the
# inverse needs about three of them; the registry's "item-item" takes item-kNN above it.
EASE_MAX_ITEMS = 12_000
L2_GRID = (50.0, 200.0, 800.0)
HOLDOUT_SHARE = 0.1
HOLDOUT_MIN_LIKES = 5
# An option search (EASE's l2, iALS's regularization) scores every user with held-out likes
# while users x items is within HOLDOUT_PAIRS; past it a seeded sample of
# max(HOLDOUT_MIN_USERS, HOLDOUT_PAIRS // items) users, so that each trial's exact top-k
# over the catalogue does not grow with the user count (docs/decisions/0052-top-k-at-scale.md).
HOLDOUT_PAIRS = 2e9
HOLDOUT_MIN_USERS = 2000


def binary_likes(data: Interactions) -> sp.csr_matrix:
    x = data.positives.tocsr().astype(np.float32)
    x.data[:] = 1.0
    x.eliminate_zeros()
    return x


def truncate_rows(dense: np.ndarray, keep: int) -> sp.csr_matrix:
    """The `keep` largest positive entries of each row of `dense` (0 keep: every positive
    entry), as CSR; equal values in column order."""
    n_rows, n_cols = dense.shape
    if keep <= 0 or keep >= n_cols:
        out = sp.csr_matrix(np.where(dense > 0, dense, 0).astype(np.float32))
        out.eliminate_zeros()
        return out
    cols = np.argsort(-dense, axis=1, kind="stable")[:, :keep]
    vals = np.take_along_axis(dense, cols, axis=1)
    rows = np.repeat(np.arange(n_rows), keep)
    mask = vals.ravel() > 0
    out = sp.csr_matrix(
        (vals.ravel()[mask].astype(np.float32), (rows[mask], cols.ravel()[mask])),
        shape=(n_rows, n_cols),
    )
    out.sort_indices()
    return out


def _holdout(x: sp.csr_matrix, share: float, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """A random `share` of each user's likes (users with >= HOLDOUT_MIN_LIKES; past
    HOLDOUT_PAIRS a sample of them) held out."""
    rng = np.random.default_rng(seed)
    counts = np.diff(x.indptr)
    rows = np.repeat(np.arange(x.shape[0]), counts)
    drawn = rng.random(x.nnz) < share
    eligible = counts >= HOLDOUT_MIN_LIKES
    cap = max(HOLDOUT_MIN_USERS, int(HOLDOUT_PAIRS // max(x.shape[1], 1)))
    if eligible.sum() > cap:
        sample = rng.choice(np.flatnonzero(eligible), cap, replace=False)
        eligible = np.zeros_like(eligible)
        eligible[sample] = True
    held = drawn & eligible[rows]
    keep, test = x.copy(), x.copy()
    keep.data = np.where(held, 0.0, 1.0).astype(np.float32)
    test.data = np.where(held, 1.0, 0.0).astype(np.float32)
    keep.eliminate_zeros()
    test.eliminate_zeros()
    return keep, test


def held_out_ndcg(neighbours: sp.csr_matrix, keep: sp.csr_matrix, test: sp.csr_matrix) -> float:
    """NDCG@20 of the item-item scores of `keep` (its likes excluded) against `test`."""
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    disc = 1.0 / np.log2(np.arange(2, 22))
    total = 0.0
    for lo in range(0, len(users), 1024):
        b = users[lo : lo + 1024]
        scores = (keep[b] @ neighbours).toarray()
        seen = keep[b].tocoo()
        scores[seen.row, seen.col] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :20]
        for r, u in enumerate(b):
            rel = test.indices[test.indptr[u] : test.indptr[u + 1]]
            hits = np.isin(top[r], rel)
            total += (hits * disc).sum() / disc[: min(20, len(rel))].sum()
    return total / max(len(users), 1)


@dataclass
class EASEConfig:
    l2: float = 0.0  # 0: chosen from L2_GRID on a held-out slice of the training likes
    max_items: int = EASE_MAX_ITEMS  # the solve's largest size (most liked items first)
    min_likes: int = 2  # items with fewer likes get no weights (one liker: no co-occurrence)
    neighbours: int = 200  # weights kept per item in the served table (0: all)
    seed: int = 0


def ease_weights(x: sp.csr_matrix, active: np.ndarray, l2: float) -> np.ndarray:
    """EASE's B over the `active` items (dense, diagonal zero)."""
    xa = x[:, active]
    gram = (xa.T @ xa).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b.astype(np.float32)


def _expand(b: sp.csr_matrix, active: np.ndarray, n: int) -> sp.csr_matrix:
    """A table over the `active` items as one over all `n` items."""
    coo = b.tocoo()
    out = sp.csr_matrix((coo.data, (active[coo.row], active[coo.col])), shape=(n, n))
    out.sort_indices()
    return out


class EASE:
    """EASE behind the item-item interface (`shortlist.models.base.ItemItemModel`)."""

    name = "ease"

    def __init__(self, config: EASEConfig | None = None) -> None:
        self.config = config or EASEConfig()
        self.neighbours = sp.csr_matrix((0, 0), dtype=np.float32)
        self.chosen_l2 = self.config.l2
        self.l2_trials: dict[float, float] = {}

    def active_items(self, x: sp.csr_matrix) -> np.ndarray:
        counts = np.asarray(x.sum(axis=0)).ravel()
        order = np.argsort(-counts, kind="stable")[: self.config.max_items]
        return np.sort(order[counts[order] >= self.config.min_likes])

    def _table(self, x: sp.csr_matrix, l2: float) -> sp.csr_matrix:
        active = self.active_items(x)
        if len(active) < 2:
            return sp.csr_matrix(x.shape[1:] * 2, dtype=np.float32)
        b = truncate_rows(ease_weights(x, active, l2), self.config.neighbours)
        return _expand(b, active, x.shape[1])

    def fit(self, data: Interactions) -> FitReport:
        start = time.perf_counter()
        x = binary_likes(data)
        l2 = self.config.l2
        # phases: one solve per l2 tried on held-out likes (when l2 is not given), the final one
        with bar("ease", (len(L2_GRID) if l2 <= 0 else 0) + 1) as advance:
            if l2 <= 0:
                keep, test = _holdout(x, HOLDOUT_SHARE, self.config.seed)
                self.l2_trials = {}
                for g in L2_GRID:
                    self.l2_trials[g] = held_out_ndcg(self._table(keep, g), keep, test)
                    advance()
                l2 = max(L2_GRID, key=lambda g: (self.l2_trials[g], -g))
            self.chosen_l2 = l2
            self.config = replace(self.config, l2=l2)  # what ran, as the bench prints it
            self.neighbours = self._table(x, l2)
        return FitReport(epochs=1, seconds=time.perf_counter() - start)


@dataclass
class ItemKNNConfig:
    neighbours: int = 200  # kept per item
    shrink: float = 10.0  # added to the cosine's denominator: damps pairs of rare items
    block: int = 2048  # rows of the item-item product computed at once


def knn_table(x: sp.csr_matrix, neighbours: int, shrink: float, block: int) -> sp.csr_matrix:
    """Shrunk-cosine item-item table, `neighbours` per row, diagonal zero, built block by
    block of rows with sparse products (each block cut to its top `neighbours` per row before
    the next; the blocks run on the current engine: in turn here, in parallel on Dask)."""
    counts = np.asarray(x.sum(axis=0)).ravel()
    n = x.shape[1]
    ranges = [(lo, min(n, lo + block)) for lo in range(0, n, block)]
    engine = compute.current()
    if engine.distributed:
        parts = engine.map(
            _knn_block, ranges, x=x, counts=counts, neighbours=neighbours, shrink=shrink
        )
    else:
        parts = []
        with bar("item-knn", len(ranges)) as advance:
            for rows in ranges:
                parts.append(_knn_block(rows, x, counts, neighbours, shrink))
                advance()
    out = sp.vstack(parts).tocsr() if parts else sp.csr_matrix((n, n), dtype=np.float32)
    out.sort_indices()
    return out


def _knn_block(
    rows: tuple[int, int], x: sp.csr_matrix, counts: np.ndarray, neighbours: int, shrink: float
) -> sp.csr_matrix:
    """Rows lo:hi of the shrunk-cosine table, top `neighbours` per row."""
    lo, hi = rows
    n = x.shape[1]
    norms = np.sqrt(counts)
    co = (x[:, lo:hi].T.tocsr() @ x).tocoo()
    r = co.row + lo
    keep = r != co.col
    r, cols = r[keep], co.col[keep]
    sim = co.data[keep] / (norms[r] * norms[cols] + shrink)
    return _top_per_row(r - lo, cols, sim.astype(np.float32), hi - lo, n, neighbours)


def _top_per_row(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, n_cols: int, keep: int
) -> sp.csr_matrix:
    """The `keep` largest entries per row of a COO triple (ties: smaller column first)."""
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.searchsorted(rows, np.arange(n_rows))
    place = np.arange(len(rows)) - starts[rows]
    mask = (place < keep) & (vals > 0)
    return sp.csr_matrix((vals[mask], (rows[mask], cols[mask])), shape=(n_rows, n_cols))


class ItemKNN:
    """Sparse item-kNN behind the item-item interface."""

    name = "item-knn"

    def __init__(self, config: ItemKNNConfig | None = None) -> None:
        self.config = config or ItemKNNConfig()
        self.neighbours = sp.csr_matrix((0, 0), dtype=np.float32)

    def fit(self, data: Interactions) -> FitReport:
        start = time.perf_counter()
        c = self.config
        self.neighbours = knn_table(binary_likes(data), c.neighbours, c.shrink, c.block)
        return FitReport(epochs=1, seconds=time.perf_counter() - start)


@dataclass
class ItemItemConfig:
    """EASE where the catalogue's solvable items fit the cap, item-kNN above it."""

    max_items: int = EASE_MAX_ITEMS
    min_likes: int = 2
    neighbours: int = 200
    l2: float = 0.0
    shrink: float = 10.0
    seed: int = 0


class ItemItem:
    """The item-item source `shortlist train` serves: EASE under the cap, kNN above."""

    name = "item-item"

    def __init__(self, config: ItemItemConfig | None = None) -> None:
        self.config = config or ItemItemConfig()
        self.neighbours = sp.csr_matrix((0, 0), dtype=np.float32)
        self.kind = ""

    def fit(self, data: Interactions) -> FitReport:
        c = self.config
        x = binary_likes(data)
        counts = np.asarray(x.sum(axis=0)).ravel()
        ease = EASE(EASEConfig(c.l2, c.max_items, c.min_likes, c.neighbours, c.seed))
        inner: EASE | ItemKNN = ease
        if int((counts >= c.min_likes).sum()) > c.max_items:
            inner = ItemKNN(ItemKNNConfig(neighbours=c.neighbours, shrink=c.shrink))
        report = inner.fit(data)
        self.kind, self.neighbours = inner.name, inner.neighbours
        return report
