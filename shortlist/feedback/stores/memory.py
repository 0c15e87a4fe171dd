"""In-process state store: the embedded default for `shortlist demo`, not for production."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores.base import (
    HISTORY_LENGTH,
    PREFERENCE_KINDS,
    CatalogueItems,
    CatalogueState,
    Conflict,
    PendingBatch,
    UserFeedback,
    UserState,
)


class InMemoryStateStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, set[str]] = defaultdict(set)
        self._disliked: dict[str, set[str]] = defaultdict(set)
        self._history: dict[str, list[tuple[str, Kind]]] = defaultdict(list)
        self._vectors: dict[tuple[str, str], np.ndarray] = {}
        self._likes: dict[str, int] = defaultdict(int)
        self._item_likes: dict[str, int] = defaultdict(int)
        self._events: set[str] = set()
        self._kinds: dict[str, dict[str, int]] = defaultdict(dict)
        self._seq: dict[str, int] = defaultdict(int)
        self._generation = 0
        self._offsets: dict[tuple[str, str, int], int] = {}
        self._hidden: set[str] = set()
        self._removed: set[str] = set()
        self._attributes: dict[str, dict[str, str]] = {}
        self._updated_ms: dict[str, int] = {}
        self._item_feedback: dict[str, dict[str, int]] = defaultdict(dict)  # new items
        self._item_vectors: dict[tuple[str, str], np.ndarray] = {}  # (item, version)

    def ping(self) -> None:
        return None

    def user_state(self, user_id: str, version: str) -> UserState:
        with self._lock:
            vec = self._vectors.get((user_id, version))
            return UserState(
                vector=None if vec is None else vec.copy(),
                seen=set(self._seen.get(user_id, ())),
                disliked=set(self._disliked.get(user_id, ())),
                history=list(self._history.get(user_id, ())),
                likes=self._likes.get(user_id, 0),
                catalogue_generation=self._generation,
            )

    def record_offsets(
        self,
        group: str,
        ranges: Mapping[tuple[str, int], tuple[int, int]],
        log_ends: Mapping[tuple[str, int], int] | None = None,
    ) -> dict[tuple[str, int], int]:
        gaps = {}
        with self._lock:
            for (topic, partition), (start, end) in ranges.items():
                stored = self._offsets.get((group, topic, partition))
                log_end = (log_ends or {}).get((topic, partition))
                if stored is not None and log_end is not None and stored > log_end:
                    self._offsets[group, topic, partition] = min(max(start, end), log_end)
                elif stored is not None and stored < start:
                    gaps[topic, partition] = stored
                elif end and (stored is None or stored < end):
                    self._offsets[group, topic, partition] = end
        return gaps

    def drop_vectors(self, version: str) -> int:
        with self._lock:
            gone = [key for key in self._vectors if key[1] == version]
            for key in gone:
                del self._vectors[key]
            for key in [k for k in self._item_vectors if k[1] == version]:
                del self._item_vectors[key]
            return len(gone)

    def item_likes(self) -> dict[str, int]:
        with self._lock:
            return {i: n for i, n in self._item_likes.items() if n}

    def prepare(
        self, events: Sequence[Event], version: str = "", complete: bool = False
    ) -> PendingBatch:
        with self._lock:
            items: dict[str, set[str]] = defaultdict(set)
            for e in events:
                items[e.user_id].add(e.item_id)
            users: dict[str, UserFeedback] = {}
            for user, batch_items in items.items():
                vec = self._vectors.get((user, version))
                whole = complete or vec is None
                kinds = self._kinds.get(user, {})
                if not whole:
                    kinds = {i: kinds[i] for i in batch_items if i in kinds}
                users[user] = UserFeedback(
                    seq=self._seq.get(user, 0),
                    vector=None if vec is None or complete else vec.copy(),
                    kinds=dict(kinds),
                    complete=whole,
                )
            return PendingBatch(new=[e.event_id not in self._events for e in events], users=users)

    def apply(
        self,
        events: Sequence[Event],
        vectors: Mapping[str, np.ndarray],
        version: str,
        expected: Mapping[str, int] | None = None,
        new_items: Collection[str] = (),
    ) -> None:
        with self._lock:
            if any(e.event_id in self._events for e in events):
                raise Conflict("an event of the batch is already applied")
            if expected is not None and any(self._seq.get(u, 0) != n for u, n in expected.items()):
                raise Conflict("a user changed since prepare")
            for user in {e.user_id for e in events}:
                self._seq[user] += 1
            for e in events:
                self._kinds[e.user_id][e.item_id] = int(e.kind)
                self._events.add(e.event_id)
                self._seen[e.user_id].add(e.item_id)
                if e.kind == Kind.DISLIKE:
                    self._disliked[e.user_id].add(e.item_id)
                elif e.kind == Kind.LIKE:
                    self._disliked[e.user_id].discard(e.item_id)
                    self._likes[e.user_id] += 1
                    self._item_likes[e.item_id] += 1
                if (
                    e.kind in PREFERENCE_KINDS
                    and e.item_id in new_items
                    and e.item_id not in self._removed
                ):
                    self._item_feedback[e.item_id][e.user_id] = int(e.kind)
                hist = self._history[e.user_id]
                hist.insert(0, (e.item_id, e.kind))
                del hist[HISTORY_LENGTH:]
            for user, vec in vectors.items():
                self._vectors[(user, version)] = np.asarray(vec, np.float32).copy()

    def forget(self, event: Event) -> bool:
        user = event.user_id
        with self._lock:
            if event.event_id in self._events:
                return False
            for item, kind in self._kinds.pop(user, {}).items():
                self._item_feedback.get(item, {}).pop(user, None)
                if kind == Kind.LIKE and self._item_likes.get(item, 0) > 0:
                    self._item_likes[item] -= 1
            for table in (self._seen, self._disliked, self._history, self._likes, self._seq):
                table.pop(user, None)
            for key in [k for k in self._vectors if k[0] == user]:
                del self._vectors[key]
            self._events.add(event.event_id)
            return True

    def catalogue_generation(self) -> int:
        return self._generation

    def catalogue(self, version: str) -> CatalogueState:
        with self._lock:
            return CatalogueState(
                generation=self._generation,
                hidden=self._hidden | self._removed,
                removed=set(self._removed),
                vectors={
                    i: v.copy() for (i, ver), v in self._item_vectors.items() if ver == version
                },
            )

    def _changed(self, n: int) -> int:
        if n:
            self._generation += 1
        return n

    def upsert_items(self, items: Mapping[str, Mapping[str, str]]) -> int:
        with self._lock:
            n = 0
            for item, attributes in items.items():
                if item not in self._removed and self._attributes.get(item) != dict(attributes):
                    self._attributes[item] = dict(attributes)
                    self._updated_ms[item] = int(time.time() * 1000)
                    n += 1
            return self._changed(n)

    def catalogue_items(self) -> CatalogueItems:
        with self._lock:
            return CatalogueItems(
                generation=self._generation,
                attributes={i: dict(a) for i, a in self._attributes.items()},
                updated_ms=dict(self._updated_ms),
                hidden=self._hidden | self._removed,
            )

    def item_attributes(self, item_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        with self._lock:
            return {i: dict(self._attributes[i]) for i in item_ids if i in self._attributes}

    def hide_items(self, item_ids: Sequence[str]) -> int:
        with self._lock:
            new = set(item_ids) - self._hidden - self._removed
            self._hidden |= new
            return self._changed(len(new))

    def show_items(self, item_ids: Sequence[str]) -> int:
        with self._lock:
            shown = set(item_ids) & self._hidden
            self._hidden -= shown
            return self._changed(len(shown))

    def remove_items(self, item_ids: Sequence[str]) -> int:
        with self._lock:
            new = set(item_ids) - self._removed
            self._removed |= new
            self._hidden -= new
            for item in new:
                self._attributes.pop(item, None)
                self._updated_ms.pop(item, None)
                self._item_feedback.pop(item, None)
                self._item_likes.pop(item, None)
                for key in [k for k in self._item_vectors if k[0] == item]:
                    del self._item_vectors[key]
            return self._changed(len(new))

    def item_feedback(
        self, item_ids: Sequence[str], version: str
    ) -> dict[str, dict[str, tuple[int, np.ndarray | None]]]:
        with self._lock:
            out = {}
            for item in item_ids:
                if item in self._removed or not self._item_feedback.get(item):
                    continue
                out[item] = {
                    user: (kind, self._vectors.get((user, version)))
                    for user, kind in self._item_feedback[item].items()
                }
            return out

    def set_item_vectors(self, vectors: Mapping[str, np.ndarray], version: str) -> None:
        with self._lock:
            for item, vec in vectors.items():
                self._item_vectors[(item, version)] = np.asarray(vec, np.float32).copy()
            self._changed(len(vectors))

    def close(self) -> None:
        return None
