"""The retrieval stage at request time: a user's shortlist from a bundle and their live state.

A trained user whose vector feedback has not moved is answered from the bundle's
precomputed shortlist; a folded-in or trained user otherwise by the ANN index (through the
search memo when given); an unknown user by popularity. Never an item of the user's
training interactions, live seen or disliked items, or the request's exclusions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import faiss
import numpy as np
import scipy.sparse as sp

from shortlist.data.ids import IdMap
from shortlist.data.interactions import row_items
from shortlist.feedback.stores.base import UserState
from shortlist.retrieval.index import RefinedIndex, search, served_index
from shortlist.retrieval.memo import SearchMemo
from shortlist.retrieval.precomputed import PrecomputedShortlists


class RetrievalData(Protocol):
    """What retrieval reads of a bundle (`shortlist.bundle.Bundle` has it all)."""

    users: IdMap
    items: IdMap
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    index: faiss.Index | RefinedIndex | None
    seen: sp.csr_matrix
    popularity: np.ndarray
    precomputed: PrecomputedShortlists | None

    def popular_items(self, n: int, exclude: np.ndarray | None = None) -> np.ndarray: ...


CHECK_QUERIES = 200  # users whose exact top-200 decides whether the compressed index serves


@dataclass
class Shortlist:
    items: np.ndarray  # item indices, best first
    scores: np.ndarray
    user_source: str  # "trained", "folded_in" or "popularity"
    # how it was found: "precomputed" (the bundle's shortlist of a trained user), "memo"
    # (the search memo), "search" (the ANN index) or "popularity"
    answer: str = "search"


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
    return bundle


def live_exclusions(bundle: RetrievalData, state: UserState, extra: Sequence[str]) -> np.ndarray:
    """Live seen and disliked items and the request's exclusions, as item indices."""
    return np.unique(bundle.items.indices([*state.seen, *state.disliked, *extra]))


def retrieve(
    bundle: RetrievalData,
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


def similar_items(bundle: RetrievalData, item_index: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return search(bundle.index, bundle.item_vectors[item_index], k, np.array([item_index]))
