"""The live catalogue as retrieval serves it: hidden and removed items left out of every
answer, new items (folded in from their likers since training) scored beside the bundle's.

Read cheaply by generation counter, not TTL: the store counts every catalogue change
(`CatalogueState.generation`), a Recommend already reads the counter with the user's state
(same round trip) and SimilarItems reads it alone (one GET); the hidden set and new-item
vectors are re-read only when it moved. So a hide or show is served by the very next
request, and an unchanged catalogue costs no extra read on Recommend.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from shortlist.data.ids import IdMap
from shortlist.feedback.stores.base import StateStore, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogueView:
    """The live catalogue against one bundle version."""

    generation: int = -1
    hidden_ids: frozenset[str] = frozenset()
    hidden: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # bundle indices
    new_ids: tuple[str, ...] = ()  # new items with a vector, none hidden nor in the bundle
    new_vectors: np.ndarray | None = None  # (len(new_ids), dim) float32


EMPTY = CatalogueView()


def merge_new_items(
    items: np.ndarray,
    scores: np.ndarray,
    query: np.ndarray,
    view: CatalogueView,
    n: int,
    n_bundle_items: int,
    exclude: Collection[str] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's top (indices, scores, best first) merged with the new items scored by a
    dot product with `query`; a new item j gets index `n_bundle_items + j`. Exact over
    the new items, which are few between trainings; top-n kept."""
    if not view.new_ids:
        return items, scores
    new_scores = view.new_vectors @ np.asarray(query, np.float32)
    keep = np.array([i not in exclude for i in view.new_ids], bool)
    if not keep.any():
        return items, scores
    all_items = np.concatenate([items, n_bundle_items + np.flatnonzero(keep)]).astype(np.int64)
    all_scores = np.concatenate([scores, new_scores[keep]]).astype(np.float32)
    order = np.argsort(-all_scores, kind="stable")[:n]
    return all_items[order], all_scores[order]


class LiveCatalogue:
    """Cached catalogue views per bundle version, refreshed when the generation moves."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._views: dict[str, CatalogueView] = {}
        self._lock = threading.Lock()

    def view(self, version: str, items: IdMap, generation: int | None = None) -> CatalogueView:
        """The view for bundle `version` at `generation` (None: read the counter; negative:
        the store is known to be away). When the store cannot be reached, the last view
        read (empty before any): the state store being away must not stop serving."""
        cached = self._views.get(version, EMPTY)
        if generation is not None and generation < 0:
            return cached  # the caller knows the store is away
        try:
            if generation is None:
                generation = self.store.catalogue_generation()
            if generation == cached.generation:
                return cached
            state = self.store.catalogue(version)
        except StoreUnavailable as exc:
            log.warning(
                "live catalogue unavailable, serving generation %d: %s", cached.generation, exc
            )
            return cached
        new_ids = tuple(
            i for i in sorted(state.vectors) if i not in state.hidden and i not in items
        )
        view = CatalogueView(
            generation=state.generation,
            hidden_ids=frozenset(state.hidden),
            hidden=np.unique(items.indices(list(state.hidden))),
            new_ids=new_ids,
            new_vectors=np.stack([state.vectors[i] for i in new_ids]) if new_ids else None,
        )
        with self._lock:
            if view.generation >= self._views.get(version, EMPTY).generation:
                self._views[version] = view
        return view

    def release(self, version: str) -> None:
        self._views.pop(version, None)
