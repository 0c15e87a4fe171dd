"""Several candidate sources fused by weighted reciprocal rank into one shortlist.

An item's fused score is sum over sources s of w_s / (k + rank_s(item) + 1) (rank from 0;
sources that did not propose it add nothing). Ranks, not scores: the sources' scores live
on unrelated scales (dot products, EASE weights, like counts), and RRF needs no calibration.
Equal fused scores go in item-index order, so the result is a function of the inputs alone.
Sources are named (`spectral`, `item-item`, `popularity`, ...): a new source plugs in by
name, and each fused item carries the sources that proposed it and its rank in each.
Weights and k are chosen on held-out likes (`choose_fusion`): valid under protocol B, the
ranker's label likes in `shortlist train`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from shortlist.models.progress import track

RRF_K = (10.0, 60.0)
WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0)
CHOICE_USERS = 5000  # users the weight search scores at most (a seeded random subset)


@dataclass(frozen=True)
class FusionConfig:
    weights: dict[str, float] = field(default_factory=dict)  # source -> weight; 0: unused
    k: float = 60.0
    primary: str = "vectors"  # the source served by the vector index (the bundle's model)
    depth: int = 200  # items each source contributes (the same offline and served)

    def to_json(self) -> dict:
        return {
            "weights": dict(self.weights),
            "k": self.k,
            "primary": self.primary,
            "depth": self.depth,
        }

    @classmethod
    def from_json(cls, value: Mapping | None) -> FusionConfig | None:
        if not value:
            return None
        weights = {str(s): float(w) for s, w in value["weights"].items()}
        primary = str(value.get("primary", "vectors"))
        return cls(weights, float(value["k"]), primary, int(value.get("depth", 200)))

    @property
    def used(self) -> list[str]:
        return [s for s, w in self.weights.items() if w > 0]


@dataclass
class Fused:
    """Fused lists (one row per user, best first, -1 padded) and each item's rank in every
    source (-1: that source did not propose it)."""

    items: np.ndarray
    scores: np.ndarray
    ranks: dict[str, np.ndarray]

    def sources(self, row: int) -> list[tuple[str, ...]]:
        """Per fused item of `row`, the sources that proposed it (in fusion order)."""
        n = int((self.items[row] >= 0).sum())  # a row's padding is at its end
        bits = np.zeros(n, np.uint8)
        for j, r in enumerate(self.ranks.values()):
            bits |= (r[row, :n] >= 0).astype(np.uint8) << j
        return source_sets(bits, list(self.ranks))

    def source_bits(self) -> np.ndarray:
        """users x n uint8: bit j set where source j (in `ranks` order) proposed the item."""
        bits = np.zeros(self.items.shape, np.uint8)
        for j, r in enumerate(self.ranks.values()):
            bits |= (r >= 0).astype(np.uint8) << j
        return bits


def source_sets(bits: np.ndarray, names: Sequence[str]) -> list[tuple[str, ...]]:
    """Per entry of `bits` (bit j: source `names[j]` proposed the item), the sources' names;
    one tuple per set of sources, shared by the items with that set (a request's hot path)."""
    flags = np.asarray(bits).tolist()
    sets = {b: tuple(s for j, s in enumerate(names) if b >> j & 1) for b in set(flags)}
    return [sets[b] for b in flags]


def fuse(lists: Mapping[str, np.ndarray], config: FusionConfig, n: int) -> Fused:
    """Weighted RRF of ranked lists (source -> users x width item indices, best first, -1
    padded; all with the same rows) into the top `n` per row."""
    used = [s for s in config.used if s in lists]
    if not used:
        raise ValueError(f"no source to fuse: weights {config.weights}, lists {sorted(lists)}")
    return FusionGrid({s: lists[s] for s in used}).fused(config, n)


class FusionGrid:
    """Lists laid out for fusing: each row's candidates (the union of its sources' items,
    in item order) and every source's rank as rows x candidates arrays, so that a
    weighting's top `n` is a weighted sum and a partial sort per row. Built once, it fuses
    the same lists under many weightings (the weight search)."""

    def __init__(self, lists: Mapping[str, np.ndarray]) -> None:
        names = list(lists)
        n_rows = lists[names[0]].shape[0]
        n_items = max(1, 1 + max(int(v.max(initial=-1)) for v in lists.values()))
        keys, ranks = [], []
        for s in names:
            rows, r = np.nonzero(lists[s] >= 0)
            keys.append(rows.astype(np.int64) * n_items + lists[s][rows, r])
            ranks.append(r)
        uniq, inverse = np.unique(np.concatenate(keys), return_inverse=True)
        rows = uniq // n_items
        place = np.arange(len(uniq)) - np.searchsorted(rows, rows)
        width = int(place.max(initial=-1)) + 1
        self.items = np.full((n_rows, width), -1, np.int64)
        self.items[rows, place] = uniq % n_items
        self.ranks: dict[str, np.ndarray] = {}
        bounds = np.cumsum([0] + [len(k) for k in keys])
        for s, lo, hi, r in zip(names, bounds[:-1], bounds[1:], ranks):
            at = inverse.ravel()[lo:hi]
            self.ranks[s] = np.full((n_rows, width), -1, np.int32)
            self.ranks[s][rows[at], place[at]] = r

    def top(self, config: FusionConfig, n: int) -> np.ndarray:
        """The fused items alone (`fused(config, n).items`)."""
        rows, cols, place, _ = self._best(config, n)
        out = np.full((len(self.items), n), -1, np.int64)
        out[rows, place] = self.items[rows, cols]
        return out

    def fused(self, config: FusionConfig, n: int) -> Fused:
        """Each row's top `n` with its fused scores and every used source's ranks."""
        rows, cols, place, score = self._best(config, n)
        shape = (len(self.items), n)
        items = np.full(shape, -1, np.int64)
        items[rows, place] = self.items[rows, cols]
        scores = np.zeros(shape, np.float32)
        scores[rows, place] = score
        ranks = {}
        for s in self._used(config):
            ranks[s] = np.full(shape, -1, np.int32)
            ranks[s][rows, place] = self.ranks[s][rows, cols]
        return Fused(items, scores, ranks)

    def _used(self, config: FusionConfig) -> list[str]:
        return [s for s in config.used if s in self.ranks]

    def _best(
        self, config: FusionConfig, n: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(row, candidate column, place in the row's top n, fused score) of each kept entry.
        The terms are summed in the weights' order; equal scores go in item order."""
        score = np.zeros(self.items.shape)
        proposed = np.zeros(self.items.shape, bool)
        for s in self._used(config):
            has = self.ranks[s] >= 0
            score += np.where(has, config.weights[s] / (config.k + self.ranks[s] + 1.0), 0.0)
            proposed |= has
        score[~proposed] = -np.inf
        if n <= 0 or not score.size:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty, np.zeros(0)
        # Only the entries at or above each row's n-th best score can be in its top n (ties
        # at that score included): those few are sorted by score, then candidate order.
        cut = min(n, score.shape[1])
        nth = np.partition(score, score.shape[1] - cut, axis=1)[:, score.shape[1] - cut]
        rows, cols = np.nonzero((score >= nth[:, None]) & proposed)
        order = np.lexsort((cols, -score[rows, cols], rows))
        rows, cols = rows[order], cols[order]
        place = np.arange(len(rows)) - np.searchsorted(rows, rows)
        keep = place < n
        rows, cols = rows[keep], cols[keep]
        return rows, cols, place[keep], score[rows, cols]


def ndcg20(top: np.ndarray, labels: sp.csr_matrix, rows: np.ndarray) -> float:
    """Mean NDCG@20 of `top` (one row per user of `rows`) against the users' `labels`,
    over the users with labels."""
    sub = labels.tocsr()[np.asarray(rows, np.int64)]
    counts = np.diff(sub.indptr)
    top = np.asarray(top)[:, :20]
    width = max(int(sub.shape[1]), int(top.max(initial=-1)) + 1, 1)
    label_keys = np.repeat(np.arange(sub.shape[0]), counts).astype(np.int64) * width
    label_keys += sub.indices
    top_keys = np.arange(len(top))[:, None].astype(np.int64) * width + top
    hits = np.isin(top_keys, label_keys) & (top >= 0)
    disc = 1.0 / np.log2(np.arange(2, 22))
    ideal = np.concatenate([[0.0], np.cumsum(disc)])[np.minimum(counts, 20)]
    has = counts > 0
    dcg = (hits * disc[: hits.shape[1]]).sum(axis=1)
    return float((dcg[has] / ideal[has]).sum() / max(int(has.sum()), 1))


def choose_fusion(
    lists: Mapping[str, np.ndarray],
    labels: sp.csr_matrix,
    users: np.ndarray,
    primary: str,
    budget_s: float = 120.0,
    seed: int = 0,
    depth: int = 200,
) -> tuple[FusionConfig, dict]:
    """The weights and k whose fused top-20 has the best NDCG@20 on `labels` (rows: the
    `users`, aligned with the lists' rows), `primary` at weight 1, every other source from
    WEIGHT_GRID; the grid in a fixed order until `budget_s` CPU seconds run out. Ties: the earlier
    (smaller weights) setting."""
    labels = labels.tocsr()
    rows = np.arange(len(users))
    if len(rows) > CHOICE_USERS:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), CHOICE_USERS, replace=False))
    grid_lists = FusionGrid({s: v[rows] for s, v in lists.items()})
    others = sorted(s for s in lists if s != primary)
    best, best_score, trials = None, -1.0, []
    # CPU seconds of this process, as the tuner's budget: a busy host gets the same choice
    start = time.process_time()
    grid = [(k, ws) for k in RRF_K for ws in itertools.product(WEIGHT_GRID, repeat=len(others))]
    for k, ws in track(grid, "fusion choice"):
        if trials and time.process_time() - start > budget_s:
            break
        cfg = FusionConfig({primary: 1.0, **dict(zip(others, ws))}, k, primary, depth)
        score = ndcg20(grid_lists.top(cfg, 20), labels, users[rows])
        trials.append({"weights": cfg.weights, "k": k, "ndcg@20": round(score, 5)})
        if score > best_score + 1e-12:
            best, best_score = cfg, score
    report = {
        "chosen": best.to_json(),
        "ndcg@20": round(best_score, 5),
        "trials": len(trials),
        "users": int(len(rows)),
        "cpu_seconds": round(time.process_time() - start, 2),
    }
    return best, report


def item_item_scores(
    neighbours: sp.csr_matrix,
    history: np.ndarray,
    exclude: np.ndarray,
    n: int,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One user's item-item top-`n` at request time: the sum of the neighbour rows of the
    items in `history` (each times its entry of `weights`, 1 by default), `exclude` left
    out, positive scores only; equal scores in item order."""
    if not len(history):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if weights is None:
        weights = np.ones(len(history), neighbours.dtype)
    summed = np.asarray(neighbours[np.asarray(history, np.int64)].T @ weights)
    summed[np.asarray(exclude, np.int64)] = 0.0
    cand = np.flatnonzero(summed > 0)
    order = np.lexsort((cand, -summed[cand]))[:n]
    return cand[order].astype(np.int64), summed[cand[order]].astype(np.float32)
