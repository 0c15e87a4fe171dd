"""The ranking stage at request time: the shortlist's features from the bundle, the user's
live signals and the request context, scored by the bundle's `Scorer`, top-k kept."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.sparse as sp

from shortlist.data.ids import IdMap
from shortlist.data.interactions import row_items
from shortlist.feedback.events import Kind
from shortlist.feedback.stores.base import RankingSignals
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
    activity: np.ndarray
    user_features: np.ndarray | None

    @property
    def item_side(self) -> ItemSide: ...

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
        activity += float(bundle.activity[u])
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
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the candidates by the ranker (retrieval order when the bundle has none)."""
    if bundle.scorer is None:
        return candidates[:k], retrieval_scores[:k]
    features = build_features(
        candidates,
        retrieval_scores,
        user_signals(bundle, user_id, live),
        context,
        bundle.item_side,
        live.live_likes,
    )
    scores = bundle.scorer(features)
    order = np.argsort(-scores, kind="stable")[:k]
    return candidates[order], scores[order]
