"""Ranking features, defined once and used both offline (training the ranker) and online.

Every feature row describes one (user, candidate, request context) triple. The same
function assembles rows in the offline pipeline and in the ranking service, which is what
keeps offline and online scores equal. Missing signals are NaN (LightGBM's missing value),
never a made-up default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

# Features also given relative to the shortlist: value over the list's largest (NaN when
# that is not positive) and place among the list's values (0 = largest; ties share the
# smaller place). The raw values move with how much the user has liked and where they
# are; a list-relative one says which candidates stand out for this request. Chosen on
# Gowalla's train+valid alone (latest 20% of each user as the test, never the test split):
# the ranker's NDCG@20 lift over retrieval went +5.4% -> +5.9% with 12,000 lists.
LIST_RELATIVE = ("seq_cooc_likes", "cooc_sum_likes", "sim_recent_likes", "cooc_max_likes")
BASE_FEATURES = [
    "retrieval_rank",
    # score over the shortlist's best: free of the model's score scale, which moves with the
    # amount of training data (the ranker is fit on a model of less data than it serves)
    "retrieval_score_ratio",
    "item_log_popularity",  # training likes plus live ones (none offline)
    "item_log_recent_popularity",  # time-decayed like count (NaN without timestamps)
    "user_log_activity",
    "cooc_sum_likes",  # item-item cosine co-occurrence with the user's recent likes
    "cooc_max_likes",
    "cooc_second_likes",
    "cooc_max_dislikes",
    # co-occurrence within a few places of each other in users' like order (check-ins one
    # after another are near each other), with the user's recent likes, newest weighted most
    "seq_cooc_likes",
    "sim_recent_likes",  # embedding similarity to the centroid of recent likes
    "max_sim_dislikes",
    "attr_affinity",  # cosine of item attributes with the user's liked-attribute profile
    # the same signals relative to the rest of the shortlist (see LIST_RELATIVE)
    *[f"{name}_{kind}" for name in LIST_RELATIVE for kind in ("list_ratio", "list_rank")],
    "ctx_hour",
    "ctx_day_of_week",
    "ctx_device",
]
_COLUMN = {name: i for i, name in enumerate(BASE_FEATURES)}
RANK_COLUMN = _COLUMN["retrieval_rank"]  # ordering by it is the retrieval order
DEVICES = ("ios", "android", "web", "tv")
HALF_LIFE_DAYS = 30.0
RECENT_ITEMS = 50  # likes and dislikes (newest first) the similarity features look at
# Item-item cosines kept per item: its strongest co-occurring items, at least
# COOC_NEIGHBOURS and as many as COOC_ENTRIES allows over the catalogue (exact for items
# with fewer). A request looks up its recent likes' rows instead of multiplying the
# user-item matrix (Gowalla: ~2 ms a request; its full cosine matrix would hold 42M
# entries, so 256 a row). Small catalogues keep every row whole: on MovieLens-100K a cut
# to 256 lowered the two-stage NDCG@20 lift from +17.9% to +13.6%.
COOC_NEIGHBOURS = 256
COOC_ENTRIES = 10_000_000
# Up to this many items the cosines are also held dense (items x items float32: 16 MB at
# most), where a request's lookup is one fancy index: 200 candidates x 30 likes on the
# built-in 600-item catalogue took 50 us instead of the sparse rows' 410-480 us.
COOC_DENSE_MAX_ITEMS = 2048
# Sequence co-occurrence (`sequence_neighbours`): two likes of one user count when they are
# at most SEQUENCE_WINDOW places apart in the user's order, weighted 1 / distance; each row
# is normalised to sum 1. A request sums the rows of its recent likes (newest first)
# weighted SEQUENCE_DECAY ** age. Chosen on Gowalla's train+valid alone (fit on all but each
# user's latest 20%, scored on those; the served spectral order blended with the feature):
# NDCG@20 +4.7% with a window of 3, +5.2% with 5, +5.5% with 10, at decay .9 over 50 likes.
SEQUENCE_WINDOW = 10
SEQUENCE_DECAY = 0.9
# Free-form context: a key the training likes record (Interactions.context) becomes the
# feature ctx_<key>_item_lift, log P(value | item) - log P(value), with P(value | item)
# pulled towards P(value) by CONTEXT_PRIOR pseudo-likes (0 for an item without likes). Its
# CONTEXT_VALUES most frequent values are kept; any other value carries no feature (NaN).
KNOWN_CONTEXT = ("hour", "day_of_week", "device")
CONTEXT_VALUES = 64
CONTEXT_PRIOR = 10.0
_CONTEXT_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


@dataclass(frozen=True)
class RequestContext:
    """Parsed request context; NaN marks what the client did not send."""

    hour: float = math.nan
    day_of_week: float = math.nan
    device: float = math.nan
    extra: Mapping[str, str] = field(default_factory=dict)  # free-form keys and their values


def parse_context(context: Mapping[str, str]) -> RequestContext:
    """Validate the known context keys; ValueError names the bad key. Other keys are kept
    as free-form: a bundle whose training likes recorded a key turns it into a feature,
    any other key carries none."""
    hour = _int_in(context, "hour", 0, 23)
    dow = _int_in(context, "day_of_week", 0, 6)
    device = math.nan
    if "device" in context:
        name = context["device"].strip().lower()
        device = float(DEVICES.index(name)) if name in DEVICES else float(len(DEVICES))
    extra = {k: v for k, v in context.items() if k not in KNOWN_CONTEXT}
    return RequestContext(hour=hour, day_of_week=dow, device=device, extra=extra)


def _int_in(context: Mapping[str, str], key: str, lo: int, hi: int) -> float:
    if key not in context:
        return math.nan
    raw = context[key]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"context[{key!r}] must be an integer {lo}..{hi}, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"context[{key!r}] must be in {lo}..{hi}, got {value}")
    return float(value)


def context_at(timestamp_s: float, extra: Mapping[str, str] | None = None) -> RequestContext:
    """The context a request at this unix time would carry (used offline)."""
    days, seconds = divmod(int(timestamp_s), 86400)
    return RequestContext(
        hour=float(seconds // 3600), day_of_week=float((days + 3) % 7), extra=extra or {}
    )


ContextCounts = dict[str, tuple[list[str], np.ndarray]]  # key -> (values, values x items likes)


def context_counts(likes: sp.csr_matrix, context: Mapping[str, np.ndarray]) -> ContextCounts:
    """Per free-form key (sorted): its most frequent recorded values and each value's likes
    per item. `context` is aligned with the data of `likes` (sorted CSR); "" = not recorded."""
    cols = likes.tocsr().indices
    n_items = likes.shape[1]
    out: ContextCounts = {}
    for key in sorted(context):
        if key in KNOWN_CONTEXT or not _CONTEXT_KEY.fullmatch(key):
            raise ValueError(
                f"context key {key!r} must match [A-Za-z0-9_]{{1,64}} and not be "
                f"one of {', '.join(KNOWN_CONTEXT)}"
            )
        values = np.asarray(context[key]).astype(str)
        recorded = values != ""
        names, codes, counts = np.unique(values[recorded], return_inverse=True, return_counts=True)
        kept = np.argsort(-counts, kind="stable")[:CONTEXT_VALUES]
        row_of = np.full(len(names), -1, np.int64)
        row_of[kept] = np.arange(len(kept))
        rows = row_of[codes]
        at = rows >= 0
        flat = rows[at] * n_items + cols[recorded][at]
        table = np.bincount(flat, minlength=len(kept) * n_items).astype(np.float32)
        out[key] = ([str(names[k]) for k in kept], table.reshape(len(kept), n_items))
    return out


def context_lift(counts: np.ndarray) -> np.ndarray:
    """log P(value | item) - log P(value), values x items (see CONTEXT_PRIOR)."""
    overall = counts.sum(axis=1) / max(float(counts.sum()), 1.0)
    per_item = counts.sum(axis=0)
    p = (counts + CONTEXT_PRIOR * overall[:, None]) / (per_item + CONTEXT_PRIOR)[None, :]
    return (np.log(p) - np.log(overall)[:, None]).astype(np.float32)


@dataclass
class UserSignals:
    """What the ranker knows of the user: how active, what they liked/disliked lately, and
    their attributes (NaN-filled when unknown)."""

    activity: float
    recent_likes: np.ndarray  # item indices, newest first
    recent_dislikes: np.ndarray  # item indices
    attributes: np.ndarray | None = None


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
) -> ItemSide:
    cooc = item_neighbours(likes)
    return ItemSide(
        vectors=vectors,
        popularity=np.asarray(popularity, np.float64),
        log_recent_popularity=np.log1p(recent).astype(np.float32),
        cooc=cooc,
        cooc_dense=_dense_if_small(cooc),
        sequence=sequence,
        sequence_dense=None if sequence is None else _dense_if_small(sequence),
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


def row_items(matrix: sp.csr_matrix, user: int) -> np.ndarray:
    """The column indices of one CSR row, as `matrix[user].indices` (without building a
    1-row matrix: ~30 us a request)."""
    return matrix.indices[matrix.indptr[user] : matrix.indptr[user + 1]]


def recent_in_order(recent: sp.csr_matrix, user: int) -> np.ndarray:
    """The user's row of a `recent_likes` matrix (newest first: data holds the age rank)."""
    lo, hi = recent.indptr[user], recent.indptr[user + 1]
    return recent.indices[lo:hi][np.argsort(recent.data[lo:hi], kind="stable")]


def feature_names(
    item_attribute_names: list[str],
    user_attribute_names: list[str],
    context_keys: list[str] | tuple[str, ...] = (),
) -> list[str]:
    return (
        BASE_FEATURES
        + [f"item_{n}" for n in item_attribute_names]
        + [f"user_{n}" for n in user_attribute_names]
        + [f"ctx_{key}_item_lift" for key in sorted(context_keys)]
    )


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


def _positions(n_items: int, candidates: np.ndarray) -> np.ndarray:
    """Each item's place in `candidates`, -1 for the others (int16 while it fits: a smaller
    table to fill and to look up)."""
    dtype = np.int16 if len(candidates) <= np.iinfo(np.int16).max else np.int32
    where = np.full(n_items, -1, dtype)
    where[candidates] = np.arange(len(candidates))
    return where


def _entries(
    c: sp.csr_matrix,
    dense: np.ndarray | None,
    rows: np.ndarray,
    candidates: np.ndarray,
    where: np.ndarray,
) -> np.ndarray:
    """c[rows][:, candidates] as an array (0 beyond a row's kept neighbours), from `dense`
    when held (small catalogues); `where` is `_positions(c.shape[1], candidates)`."""
    if dense is not None:
        return dense[np.ix_(rows, candidates)]
    starts = c.indptr[rows]
    lengths = c.indptr[rows + 1] - starts
    first = np.cumsum(lengths) - lengths  # where each row's entries start in `at`
    at = np.arange(lengths.sum()) + np.repeat(starts - first, lengths)
    col = where[c.indices[at]]
    hit = np.flatnonzero(col >= 0)
    n = len(candidates)
    out = np.zeros(len(rows) * n, np.float32)
    out[np.repeat(np.arange(len(rows)) * n, lengths)[hit] + col[hit]] = c.data[at[hit]]
    return out.reshape(len(rows), n)


def _fill_over_largest(rows: np.ndarray, column: int, values: np.ndarray) -> None:
    """rows[:, column] = values over their largest, left NaN unless that is positive."""
    top = values.max() if len(values) else 0.0
    if top > 0:
        rows[:, column] = values / top


def _relative_to_list(rows: np.ndarray, source: int, ratio: int, rank: int) -> None:
    """Fill the list-relative columns of one feature (see LIST_RELATIVE); left NaN where the
    feature is (no likes)."""
    values = rows[:, source]
    if not len(values) or np.isnan(values).all():
        return
    _fill_over_largest(rows, ratio, values)
    ordered = np.sort(values)
    rows[:, rank] = len(values) - np.searchsorted(ordered, values, side="right")


def build_features(
    candidates: np.ndarray,
    retrieval_scores: np.ndarray,
    user: UserSignals,
    context: RequestContext,
    items: ItemSide,
    live_likes: np.ndarray,
) -> np.ndarray:
    """One float32 row per candidate (in shortlist order), columns in `feature_names` order."""
    n = len(candidates)
    n_item_attr = items.attributes.shape[1]
    n_user_attr = len(items.user_attribute_names)
    width = len(BASE_FEATURES) + n_item_attr + n_user_attr + len(items.context)
    rows = np.full((n, width), np.nan, np.float32)
    col = _COLUMN
    scores = np.asarray(retrieval_scores, np.float32)
    rows[:, col["retrieval_rank"]] = np.arange(n)
    _fill_over_largest(rows, col["retrieval_score_ratio"], scores)
    rows[:, col["item_log_popularity"]] = np.log1p(items.popularity[candidates] + live_likes)
    rows[:, col["item_log_recent_popularity"]] = items.log_recent_popularity[candidates]
    rows[:, col["user_log_activity"]] = math.log1p(user.activity)
    cand_vecs = items.vectors[candidates]
    likes, dislikes = user.recent_likes[:RECENT_ITEMS], user.recent_dislikes[:RECENT_ITEMS]
    recent = np.concatenate([likes, dislikes]).astype(np.int64)  # likes first
    where = _positions(items.cooc.shape[1], candidates)
    cooc = _entries(items.cooc, items.cooc_dense, recent, candidates, where)
    if len(likes):
        sim = cooc[: len(likes)]
        rows[:, col["cooc_sum_likes"]] = sim.sum(axis=0)
        rows[:, col["cooc_max_likes"]] = sim.max(axis=0)
        if len(likes) > 1:
            rows[:, col["cooc_second_likes"]] = np.partition(sim, len(likes) - 2, axis=0)[-2]
        rows[:, col["sim_recent_likes"]] = cand_vecs @ items.vectors[likes].mean(axis=0)
        if n_item_attr:
            profile = items.attributes[likes].mean(axis=0)
            attrs = items.attributes[candidates]
            denom = np.linalg.norm(attrs, axis=1) * np.linalg.norm(profile)
            with np.errstate(invalid="ignore", divide="ignore"):
                rows[:, col["attr_affinity"]] = np.where(denom > 0, attrs @ profile / denom, 0.0)
    if len(likes) and items.sequence is not None:
        seq = _entries(
            items.sequence, items.sequence_dense, recent[: len(likes)], candidates, where
        )
        weights = SEQUENCE_DECAY ** np.arange(len(likes), dtype=np.float32)
        rows[:, col["seq_cooc_likes"]] = weights @ seq
    if len(dislikes):
        rows[:, col["cooc_max_dislikes"]] = cooc[len(likes) :].max(axis=0)
        rows[:, col["max_sim_dislikes"]] = (cand_vecs @ items.vectors[dislikes].T).max(axis=1)
    for name in LIST_RELATIVE:
        _relative_to_list(rows, col[name], col[f"{name}_list_ratio"], col[f"{name}_list_rank"])
    rows[:, col["ctx_hour"]] = context.hour
    rows[:, col["ctx_day_of_week"]] = context.day_of_week
    rows[:, col["ctx_device"]] = context.device
    base = len(BASE_FEATURES)
    rows[:, base : base + n_item_attr] = items.attributes[candidates]
    if n_user_attr and user.attributes is not None:
        rows[:, base + n_item_attr : base + n_item_attr + n_user_attr] = user.attributes[None, :]
    ctx_base = base + n_item_attr + n_user_attr
    for j, (key, (row_of, lift)) in enumerate(items.context.items()):
        row = row_of.get(context.extra.get(key, ""), -1)
        if row >= 0:
            rows[:, ctx_base + j] = lift[row, candidates]
    return rows
