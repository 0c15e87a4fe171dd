"""Live like counts of the catalogue's items, for the ranking features, kept in process.

Item counters are global and change slowly next to a request rate: fetching 200 of them
per request cost more CPU than the user's whole state
(docs/decisions/0005-one-redis-round-trip.md). So the ranking servicer reads all of them
at most every `refresh_s`, in a background thread (a request never waits for the read),
and looks candidates up in an array. The price: counts lag the feedback by up to
`refresh_s` plus one read. With `refresh_s` 0 every lookup reads the store first (exact,
for tests and small setups).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from shortlist.data.ids import IdMap
from shortlist.feedback.stores.base import StateStore, StoreUnavailable

log = logging.getLogger(__name__)


class LiveItemLikes:
    def __init__(
        self,
        store: StateStore,
        refresh_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._arrays: dict[str, np.ndarray] = {}  # bundle version -> counts by item index
        self._read_at = -float("inf")
        self._reading = False

    def refresh(self) -> None:
        """Read every item's count now; on a store failure the last counts stay."""
        try:
            counts = self.store.item_likes()
        except StoreUnavailable as exc:
            log.warning("live item likes not refreshed: %s", exc)
            counts = None
        with self._lock:
            if counts is not None:
                self._counts, self._arrays = counts, {}
            self._read_at = self.clock()
            self._reading = False

    def release(self, version: str) -> None:
        """Forget the counts kept for a bundle version no longer served."""
        with self._lock:
            self._arrays.pop(version, None)

    def counts(self, version: str, items: IdMap) -> np.ndarray:
        """float32 live likes by item index of bundle `version` (its catalogue `items`);
        starts a background read when the last one is older than `refresh_s`."""
        if self.refresh_s <= 0:
            self.refresh()
        with self._lock:
            stale = self.clock() - self._read_at >= self.refresh_s
            if self.refresh_s > 0 and stale and not self._reading:
                self._reading = True
                threading.Thread(target=self.refresh, name="item-likes", daemon=True).start()
            found = self._arrays.get(version)
            if found is None:
                found = np.zeros(len(items), np.float32)
                if self._counts:
                    idx = items.positions(list(self._counts))
                    known = idx >= 0
                    found[idx[known]] = np.fromiter(self._counts.values(), np.float32)[known]
                self._arrays[version] = found
            return found
