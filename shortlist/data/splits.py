"""Train/valid/test splits of the likes; dislikes stay with training (never evaluated).

Every split partitions the positive matrix: each (user, item) like lands in exactly one
part, so no test like can leak into training.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from shortlist.data.interactions import Interactions, rank_in_user
from shortlist.data.loaders import SplitData


def select_likes(data: Interactions, mask: np.ndarray) -> Interactions:
    """The likes selected by `mask` (aligned with positives.data), times and context kept."""
    pos = data.positives.tocsr()
    rows = np.repeat(np.arange(pos.shape[0]), np.diff(pos.indptr))
    m = sp.csr_matrix(
        (pos.data[mask], (rows[mask], pos.indices[mask])), shape=pos.shape, dtype=np.float32
    )
    m.sort_indices()
    part = data.with_positives(m)
    if data.timestamps is not None:
        # rows/indices of pos are sorted, so the masked order matches the new CSR order.
        part.timestamps = np.asarray(data.timestamps)[mask]
    if data.sequence is not None:
        part.sequence = np.asarray(data.sequence)[mask]
    part.context = {key: np.asarray(values)[mask] for key, values in data.context.items()}
    return part


def _assign(data: Interactions, part_of: np.ndarray, name: str) -> SplitData:
    """0 = train, 1 = valid, 2 = test, per like."""
    train = select_likes(data, part_of == 0)
    valid = select_likes(data, part_of == 1) if (part_of == 1).any() else None
    test = select_likes(data, part_of == 2)
    return SplitData(name, train, valid, test)


def temporal_leave_last_out(
    data: Interactions, n_test: int = 1, n_valid: int = 1, min_train: int = 1, name: str = ""
) -> SplitData:
    """Per user, the latest `n_test` likes go to test and the `n_valid` before them to valid.

    Users with fewer than `min_train + n_valid + n_test` likes keep everything in train.
    Ties in time are broken by item index so the split is deterministic.
    """
    pos = data.positives.tocsr()
    pos.sort_indices()
    times = (
        np.asarray(data.timestamps, np.int64)
        if data.timestamps is not None
        else np.zeros(pos.nnz, np.int64)
    )
    part_of = np.zeros(pos.nnz, np.int8)
    need = min_train + n_valid + n_test
    for u in range(pos.shape[0]):
        lo, hi = pos.indptr[u], pos.indptr[u + 1]
        if hi - lo < need:
            continue
        order = lo + np.lexsort((pos.indices[lo:hi], times[lo:hi]))
        part_of[order[len(order) - n_test :]] = 2
        if n_valid:
            part_of[order[len(order) - n_test - n_valid : len(order) - n_test]] = 1
    return _assign(data, part_of, name or "temporal")


def time_slice_holdout(
    data: Interactions, test_share: float = 0.1, valid_share: float = 0.1, name: str = ""
) -> SplitData:
    """The latest `test_share` of the likes in time go to test, the `valid_share` before
    them to valid, the rest to train: the future is never trained on. Needs timestamps."""
    if data.timestamps is None:
        raise ValueError("a time-slice holdout needs timestamps")
    times = np.asarray(data.timestamps, np.float64)
    test_from = np.quantile(times, 1.0 - test_share)
    valid_from = np.quantile(times, 1.0 - test_share - valid_share)
    part_of = np.where(times >= test_from, 2, np.where(times >= valid_from, 1, 0)).astype(np.int8)
    if not (part_of == 0).any() or not (part_of == 2).any():
        raise ValueError("too few distinct times to hold out the latest slice")
    return _assign(data, part_of, name or "events")


def latest_share_mask(data: Interactions, share: float = 0.2, min_likes: int = 5) -> np.ndarray:
    """Per user with at least `min_likes` likes, their latest `share` of them (by
    `Interactions.recency`, ties by item index), as a mask aligned with positives.data."""
    order = data.recency()
    if order is None:
        raise ValueError("the likes have no order (neither timestamps nor sequence)")
    pos = data.positives.tocsr()
    pos.sort_indices()
    counts = np.repeat(np.diff(pos.indptr), np.diff(pos.indptr))
    rank_from_newest = counts - rank_in_user(pos, order) + 1
    n_held = np.where(counts >= min_likes, np.round(counts * share), 0)
    return rank_from_newest <= n_held


def latest_share_holdout(
    data: Interactions, share: float = 0.2, min_likes: int = 5, name: str = ""
) -> SplitData:
    """`latest_share_mask`'s likes go to test, the rest to train; no valid part.

    A validation split made of training data alone that looks ahead in time as a test split
    of later likes does; a random slice of training likes does not.
    """
    part_of = np.where(latest_share_mask(data, share, min_likes), 2, 0).astype(np.int8)
    return _assign(data, part_of, name or "latest-share")


def random_holdout(
    data: Interactions,
    test_fraction: float = 0.2,
    valid_fraction: float = 0.1,
    seed: int = 0,
    min_train: int = 1,
    name: str = "",
) -> SplitData:
    """Per user, a random share of likes to test and valid; at least `min_train` stay in train."""
    rng = np.random.default_rng(seed)
    pos = data.positives.tocsr()
    pos.sort_indices()
    part_of = np.zeros(pos.nnz, np.int8)
    for u in range(pos.shape[0]):
        lo, hi = pos.indptr[u], pos.indptr[u + 1]
        n = hi - lo
        n_test = int(round(n * test_fraction))
        n_valid = int(round(n * valid_fraction))
        spare = max(0, n - min_train)
        n_test = min(n_test, spare)
        n_valid = min(n_valid, spare - n_test)
        perm = lo + rng.permutation(n)
        part_of[perm[:n_test]] = 2
        part_of[perm[n_test : n_test + n_valid]] = 1
    return _assign(data, part_of, name or "random")


def check_no_leakage(split: SplitData) -> None:
    """Raise if any like appears in two parts (used by tests and the bench as a guard)."""
    parts = [p.positives for p in (split.train, split.valid, split.test) if p is not None]
    for a in range(len(parts)):
        for b in range(a + 1, len(parts)):
            overlap = parts[a].multiply(parts[b]).nnz
            if overlap:
                raise ValueError(f"{overlap} likes appear in two splits")
