"""The ranking stage at request time: the shortlist's features from the bundle, the user's
live signals and the request context, scored by the bundle's `Scorer`, top-k kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from shortlist.data.ids import IdMap
from shortlist.data.interactions import row_items
from shortlist.feedback.events import Kind
from shortlist.feedback.stores.base import RankingSignals
from shortlist.feedback.vectors import SHORT_TERM, ShortTerm, short_term_vector
from shortlist.ranking.context import RequestContext
from shortlist.ranking.features import build_features
from shortlist.ranking.item_side import ItemSide
from shortlist.ranking.scorer import Scorer
from shortlist.ranking.user_signals import RECENT_ITEMS, UserSignals, recent_in_order


class RankingData(Protocol):
    """What ranking reads of a bundle (`shortlist.bundle.Bundle` has it all)."""

    users: IdMap
    items: IdMap
    recent_likes: sp.csr_matrix
    dislikes: sp.csr_matrix
    user_features: np.ndarray | None
    item_vectors: np.ndarray
    item_encoder: np.ndarray | None

    @property
    def item_side(self) -> ItemSide: ...

    def activity_of(self, user: int) -> float: ...

    @property
    def scorer(self) -> Scorer | None: ...


def user_signals(bundle: RankingData, user_id: str, live: RankingSignals) -> UserSignals:
    """Recent likes and dislikes: live history first (newest first), then training's."""
    live_likes = [i for i, k in live.history if k == Kind.LIKE]
    live_dislikes = [i for i, k in live.history if k == Kind.DISLIKE]
    likes = list(bundle.items.indices(live_likes))
    dislikes = list(bundle.items.indices(live_dislikes))
    activity = float(live.likes)
    u = bundle.users.get(user_id)
    attributes = None
    if u is not None:
        likes += recent_in_order(bundle.recent_likes, u).tolist()
        dislikes += row_items(bundle.dislikes, u).tolist()
        activity += bundle.activity_of(u)
        if bundle.user_features is not None and bundle.user_features.shape[1]:
            attributes = bundle.user_features[u]
    return UserSignals(
        activity=activity,
        recent_likes=np.array(_unique(likes)[:RECENT_ITEMS], np.int64),
        recent_dislikes=np.array(_unique(dislikes)[:RECENT_ITEMS], np.int64),
        attributes=attributes,
    )


def _unique(values: list[int]) -> list[int]:
    return list(dict.fromkeys(values))


def rank(
    bundle: RankingData,
    user_id: str,
    candidates: np.ndarray,
    retrieval_scores: np.ndarray,
    live: RankingSignals,
    context: RequestContext,
    k: int,
    short_term: ShortTerm = SHORT_TERM,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the candidates (all known to the bundle) by the ranker (retrieval order
    when the bundle has none)."""
    order, scores = rank_positions(
        bundle, user_id, candidates, retrieval_scores, live, context, k, short_term
    )
    return candidates[order], scores


@dataclass
class RankedList:
    """Every candidate ranked: `order` holds positions in the candidates, best first, and
    `scores` their scores; the feature rows the ranker scored (`features`, one per position
    in `where`, the candidates known to the bundle) and the user's signals are kept for
    the reasons (`shortlist.ranking.reasons`); None when nothing was scored."""

    order: np.ndarray
    scores: np.ndarray
    where: np.ndarray | None = None
    features: np.ndarray | None = None
    signals: UserSignals | None = None


def rank_positions(
    bundle: RankingData,
    user_id: str,
    candidates: np.ndarray,
    retrieval_scores: np.ndarray,
    live: RankingSignals,
    context: RequestContext,
    k: int,
    short_term: ShortTerm = SHORT_TERM,
) -> tuple[np.ndarray, np.ndarray]:
    """The top-k as positions in `candidates`, and their scores (see `ranked_list`)."""
    ranked = ranked_list(
        bundle, user_id, candidates, retrieval_scores, live, context, short_term=short_term
    )
    return ranked.order[:k], ranked.scores[:k]


def ranked_list(
    bundle: RankingData,
    user_id: str,
    candidates: np.ndarray,
    retrieval_scores: np.ndarray,
    live: RankingSignals,
    context: RequestContext,
    keep_order: bool = False,
    short_term: ShortTerm = SHORT_TERM,
) -> RankedList:
    """Every candidate in ranked order with its score. A candidate outside the
    bundle (index -1 or >= len(bundle.items): an item added since training) has no ranker
    features, so it keeps its retrieval position; the known ones are ranked into the other
    positions. Dropping new items would hide them until the next training, putting them
    last would bury them; their retrieval position is the only evidence there is. A new
    item's score is that of the entry before it (the first known one's when it leads), so
    scores stay in order. `live.live_likes` is aligned with `candidates`. `keep_order`
    (or a bundle without a ranker): the retrieval order and scores, nothing scored."""
    n = len(candidates)
    known = (candidates >= 0) & (candidates < len(bundle.items))
    where = np.flatnonzero(known)
    if bundle.scorer is None or keep_order or not len(where):
        return RankedList(np.arange(n), np.asarray(retrieval_scores, np.float32))
    signals = user_signals(bundle, user_id, live)
    features = build_features(
        candidates[where],
        retrieval_scores[where],
        signals,
        context,
        bundle.item_side,
        live.live_likes[where],
    )
    scores = np.asarray(bundle.scorer(features), np.float32)
    if short_term.rank_weight > 0 and any(k == Kind.LIKE for _, k in live.history):
        scores = with_short_term_scores(
            bundle, scores, candidates[where], signals.recent_likes, short_term
        )
    best = np.argsort(-scores, kind="stable")
    if len(where) == n:
        return RankedList(best, scores[best], where, features, signals)
    order = np.empty(n, np.int64)
    order[~known] = np.flatnonzero(~known)  # new items stay where retrieval put them
    order[known] = where[best]
    out = np.empty(n, np.float32)
    out[known] = scores[best]
    top = float(out[known][0])
    for p in np.flatnonzero(~known):
        out[p] = out[p - 1] if p > 0 else top
    return RankedList(order, out, where, features, signals)


def with_short_term_scores(
    bundle: RankingData,
    scores: np.ndarray,
    candidates: np.ndarray,
    recent_likes: np.ndarray,
    short_term: ShortTerm = SHORT_TERM,
) -> np.ndarray:
    """The ranker's scores of one list plus a weight times the candidates' scores against
    the short-term vector of `recent_likes` (newest first), both standardised over the list
    (the ranker's blend is a sum of standardised scores). The weight is
    `short_term.rank_weight` times how far the short-term vector turns from the user's
    recent likes taken evenly (1 - cosine): the ranker was fit where the newest likes agree
    with the rest, and it already reads them then (co-occurrence, like order)."""
    short = short_term_vector(bundle, recent_likes, short_term)
    if short is None or len(scores) < 2:
        return scores
    even = short_term_vector(
        bundle, recent_likes, ShortTerm(half_life=np.inf, window=len(recent_likes))
    )
    norms = float(np.linalg.norm(short) * np.linalg.norm(even))
    turn = 1.0 - float(short @ even) / norms if norms > 0 else 0.0
    weight = short_term.rank_weight * min(max(turn, 0.0), 1.0)
    if weight <= 0:
        return scores
    sim = bundle.item_vectors[candidates] @ short
    return (_z(scores) + weight * _z(sim)).astype(np.float32)


def _z(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return (a - a.mean()) / (a.std() + 1e-9)
