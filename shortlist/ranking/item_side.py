"""What the ranking features read of the items: popularity, co-occurrence neighbours, the
like-order (sequence) neighbours, attributes and context lifts, built once per bundle."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from shortlist.ranking.context import ContextCounts, context_lift

HALF_LIFE_DAYS = 30.0
# Item-item cosines kept per item: its strongest co-occurring items, at least
# COOC_NEIGHBOURS and as many as COOC_ENTRIES allows over the catalogue (exact for items
# with fewer). A request looks up its recent likes' rows instead of multiplying the
# user-item matrix, which costs milliseconds a request; a large catalogue's full cosine
# matrix is too big to keep, so its rows are cut. Small catalogues keep every row whole:
# cutting rows lowered the ranking lift there (docs/decisions/0006-ranking-service-speed.md).
COOC_NEIGHBOURS = 256
COOC_ENTRIES = 10_000_000
# Up to this many items the cosines are also held dense (items x items float32: 16 MB at
# most), where a request's lookup is one fancy index, several times faster than the sparse
# rows (docs/decisions/0006-ranking-service-speed.md).
COOC_DENSE_MAX_ITEMS = 2048
# Sequence co-occurrence (`sequence_neighbours`): two likes of one user count when they are
# at most SEQUENCE_WINDOW places apart in the user's order, weighted 1 / distance; each row
# is normalised to sum 1. A request sums the rows of its recent likes (newest first)
# weighted SEQUENCE_DECAY ** age. Window and decay were chosen on Gowalla's train+valid
# alone, never the test split: wider windows helped up to 10
# (docs/decisions/0009-like-order-cooccurrence.md).
SEQUENCE_WINDOW = 10
SEQUENCE_DECAY = 0.9


@dataclass
class ItemSide:
    """Per-item data the features read; built from training likes by `item_side`."""

    vectors: np.ndarray  # items x d retrieval vectors
    popularity: np.ndarray  # training like counts
    log_recent_popularity: np.ndarray
    cooc: sp.csr_matrix  # items x items cosines of co-occurrence, top neighbours_kept a row
    attributes: np.ndarray  # items x A
    attribute_names: list[str]
    user_attribute_names: list[str]
    # free-form context key -> (value -> row, values x items context_lift)
    context: dict[str, tuple[dict[str, int], np.ndarray]] = field(default_factory=dict)
    cooc_dense: np.ndarray | None = None  # `cooc` as an array, on small catalogues
    # items x items `sequence_neighbours` (None: the likes had no order) and its dense form
    sequence: sp.csr_matrix | None = None
    sequence_dense: np.ndarray | None = None
    # the item-item retrieval source's neighbour table (None: the bundle has none) and its
    # dense form on small catalogues
    item_item: sp.csr_matrix | None = None
    item_item_dense: np.ndarray | None = None


def recent_popularity(
    likes: sp.csr_matrix, timestamps: np.ndarray | None, half_life_days: float = HALF_LIFE_DAYS
) -> np.ndarray:
    """Likes per item weighted by exp decay from the newest like (NaN without timestamps)."""
    if timestamps is None or len(timestamps) == 0:
        return np.full(likes.shape[1], np.nan, np.float32)
    coo = likes.tocoo()
    age_days = (float(np.max(timestamps)) - np.asarray(timestamps, np.float64)) / 86400.0
    weights = np.exp2(-age_days / half_life_days)
    return np.bincount(coo.col, weights=weights, minlength=likes.shape[1]).astype(np.float32)


def item_side(
    likes: sp.csr_matrix,
    vectors: np.ndarray,
    popularity: np.ndarray,
    recent: np.ndarray,
    attributes: np.ndarray,
    attribute_names: list[str],
    user_attribute_names: list[str] | None = None,
    counts: ContextCounts | None = None,
    sequence: sp.csr_matrix | None = None,
    item_item: sp.csr_matrix | None = None,
    cooc: sp.csr_matrix | None = None,
) -> ItemSide:
    """`cooc`: `item_neighbours(likes)` when the bundle stored it (a product over every
    user's likes, too slow to redo at each start of a service at millions of users)."""
    cooc = item_neighbours(likes) if cooc is None else cooc
    return ItemSide(
        vectors=vectors,
        popularity=np.asarray(popularity, np.float64),
        log_recent_popularity=np.log1p(recent).astype(np.float32),
        cooc=cooc,
        cooc_dense=_dense_if_small(cooc),
        sequence=sequence,
        sequence_dense=None if sequence is None else _dense_if_small(sequence),
        item_item=item_item,
        item_item_dense=None if item_item is None else _dense_if_small(item_item),
        attributes=attributes.astype(np.float32),
        attribute_names=list(attribute_names),
        user_attribute_names=list(user_attribute_names or []),
        context={
            key: ({v: n for n, v in enumerate(values)}, context_lift(table))
            for key, (values, table) in sorted((counts or {}).items())
        },
    )


def _dense_if_small(matrix: sp.csr_matrix) -> np.ndarray | None:
    return matrix.toarray() if matrix.shape[1] <= COOC_DENSE_MAX_ITEMS else None


def neighbours_kept(n_items: int) -> int:
    return max(COOC_NEIGHBOURS, COOC_ENTRIES // max(n_items, 1))


def item_neighbours(likes: sp.csr_matrix, keep: int | None = None) -> sp.csr_matrix:
    """Items x items cosine co-occurrence |U(i) & U(j)| / sqrt(|U(i)| |U(j)|), each row cut
    to its `keep` largest entries (the item itself included; default `neighbours_kept`)."""
    keep = neighbours_kept(likes.shape[1]) if keep is None else keep
    x = likes.tocsr().astype(np.float32)
    x.data[:] = 1.0
    norms = np.sqrt(np.maximum(np.asarray(x.sum(axis=0)).ravel(), 1.0))
    x = (x @ sp.diags(1.0 / norms)).tocsc()
    return _keep_largest((x.T @ x).tocsr(), keep)


def sequence_neighbours(
    likes: sp.csr_matrix,
    order: np.ndarray | None,
    window: int = SEQUENCE_WINDOW,
    keep: int | None = None,
) -> sp.csr_matrix | None:
    """Items x items: Σ 1 / distance over pairs of one user's likes at most `window` places
    apart in `order` (aligned with likes.data; None: unordered likes, no matrix), symmetric,
    each row normalised to sum 1, then cut to its `keep` largest (default
    `neighbours_kept`)."""
    if order is None or window < 1:
        return None
    csr = likes.tocsr()
    n = csr.shape[1]
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    by_order = np.lexsort((csr.indices, np.asarray(order, np.float64), rows))
    items, owner = csr.indices[by_order], rows[by_order]
    first, second, weight = [], [], []
    for gap in range(1, window + 1):
        same = owner[gap:] == owner[:-gap]
        first.append(items[:-gap][same])
        second.append(items[gap:][same])
        weight.append(np.full(int(same.sum()), 1.0 / gap, np.float32))
    a, b = np.concatenate(first), np.concatenate(second)
    # both directions at once; repeated pairs are summed. Likes are unique per user, so no
    # item is paired with itself.
    pairs = sp.csr_matrix(
        (np.tile(np.concatenate(weight), 2), (np.r_[a, b], np.r_[b, a])), shape=(n, n)
    )
    totals = np.asarray(pairs.sum(axis=1)).ravel()
    pairs = (sp.diags(1.0 / np.maximum(totals, 1e-12)) @ pairs).tocsr()
    return _keep_largest(pairs, neighbours_kept(n) if keep is None else keep)


def _keep_largest(matrix: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Each row cut to its `keep` largest entries, indices sorted, float32."""
    lengths = np.diff(matrix.indptr)
    if lengths.max(initial=0) > keep:
        mask = np.ones(matrix.nnz, bool)
        for r in np.flatnonzero(lengths > keep):
            lo, hi = matrix.indptr[r], matrix.indptr[r + 1]
            mask[lo:hi] = False
            mask[lo + np.argpartition(-matrix.data[lo:hi], keep - 1)[:keep]] = True
        rows = np.repeat(np.arange(matrix.shape[0]), lengths)[mask]
        matrix = sp.csr_matrix(
            (matrix.data[mask], (rows, matrix.indices[mask])), shape=matrix.shape
        )
    matrix.sort_indices()
    return matrix.astype(np.float32)
