"""The state-store interface shared by the Redis and in-memory backends."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from shortlist.feedback.events import Event, Kind

HISTORY_LENGTH = 200  # bounded recent-history list per user
DEDUP_TTL_S = 7 * 86400  # how long an event id is remembered for deduplication
# How long a user's live state lives after their last write (Settings.state_ttl_s).
STATE_TTL_S = 90 * 86400


class StoreUnavailable(RuntimeError):
    """The backend could not be reached; callers fall back or report UNAVAILABLE."""


@dataclass
class UserState:
    """What a request needs of a user (retrieval and ranking), fetched in one round trip."""

    vector: np.ndarray | None = None
    seen: set[str] = field(default_factory=set)
    disliked: set[str] = field(default_factory=set)
    history: list[tuple[str, Kind]] = field(default_factory=list)  # newest first
    likes: int = 0  # live likes of the user
    catalogue_generation: int = 0  # `CatalogueState.generation` when the state was read


@dataclass
class RankingSignals:
    """What ranking needs live: the user's recent history (newest first) and like count
    (from their `UserState`), the candidates' live like counts (`shortlist.ranking.item_likes`)."""

    history: list[tuple[str, Kind]]
    live_likes: np.ndarray
    likes: int


@dataclass
class CatalogueState:
    """The live catalogue between trainings, for one bundle version, read in one round trip.

    `generation` counts every change (hide, show, remove, upsert, new-item vectors), so a
    reader that cached a state re-reads it only when the counter moved."""

    generation: int = 0
    hidden: set[str] = field(default_factory=set)  # hidden or removed: never served
    removed: set[str] = field(default_factory=set)  # hidden for good
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # folded-in new items


@dataclass
class CatalogueItems:
    """The live catalogue's item attributes as request rules read them (one round trip):
    upserted attributes, when each item was last upserted with a change (ms since the
    epoch), and the hidden or removed items."""

    generation: int = 0
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)
    updated_ms: dict[str, int] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)


# Kinds recorded per user for an item the bundle does not know (its fold-in reads them).
PREFERENCE_KINDS = frozenset({Kind.LIKE, Kind.DISLIKE, Kind.SKIP})


class Conflict(RuntimeError):
    """`apply` found a user changed (or an event applied) since `prepare`: nothing was
    written; prepare the events again."""


@dataclass
class UserFeedback:
    """A user's feedback state as `prepare` read it, for the fold-in of new events.

    `kinds` maps item id -> latest kind (an int of `Kind`): every item the user ever gave
    feedback on when `complete`, else only those among the batch's items. It is complete
    when asked for, and whenever no vector is stored for the bundle version (so that the
    vector can be computed from scratch). `seq` counts the applies that touched the user;
    `apply` writes only if it is unchanged.
    """

    seq: int = 0
    vector: np.ndarray | None = None
    kinds: dict[str, int] = field(default_factory=dict)
    complete: bool = True


@dataclass
class PendingBatch:
    """The first half of applying a batch: which events are new, and the users' state."""

    new: list[bool]
    users: dict[str, UserFeedback]


class StateStore(Protocol):
    def ping(self) -> None: ...

    def user_state(self, user_id: str, version: str) -> UserState: ...

    def item_likes(self) -> dict[str, int]:
        """Live like counts of every item liked since the bundle was trained."""
        ...

    def prepare(
        self, events: Sequence[Event], version: str = "", complete: bool = False
    ) -> PendingBatch:
        """Which events are new (one read for the whole batch), and the state of their users
        (`complete`: every user's whole item -> kind map, not only the batch's items)."""
        ...

    def apply(
        self,
        events: Sequence[Event],
        vectors: Mapping[str, np.ndarray],
        version: str,
        expected: Mapping[str, int] | None = None,
        new_items: Collection[str] = (),
    ) -> None:
        """Apply new events and the users' new vectors, each user's atomically (all of
        their events, vector and seq, or nothing of them), marking the event ids so that a
        replay is recognised by the next `prepare`. Raises `Conflict`, having written
        nothing of that user, when one of a user's event ids is already marked or (with
        `expected`) their `seq` is no longer the one `prepare` read; the other users' may
        be written (on a Redis Cluster their keys live on other masters). Events of
        `PREFERENCE_KINDS` on `new_items` (unknown to the bundle, not removed) also record
        the user's kind per item, which the item's fold-in reads (`item_feedback`). FORGET
        events never come here (`forget`)."""
        ...

    def forget(self, event: Event) -> bool:
        """Apply a FORGET event atomically: delete all of the user's live state (seen,
        disliked, history, likes, kinds, vectors of every version, their part in the item
        like counts and in new items' feedback) and mark the event id. False, and nothing
        done, when the event id is already marked."""
        ...

    def catalogue_generation(self) -> int:
        """The change counter of the live catalogue (one cheap read)."""
        ...

    def catalogue(self, version: str) -> CatalogueState:
        """Hidden and removed items, and new items' vectors for bundle `version`."""
        ...

    def upsert_items(self, items: Mapping[str, Mapping[str, str]]) -> int:
        """Set items' attributes; returns how many changed (removed items never do). A
        changed item's upsert time is recorded (the freshness rule reads it)."""
        ...

    def catalogue_items(self) -> CatalogueItems:
        """Every upserted item's attributes and upsert time, and the hidden items."""
        ...

    def item_attributes(self, item_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Attributes of upserted items (those without are left out)."""
        ...

    def hide_items(self, item_ids: Sequence[str]) -> int: ...

    def show_items(self, item_ids: Sequence[str]) -> int:
        """Un-hide; a removed item stays hidden."""
        ...

    def remove_items(self, item_ids: Sequence[str]) -> int:
        """Hide for good and delete the items' live state (attributes, vectors, feedback,
        like counts)."""
        ...

    def item_feedback(
        self, item_ids: Sequence[str], version: str
    ) -> dict[str, dict[str, tuple[int, np.ndarray | None]]]:
        """Per new item (removed ones left out): user -> (latest kind, the user's folded-in
        vector for `version` or None)."""
        ...

    def set_item_vectors(self, vectors: Mapping[str, np.ndarray], version: str) -> None:
        """Store new items' folded-in vectors for `version` (moves the generation)."""
        ...

    def drop_vectors(self, version: str) -> int:
        """Delete every user's folded-in vector for a bundle version no longer served, and
        the new items' vectors of that version; returns how many users' were deleted."""
        ...

    def record_offsets(
        self,
        group: str,
        ranges: Mapping[tuple[str, int], tuple[int, int]],
        log_ends: Mapping[tuple[str, int], int] | None = None,
    ) -> dict[tuple[str, int], int]:
        """Store the consumer group's next offset per (topic, partition) once the state it
        describes is written; `ranges` maps each to (from, next): the batch consumed
        from..next-1 without a hole. Answers partitions whose stored offset is below
        `from` (the store lost writes since, e.g. Redis restarted from an AOF missing its
        tail), with that offset, writing nothing for them: the consumer must go back there.
        A `next` of 0 only checks. `log_ends`: each partition's log end as the consumer last
        saw it; a stored offset above it means the log was made again (a topic deleted and
        created, a broker that lost its log), where the stored offset would hide every gap
        until the new log grew past it: it is reset to this range's end instead."""
        ...

    def close(self) -> None: ...


def encode_history(item_id: str, kind: Kind) -> str:
    return f"{int(kind)}:{item_id}"


def decode_history(entry: str | bytes) -> tuple[str, Kind]:
    text = entry.decode() if isinstance(entry, bytes) else entry
    kind, _, item = text.partition(":")
    return item, Kind(int(kind))
