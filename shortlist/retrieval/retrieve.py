"""The retrieval stage at request time: a user's shortlist from a bundle and their live state.

A trained user whose vector feedback has not moved is answered from the bundle's
precomputed shortlist; a folded-in or trained user otherwise by the ANN index (through the
search memo when given); an unknown user by popularity. Never an item of the user's
training interactions, live seen or disliked items, the request's exclusions, or a hidden
or removed item; new items (folded in since training, `shortlist.retrieval.catalogue`) are
scored with the user's vector and merged into every personal shortlist, the precomputed
one included. Where the bundle has an item-item or a weighted-MF source (`item_item`,
`ials`, with its `fusion`), the shortlist is the weighted reciprocal-rank fusion of the
vector search, the item-item row-sum over the user's likes (training and live), the
weighted-MF solve over them and popularity (`shortlist.retrieval.fusion`); each item
carries the sources that proposed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import faiss
import numpy as np
import scipy.sparse as sp

from shortlist.data.ids import IdMap
from shortlist.data.interactions import row_items
from shortlist.data.mapped import EncodedVectors, MappedIds
from shortlist.feedback.events import Kind
from shortlist.feedback.stores.base import UserState
from shortlist.feedback.vectors import SHORT_TERM, ShortTerm, with_short_term
from shortlist.models.ials import recency_confidence
from shortlist.retrieval.catalogue import EMPTY, CatalogueView, merge_new_items
from shortlist.retrieval.fusion import FusionConfig, fuse, item_item_scores
from shortlist.retrieval.index import (
    EXACT_MAX_ITEMS,
    RefinedIndex,
    build_index,
    search,
    served_index,
)
from shortlist.retrieval.memo import SearchMemo
from shortlist.retrieval.precomputed import PrecomputedShortlists


class RetrievalData(Protocol):
    """What retrieval reads of a bundle (`shortlist.bundle.Bundle` has it all)."""

    users: IdMap | MappedIds
    items: IdMap
    user_vectors: np.ndarray | EncodedVectors  # row u: user u's trained vector
    item_vectors: np.ndarray
    index: faiss.Index | RefinedIndex | None
    recent_likes: sp.csr_matrix  # the last likes per user (data: age rank, 0 = newest)
    item_encoder: np.ndarray | None
    popularity: np.ndarray
    precomputed: PrecomputedShortlists | None
    likes: sp.csr_matrix
    item_item: sp.csr_matrix | None
    fusion: FusionConfig | None
    manifest: dict

    def popular_items(self, n: int, exclude: np.ndarray | None = None) -> np.ndarray: ...

    def seen_items(self, user: int) -> np.ndarray: ...


CHECK_QUERIES = 200  # users whose exact top-200 decides whether the compressed index serves


@dataclass
class Shortlist:
    items: np.ndarray  # item indices, best first
    scores: np.ndarray
    user_source: str  # "trained", "folded_in" or "popularity"
    # how it was found: "precomputed" (the bundle's shortlist of a trained user), "memo"
    # (the search memo), "search" (the ANN index) or "popularity"
    answer: str = "search"
    # per item, the sources that proposed it (fused shortlists; empty otherwise)
    sources: list[tuple[str, ...]] = field(default_factory=list)


def prepare_for_retrieval(bundle: RetrievalData) -> RetrievalData:
    """Swap the bundle's index for its served form (`shortlist.retrieval.index.served_index`): same
    results interface, a compressed scan plus exact re-scoring for large IVF indexes, taken
    only when it keeps the recall of the bundle's own index on a sample of its users.
    The bundle's item vectors then become a view of the re-scoring copy, and the IVF-Flat
    index is dropped: two fewer items x dim float arrays in memory
    (docs/decisions/0007-served-index.md)."""
    if not isinstance(bundle.index, RefinedIndex):
        rng = np.random.default_rng(0)
        users = bundle.user_vectors
        sample = users[rng.choice(len(users), min(len(users), CHECK_QUERIES), replace=False)]
        bundle.index = served_index(bundle.index, bundle.item_vectors, queries=sample)
        if isinstance(bundle.index, RefinedIndex):
            bundle.item_vectors = bundle.index.vectors
    mf = getattr(bundle, "ials", None)
    fused = getattr(bundle, "fusion", None) is not None and bundle.fusion.weights.get("ials", 0)
    if mf is not None and fused and len(mf.item_factors) > EXACT_MAX_ITEMS:
        # the weighted-MF source's own IVF index over its item factors: a user's solve is
        # then searched, not scored against every item (items x factors read per request)
        bundle.ials_index = build_index(mf.item_factors, "ivf")
    return bundle


def live_exclusions(
    bundle: RetrievalData, state: UserState, extra: Sequence[str], view: CatalogueView = EMPTY
) -> np.ndarray:
    """Live seen and disliked items, the request's exclusions and the hidden items, as item
    indices."""
    live = bundle.items.indices([*state.seen, *state.disliked, *extra])
    return np.unique(np.concatenate([live, view.hidden])) if len(view.hidden) else np.unique(live)


def latest_likes(bundle: RetrievalData, user_index: int | None, state: UserState) -> np.ndarray:
    """The user's likes newest first, as item indices: live ones (an item whose latest
    feedback is a like), then training's recent likes."""
    latest: dict[str, Kind] = {}
    for item_id, kind in state.history:
        latest.setdefault(item_id, kind)
    live = bundle.items.indices([i for i, k in latest.items() if k == Kind.LIKE])
    if user_index is None:
        return live
    lo, hi = bundle.recent_likes.indptr[user_index], bundle.recent_likes.indptr[user_index + 1]
    trained = bundle.recent_likes.indices[lo:hi][
        np.argsort(bundle.recent_likes.data[lo:hi], kind="stable")
    ]
    gone = np.asarray([i for i, k in latest.items() if k != Kind.LIKE])
    trained = trained[~np.isin(trained, np.concatenate([live, bundle.items.indices(gone)]))]
    return np.concatenate([live, trained]).astype(np.int64)


def retrieve(
    bundle: RetrievalData,
    user_id: str,
    state: UserState,
    n: int,
    extra_exclude: Sequence[str] = (),
    memo: SearchMemo | None = None,
    precomputed: bool = True,
    view: CatalogueView = EMPTY,
    short_term: ShortTerm = SHORT_TERM,
) -> Shortlist:
    """Top-n for the user, never an item of their training interactions, live seen or
    disliked items, `extra_exclude` or the `view`'s hidden items. A trained user without a
    folded-in vector is answered from the bundle's precomputed shortlist when `precomputed`
    and it holds enough; `memo` (over `bundle.index`) answers repeated searches. The
    view's new items are merged into personal shortlists (indices from len(bundle.items)).
    A folded-in user's vector is searched with their latest likes' short-term vector
    blended in (`short_term`, decision 0030)."""
    user_index = bundle.users.get(user_id)
    live = live_exclusions(bundle, state, extra_exclude, view)
    folded = state.vector is not None and state.vector.shape == (bundle.item_vectors.shape[1],)
    if folded:
        vector, source = state.vector, "folded_in"
        if short_term.weight > 0:
            recent = latest_likes(bundle, user_index, state)
            vector = with_short_term(bundle, vector, recent, short_term)
    elif user_index is not None:
        # read (a linear model: computed from the user's likes) only where a search or the
        # new items need it: a precomputed answer does not
        vector, source = None, "trained"
    else:
        top = bundle.popular_items(n, live)
        return Shortlist(top, bundle.popularity[top].astype(np.float32), "popularity", "popularity")
    found = None
    live_liked = [i for i, kind in state.history if kind == Kind.LIKE]
    # a fused shortlist moves with live likes (the item-item source), so only a user
    # without any is answered from the precomputed one
    fresh = not (fused_source(bundle) and live_liked)
    if not folded and fresh and precomputed and bundle.precomputed is not None:
        row = bundle.precomputed.row(user_index)
        picked = bundle.precomputed.pick(row, n, live)
        if picked is not None:
            found = Shortlist(*bundle.precomputed.at(row, picked), "trained", "precomputed")
            if fused_source(bundle):
                found.sources = bundle.precomputed.sources_at(row, picked)
    if found is None:
        exclude = (
            np.union1d(bundle.seen_items(user_index), live) if user_index is not None else live
        )
        # a fused shortlist takes each source's top `depth`, as offline
        width = max(n, bundle.fusion.depth) if fused_source(bundle) else n
        if vector is None:
            vector = bundle.user_vectors[user_index]
        if memo is None:
            found = Shortlist(*search(bundle.index, vector, width, exclude), source)
        else:
            idx, scores, hit = memo.search(vector, width, exclude)
            found = Shortlist(idx, scores, source, "memo" if hit else "search")
        if fused_source(bundle):
            history = bundle.items.indices(live_liked)
            if user_index is not None:
                history = np.union1d(row_items(bundle.likes, user_index), history)
            # a user with live likes: their newest likes weigh more in the weighted-MF
            # source's user step, as in the vector's short-term part (decision 0030)
            recent = latest_likes(bundle, user_index, state) if live_liked else None
            found = fused_shortlist(bundle, found, history, exclude, n, recent, short_term)
    if view.new_ids:
        not_new = {*state.seen, *state.disliked, *extra_exclude}
        if vector is None:
            vector = bundle.user_vectors[user_index]
        if found.sources:
            return merge_new_fused(bundle, found, vector, view, n, not_new)
        found.items, found.scores = merge_new_items(
            found.items, found.scores, vector, view, n, len(bundle.items), not_new
        )
    return found


def merge_new_fused(
    bundle: RetrievalData,
    found: Shortlist,
    vector: np.ndarray,
    view: CatalogueView,
    n: int,
    not_new: set[str],
) -> Shortlist:
    """New items into a fused shortlist: only the vector source knows them; each is scored
    as if every fused source ranked it at the place its dot product takes among the
    shortlist's items' dot products (the sum of the weights over k + place + 1), so that
    being unknown to the sources trained before it does not bury a new item."""
    fusion = bundle.fusion
    n_bundle = len(bundle.items)
    known = found.items < n_bundle
    dots = np.sort(bundle.item_vectors[found.items[known]] @ np.asarray(vector, np.float32))[::-1]
    keep = [j for j, i in enumerate(view.new_ids) if i not in not_new]
    if not keep:
        return found
    new_dots = view.new_vectors[keep] @ np.asarray(vector, np.float32)
    place = np.searchsorted(-dots, -new_dots, side="right")
    weight = sum(fusion.weights.get(name, 0.0) for name in fusion.used)
    new_scores = (weight / (fusion.k + place + 1.0)).astype(np.float32)
    items = np.concatenate([found.items, n_bundle + np.array(keep, np.int64)])
    scores = np.concatenate([found.scores, new_scores]).astype(np.float32)
    sources = [*found.sources, *[(fusion.primary,)] * len(keep)]
    order = np.argsort(-scores, kind="stable")[:n]
    found.items, found.scores = items[order], scores[order]
    found.sources = [sources[j] for j in order]
    return found


def fused_source(bundle: RetrievalData) -> bool:
    sources = (getattr(bundle, "item_item", None), getattr(bundle, "ials", None))
    return any(s is not None for s in sources) and bundle.fusion is not None


def fused_shortlist(
    bundle: RetrievalData,
    found: Shortlist,
    history: np.ndarray,
    exclude: np.ndarray,
    n: int,
    recent: np.ndarray | None = None,
    short_term: ShortTerm = SHORT_TERM,
) -> Shortlist:
    """`found` (the vector search's top, at least `fusion.depth`) fused with the item-item
    and weighted-MF sources over the user's `history` and popularity, each source's top
    `fusion.depth`, by the bundle's fusion weights, cut at `n`; `exclude`d items never come.
    `recent` (a user with live likes: their newest likes, newest first) weigh more by
    `short_term` (`shortlist.models.ials.recency_confidence`) in the weighted-MF user step
    and in the item-item sum, as the vector search's short-term part does."""
    fusion = bundle.fusion
    primary = fusion.primary
    depth = fusion.depth
    lists = {primary: found.items[:depth]}
    # each like's weight in both sources' sums, once per request
    conf = recency_confidence(history, recent, short_term) if recent is not None else None
    if fusion.weights.get("item-item", 0) > 0:
        table = bundle.item_item
        lists["item-item"] = item_item_scores(table, history, exclude, depth, conf)[0]
    mf = getattr(bundle, "ials", None)
    if fusion.weights.get("ials", 0) > 0 and mf is not None:
        index = getattr(bundle, "ials_index", None)
        if index is None or not len(history):
            lists["ials"] = mf.top(history, exclude, depth, conf)
        else:
            vector = mf.user_vector(history, conf)
            lists["ials"] = search(index, vector, depth, exclude)[0].astype(np.int64)
    if fusion.weights.get("popularity", 0) > 0:
        lists["popularity"] = bundle.popular_items(depth, exclude)
    width = max(len(v) for v in lists.values())
    rows = {
        s: np.pad(v.astype(np.int64), (0, width - len(v)), constant_values=-1)[None]
        for s, v in lists.items()
    }
    fused = fuse(rows, fusion, n)
    keep = fused.items[0] >= 0
    return Shortlist(
        fused.items[0][keep],
        fused.scores[0][keep],
        found.user_source,
        found.answer,
        fused.sources(0),
    )


def similar_items(bundle: RetrievalData, item_index: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return search(bundle.index, bundle.item_vectors[item_index], k, np.array([item_index]))


def similar_to(
    bundle: RetrievalData, item_id: str, k: int, view: CatalogueView = EMPTY
) -> tuple[list[str], np.ndarray] | None:
    """The k items most similar to `item_id` (a bundle item or a folded-in new one), hidden
    items left out, new items merged in; None when the item is unknown or hidden."""
    if item_id in view.hidden_ids:
        return None
    n_items = len(bundle.items)
    item = bundle.items.get(item_id)
    if item is not None:
        query = bundle.item_vectors[item]
        exclude = np.union1d([item], view.hidden)
    elif item_id in view.new_ids:
        query = view.new_vectors[view.new_ids.index(item_id)]
        exclude = view.hidden
    else:
        return None
    idx, scores = search(bundle.index, query, k, exclude)
    idx, scores = merge_new_items(idx, scores, query, view, k, n_items, {item_id})
    return [bundle.items.id(i) if i < n_items else view.new_ids[i - n_items] for i in idx], scores
