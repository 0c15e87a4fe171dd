"""In-process state store: the embedded default for `shortlist demo`, not for production."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores.base import (
    HISTORY_LENGTH,
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
            )

    def drop_vectors(self, version: str) -> int:
        with self._lock:
            gone = [key for key in self._vectors if key[1] == version]
            for key in gone:
                del self._vectors[key]
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
                hist = self._history[e.user_id]
                hist.insert(0, (e.item_id, e.kind))
                del hist[HISTORY_LENGTH:]
            for user, vec in vectors.items():
                self._vectors[(user, version)] = np.asarray(vec, np.float32).copy()

    def close(self) -> None:
        return None
