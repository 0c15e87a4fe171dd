"""The state-store interface shared by the Redis and in-memory backends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from shortlist.events import Event, Kind

HISTORY_LENGTH = 200  # bounded recent-history list per user
DEDUP_TTL_S = 7 * 86400  # how long an event id is remembered for deduplication


class StoreUnavailable(RuntimeError):
    """The backend could not be reached; callers fall back or report UNAVAILABLE."""


@dataclass
class UserState:
    """What retrieval needs of a user, fetched in one round trip."""

    vector: np.ndarray | None = None
    seen: set[str] = field(default_factory=set)
    disliked: set[str] = field(default_factory=set)


@dataclass
class RankingSignals:
    """What ranking needs: recent history (newest first), live like counts, activity."""

    history: list[tuple[str, Kind]]
    live_likes: np.ndarray
    likes: int


@dataclass
class PendingBatch:
    """The first half of applying a batch: which events are new, and the users' histories."""

    new: list[bool]
    histories: dict[str, list[tuple[str, Kind]]]


class StateStore(Protocol):
    def ping(self) -> None: ...

    def user_state(self, user_id: str, version: str) -> UserState: ...

    def ranking_signals(self, user_id: str, item_ids: Sequence[str]) -> RankingSignals: ...

    def prepare(self, events: Sequence[Event]) -> PendingBatch: ...

    def apply(
        self, events: Sequence[Event], vectors: Mapping[str, np.ndarray], version: str
    ) -> None:
        """Apply events that `prepare` found new, and the users' new vectors, atomically;
        marks the event ids so that a replay is recognised by the next `prepare`."""
        ...

    def close(self) -> None: ...


def encode_history(item_id: str, kind: Kind) -> str:
    return f"{int(kind)}:{item_id}"


def decode_history(entry: str | bytes) -> tuple[str, Kind]:
    text = entry.decode() if isinstance(entry, bytes) else entry
    kind, _, item = text.partition(":")
    return item, Kind(int(kind))
