"""Request-time logic of retrieval and ranking over a loaded bundle and the live state.

The gRPC servicers in `services/` validate input and map errors to status codes; the
decisions live here so that the offline pipeline, tests and services share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shortlist.artifacts import Bundle
from shortlist.events import Event, Kind
from shortlist.features import (
    RECENT_ITEMS,
    RequestContext,
    UserSignals,
    build_features,
    recent_in_order,
    row_items,
)
from shortlist.foldin import (
    LINEAR_BY_KIND,
    RIDGE_BY_KIND,
    batched_fold_in,
    fold_in,
    linear_deltas,
    linear_fold_in,
)
from shortlist.index import RefinedIndex, search, served_index
from shortlist.search_memo import SearchMemo
from shortlist.stores.base import RankingSignals, UserFeedback, UserState

CHECK_QUERIES = 200  # users whose exact top-200 decides whether the compressed index serves


@dataclass
class Shortlist:
    items: np.ndarray  # item indices, best first
    scores: np.ndarray
    user_source: str  # "trained", "folded_in" or "popularity"
    # how it was found: "precomputed" (the bundle's shortlist of a trained user), "memo"
    # (the search memo), "search" (the ANN index) or "popularity"
    answer: str = "search"


def prepare_for_retrieval(bundle: Bundle) -> Bundle:
    """Swap the bundle's index for its served form (`shortlist.index.served_index`): same
    results interface, a compressed scan plus exact re-scoring for large IVF indexes, taken
    only when it keeps the recall of the bundle's own index on a sample of its users.
    The bundle's item vectors then become a view of the re-scoring copy, and the IVF-Flat
    index is dropped: two fewer items x dim float arrays in memory (Gowalla: 2 x 210 MB)."""
    if not isinstance(bundle.index, RefinedIndex):
        rng = np.random.default_rng(0)
        users = bundle.user_vectors
        sample = users[rng.choice(len(users), min(len(users), CHECK_QUERIES), replace=False)]
        bundle.index = served_index(bundle.index, bundle.item_vectors, queries=sample)
        if isinstance(bundle.index, RefinedIndex):
            bundle.item_vectors = bundle.index.vectors
    return bundle


def live_exclusions(bundle: Bundle, state: UserState, extra: Sequence[str]) -> np.ndarray:
    """Live seen and disliked items and the request's exclusions, as item indices."""
    return np.unique(bundle.items.indices([*state.seen, *state.disliked, *extra]))


def retrieve(
    bundle: Bundle,
    user_id: str,
    state: UserState,
    n: int,
    extra_exclude: Sequence[str] = (),
    memo: SearchMemo | None = None,
    precomputed: bool = True,
) -> Shortlist:
    """Top-n for the user, never an item of their training interactions, live seen or
    disliked items, or `extra_exclude`. A trained user without a folded-in vector is
    answered from the bundle's precomputed shortlist when `precomputed` and it holds
    enough; `memo` (over `bundle.index`) answers repeated searches."""
    user_index = bundle.users.get(user_id)
    live = live_exclusions(bundle, state, extra_exclude)
    folded = state.vector is not None and state.vector.shape == (bundle.item_vectors.shape[1],)
    if not folded and user_index is not None and precomputed and bundle.precomputed is not None:
        found = bundle.precomputed.take(user_index, n, live)
        if found is not None:
            return Shortlist(*found, "trained", "precomputed")
    if user_index is not None:
        exclude = np.union1d(row_items(bundle.seen, user_index), live)
    else:
        exclude = live
    if folded:
        vector, source = state.vector, "folded_in"
    elif user_index is not None:
        vector, source = bundle.user_vectors[user_index], "trained"
    else:
        top = bundle.popular_items(n, exclude)
        return Shortlist(top, bundle.popularity[top].astype(np.float32), "popularity", "popularity")
    if memo is None:
        return Shortlist(*search(bundle.index, vector, n, exclude), source)
    idx, scores, hit = memo.search(vector, n, exclude)
    return Shortlist(idx, scores, source, "memo" if hit else "search")


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
    bundle: Bundle,
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


def updated_vectors(
    bundle: Bundle, users: dict[str, UserFeedback], fresh: Sequence[Event]
) -> dict[str, np.ndarray]:
    """New vectors for the users of `fresh` (new events, oldest first) from the state
    `prepare` read; the same vectors `folded_vectors` gives over the users' whole feedback
    (the latest kind per item counts), without a history cap.

    Linear (encoder) bundles: a stored vector moves by the signed encoder rows of what
    changed (new weight minus the item's previous weight), else it is computed from the
    user's whole item -> kind map. Other bundles: the ridge fold-in over the whole map,
    all users solved as one batch. Users without any item the bundle knows get none.
    """
    by_user: dict[str, list[Event]] = {}
    for e in fresh:
        by_user.setdefault(e.user_id, []).append(e)
    items = bundle.items
    if bundle.item_encoder is None:
        names, ids, kinds, lengths = [], [], [], []
        for user, events in by_user.items():
            latest = users[user].kinds  # complete: prepare was asked for every item
            for e in events:
                latest[e.item_id] = int(e.kind)
            names.append(user)
            ids.extend(latest)
            kinds.extend(latest.values())
            lengths.append(len(latest))
        rows = np.repeat(np.arange(len(names)), lengths)
        idx = items.positions(ids)
        kind = np.asarray(kinds, np.int64)
        known = idx >= 0
        # Users with no item the bundle knows get no vector; the others are folded in
        # from the items whose kind has a weight.
        has = np.bincount(rows[known], minlength=len(names)) > 0
        keep = known & (RIDGE_BY_KIND[kind] > 0) & has[rows]
        renumber = np.cumsum(has) - 1
        names = [u for u, h in zip(names, has) if h]
        priors = np.stack([_prior(bundle, u) for u in names]) if names else np.zeros((0, 1))
        solved = batched_fold_in(
            bundle.item_vectors, renumber[rows[keep]], idx[keep], kind[keep], bundle.foldin, priors
        )
        return dict(zip(names, solved))

    names, bases, rows, cols, weights = [], [], [], [], []
    for user, events in by_user.items():
        state = users[user]
        kinds = state.kinds
        r = len(names)
        if state.complete:  # from scratch over the whole map
            for e in events:
                kinds[e.item_id] = int(e.kind)
            n = len(rows)
            for item_id, kind in kinds.items():
                i = items.get(item_id)
                if i is not None:
                    rows.append(r)
                    cols.append(i)
                    weights.append(LINEAR_BY_KIND[kind])
            if len(rows) == n:
                continue  # nothing the bundle knows: no vector
            base = _prior(bundle, user)
        else:  # incremental: what each new event changed
            for e in events:
                kind = int(e.kind)
                old = kinds.get(e.item_id, 0)
                kinds[e.item_id] = kind
                i = items.get(e.item_id)
                if i is not None and kind != old:
                    rows.append(r)
                    cols.append(i)
                    weights.append(LINEAR_BY_KIND[kind] - LINEAR_BY_KIND[old])
            base = state.vector
        names.append(user)
        bases.append(base)
    if not names:
        return {}
    delta = linear_deltas(
        bundle.item_encoder,
        np.asarray(rows, np.int64),
        np.asarray(cols, np.int64),
        np.asarray(weights, np.float64),
        len(names),
    )
    vectors = (np.stack(bases).astype(np.float64) + delta).astype(np.float32)
    return dict(zip(names, vectors))


def _prior(bundle: Bundle, user_id: str) -> np.ndarray:
    u = bundle.users.get(user_id)
    if u is None:
        return np.zeros(bundle.item_vectors.shape[1], np.float32)
    return bundle.user_vectors[u]
