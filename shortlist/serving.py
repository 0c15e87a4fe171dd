"""Request-time logic of retrieval and ranking over a loaded bundle and the live state.

The gRPC servicers in `services/` validate input and map errors to status codes; the
decisions live here so that the offline pipeline, tests and services share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shortlist.artifacts import Bundle
from shortlist.events import Kind
from shortlist.features import (
    RECENT_ITEMS,
    RequestContext,
    UserSignals,
    build_features,
    recent_in_order,
)
from shortlist.foldin import fold_in, linear_fold_in
from shortlist.index import RefinedIndex, search, served_index
from shortlist.ranker import score
from shortlist.stores.base import RankingSignals, UserState

CHECK_QUERIES = 200  # users whose exact top-200 decides whether the compressed index serves


@dataclass
class Shortlist:
    items: np.ndarray  # item indices, best first
    scores: np.ndarray
    user_source: str  # "trained", "folded_in" or "popularity"


def prepare_for_retrieval(bundle: Bundle) -> Bundle:
    """Swap the bundle's index for its served form (`shortlist.index.served_index`): same
    results interface, a compressed scan plus exact re-scoring for large IVF indexes, taken
    only when it keeps the recall of the bundle's own index on a sample of its users."""
    if not isinstance(bundle.index, RefinedIndex):
        rng = np.random.default_rng(0)
        users = bundle.user_vectors
        sample = users[rng.choice(len(users), min(len(users), CHECK_QUERIES), replace=False)]
        bundle.index = served_index(bundle.index, bundle.item_vectors, queries=sample)
    return bundle


def excluded_items(
    bundle: Bundle, user_index: int | None, state: UserState, extra: Sequence[str]
) -> np.ndarray:
    """Training interactions, live seen and disliked items, and the request's exclusions."""
    live = bundle.items.indices([*state.seen, *state.disliked, *extra])
    if user_index is None:
        return np.unique(live)
    trained = bundle.seen.indices[
        bundle.seen.indptr[user_index] : bundle.seen.indptr[user_index + 1]
    ]
    return np.unique(np.concatenate([trained, live]))


def retrieve(
    bundle: Bundle, user_id: str, state: UserState, n: int, extra_exclude: Sequence[str] = ()
) -> Shortlist:
    user_index = bundle.users.get(user_id)
    exclude = excluded_items(bundle, user_index, state, extra_exclude)
    if state.vector is not None and state.vector.shape == (bundle.item_vectors.shape[1],):
        vector, source = state.vector, "folded_in"
    elif user_index is not None:
        vector, source = bundle.user_vectors[user_index], "trained"
    else:
        top = bundle.popular_items(n, exclude)
        return Shortlist(top, bundle.popularity[top].astype(np.float32), "popularity")
    idx, scores = search(bundle.index, vector, n, exclude)
    return Shortlist(idx, scores, source)


def similar_items(bundle: Bundle, item_index: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return search(bundle.index, bundle.item_vectors[item_index], k, np.array([item_index]))


def user_signals(bundle: Bundle, user_id: str, live: RankingSignals) -> UserSignals:
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
        dislikes += bundle.dislikes[u].indices.tolist()
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
    bundle: Bundle,
    user_id: str,
    candidates: np.ndarray,
    retrieval_scores: np.ndarray,
    live: RankingSignals,
    context: RequestContext,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the candidates by the ranker (retrieval order when the bundle has none)."""
    if bundle.ranker is None:
        return candidates[:k], retrieval_scores[:k]
    features = build_features(
        candidates,
        retrieval_scores,
        user_signals(bundle, user_id, live),
        context,
        bundle.item_side,
        live.live_likes,
    )
    scores = score(bundle.ranker, features)
    order = np.argsort(-scores, kind="stable")[:k]
    return candidates[order], scores[order]


def folded_vectors(
    bundle: Bundle, histories: dict[str, list[tuple[str, Kind]]]
) -> dict[str, np.ndarray]:
    """New vectors for users from their (newest-first) feedback histories."""
    out = {}
    for user, history in histories.items():
        latest: dict[int, Kind] = {}
        for item_id, kind in history:
            i = bundle.items.get(item_id)
            if i is not None and i not in latest:
                latest[i] = kind
        if not latest:
            continue
        u = bundle.users.get(user)
        prior = bundle.user_vectors[u] if u is not None else None
        if bundle.item_encoder is not None:
            out[user] = linear_fold_in(
                bundle.item_encoder, list(latest), list(latest.values()), prior
            )
            continue
        out[user] = fold_in(
            bundle.item_vectors, list(latest), list(latest.values()), bundle.foldin, prior
        )
    return out
