"""Ranking features, defined once and used both offline (training the ranker) and online.

Every feature row describes one (user, candidate, request context) triple. The same
function assembles rows in the offline pipeline and in the ranking service, which is what
keeps offline and online scores equal. Missing signals are NaN (LightGBM's missing value),
never a made-up default.
"""

import math

import numpy as np
import scipy.sparse as sp

from shortlist.ranking.context import RequestContext
from shortlist.ranking.item_side import SEQUENCE_DECAY, ItemSide
from shortlist.ranking.user_signals import RECENT_ITEMS, UserSignals

# Features also given relative to the shortlist: value over the list's largest (NaN when
# that is not positive) and place among the list's values (0 = largest; ties share the
# smaller place). The raw values move with how much the user has liked and where they
# are; a list-relative one says which candidates stand out for this request. Chosen on
# Gowalla's train+valid alone (latest 20% of each user as the test, never the test split),
# where they raised the ranker's lift (docs/decisions/0010-list-relative-features.md).
LIST_RELATIVE = (
    "seq_cooc_likes",
    "cooc_sum_likes",
    "sim_recent_likes",
    "cooc_max_likes",
    "item_item_likes",
)
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
    # the item-item retrieval source's score (EASE or kNN weights summed over the user's
    # recent likes): which source to trust is the ranker's to learn (NaN without the source)
    "item_item_likes",
    "attr_affinity",  # cosine of item attributes with the user's liked-attribute profile
    # the same signals relative to the rest of the shortlist (see LIST_RELATIVE)
    *[f"{name}_{kind}" for name in LIST_RELATIVE for kind in ("list_ratio", "list_rank")],
    "ctx_hour",
    "ctx_day_of_week",
    "ctx_device",
]
_COLUMN = {name: i for i, name in enumerate(BASE_FEATURES)}
RANK_COLUMN = _COLUMN["retrieval_rank"]  # ordering by it is the retrieval order


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
    if len(likes) and items.item_item is not None:
        weights = _entries(
            items.item_item, items.item_item_dense, recent[: len(likes)], candidates, where
        )
        rows[:, col["item_item_likes"]] = weights.sum(axis=0)
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
