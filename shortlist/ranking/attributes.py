"""Item attributes as request rules read them: the bundle's (the items file it was trained
with, as text) overlaid by the live catalogue's (FeedbackAdmin.UpsertItems), with each
upserted item's upsert time (the only item timestamp the system keeps: the freshness rule's
source) and the hidden items.

The live part is cached per catalogue generation, as `shortlist.retrieval.catalogue` does:
a Recommend already reads the generation with the user's state, so an unchanged catalogue
costs no read; a change is read once (every upserted item, one round trip).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

from shortlist.data.ids import IdMap
from shortlist.feedback.stores.base import CatalogueItems, StateStore, StoreUnavailable

log = logging.getLogger(__name__)

EMPTY = CatalogueItems(generation=-1)


class ItemAttributes:
    """One bundle's item attributes with the live catalogue's on top (per attribute: an
    upserted value wins)."""

    def __init__(
        self,
        index: Mapping[str, int] | IdMap,
        values: Mapping[str, Sequence[str]],
        live: CatalogueItems = EMPTY,
    ) -> None:
        self.index = index  # bundle item id -> index
        self.values = values  # attribute -> value per bundle item ("" none)
        self.live = live
        self.names = frozenset(values) | {n for a in live.attributes.values() for n in a}

    def value(self, item_id: str, name: str) -> str:
        """The item's value of attribute `name`, "" when it has none."""
        upserted = self.live.attributes.get(item_id)
        if upserted is not None and name in upserted:
            return str(upserted[name])
        column = self.values.get(name)
        i = self.index.get(item_id)
        return "" if column is None or i is None else column[i]

    def updated_ms(self, item_id: str) -> int | None:
        """When the item was last upserted with a change (ms since the epoch), if ever."""
        return self.live.updated_ms.get(item_id)

    def known(self, item_id: str) -> bool:
        """In the bundle or upserted since, and not hidden."""
        if item_id in self.live.hidden:
            return False
        return item_id in self.index or item_id in self.live.attributes


class LiveCatalogueItems:
    """The live catalogue's `CatalogueItems`, re-read when its generation moves; the last
    read (empty before any) while the store is away."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._cached = EMPTY
        self._lock = threading.Lock()

    def get(self, generation: int | None) -> CatalogueItems:
        """At `generation` (None: read the counter; negative: the store is known away)."""
        cached = self._cached
        if generation is not None and generation < 0:
            return cached
        try:
            if generation is None:
                generation = self.store.catalogue_generation()
            if generation == cached.generation:
                return cached
            found = self.store.catalogue_items()
        except StoreUnavailable as exc:
            log.warning("live item attributes unavailable, serving the last read: %s", exc)
            return cached
        with self._lock:
            if found.generation >= self._cached.generation:
                self._cached = found
        return found
