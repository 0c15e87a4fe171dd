"""Ranking features, defined once and used both offline (training the ranker) and online.

Every feature row describes one (user, candidate, request context) triple. The same
function assembles rows in the offline pipeline and in the ranking service, which is what
keeps offline and online scores equal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

BASE_FEATURES = [
    "retrieval_score",
    "retrieval_rank",
    "item_log_popularity",
    "item_log_live_likes",
    "user_log_activity",
    "sim_recent_likes",
    "max_sim_dislikes",
    "ctx_hour",
    "ctx_day_of_week",
    "ctx_device",
]
DEVICES = ("ios", "android", "web", "tv")


@dataclass(frozen=True)
class RequestContext:
    """Parsed request context; NaN marks what the client did not send."""

    hour: float = math.nan
    day_of_week: float = math.nan
    device: float = math.nan


def parse_context(context: Mapping[str, str]) -> RequestContext:
    """Validate the known context keys; ValueError names the bad key. Unknown keys are kept
    by the caller for logging but carry no feature yet."""
    hour = _int_in(context, "hour", 0, 23)
    dow = _int_in(context, "day_of_week", 0, 6)
    device = math.nan
    if "device" in context:
        name = context["device"].strip().lower()
        device = float(DEVICES.index(name)) if name in DEVICES else float(len(DEVICES))
    return RequestContext(hour=hour, day_of_week=dow, device=device)


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


def context_at(timestamp_s: float) -> RequestContext:
    """The context a request at this unix time would carry (used offline)."""
    days, seconds = divmod(int(timestamp_s), 86400)
    return RequestContext(hour=float(seconds // 3600), day_of_week=float((days + 3) % 7))


@dataclass
class UserSignals:
    """What the ranker knows of the user: how active, and what they liked/disliked lately."""

    activity: float
    recent_likes: np.ndarray  # item indices
    recent_dislikes: np.ndarray  # item indices


def feature_names(item_feature_names: list[str]) -> list[str]:
    return BASE_FEATURES + [f"item_{n}" for n in item_feature_names]


def build_features(
    candidates: np.ndarray,
    retrieval_scores: np.ndarray,
    user: UserSignals,
    context: RequestContext,
    item_vectors: np.ndarray,
    popularity: np.ndarray,
    live_likes: np.ndarray,
    item_features: np.ndarray,
) -> np.ndarray:
    """One float32 row per candidate, columns in `feature_names` order."""
    n = len(candidates)
    cand_vecs = item_vectors[candidates]
    rows = np.empty((n, len(BASE_FEATURES) + item_features.shape[1]), np.float32)
    rows[:, 0] = retrieval_scores
    rows[:, 1] = np.arange(n)
    rows[:, 2] = np.log1p(popularity[candidates])
    rows[:, 3] = np.log1p(live_likes)
    rows[:, 4] = math.log1p(user.activity)
    if len(user.recent_likes):
        centroid = item_vectors[user.recent_likes].mean(axis=0)
        rows[:, 5] = cand_vecs @ centroid
    else:
        rows[:, 5] = np.nan
    if len(user.recent_dislikes):
        rows[:, 6] = (cand_vecs @ item_vectors[user.recent_dislikes].T).max(axis=1)
    else:
        rows[:, 6] = np.nan
    rows[:, 7] = context.hour
    rows[:, 8] = context.day_of_week
    rows[:, 9] = context.device
    rows[:, len(BASE_FEATURES) :] = item_features[candidates]
    return rows
