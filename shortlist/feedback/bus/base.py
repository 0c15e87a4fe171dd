"""Interfaces of the feedback bus."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from shortlist.feedback.events import Event


class BusUnavailable(RuntimeError):
    """The broker did not acknowledge in time: the client must not be told OK."""


@dataclass(frozen=True)
class Record:
    value: bytes
    partition: int
    offset: int
    key: bytes | None = None
    topic: str = ""


MALFORMED = "malformed"  # not a valid event
TOO_LARGE = "too_large"  # over Settings.feedback_max_record_bytes, not decoded
APPLY_FAILED = "apply_failed"  # a valid event whose apply kept raising (poison)


@dataclass(frozen=True)
class DeadLetter:
    """A record the consumer could not use: parked with its original bytes, the reason (a
    sentence) and its class (MALFORMED, TOO_LARGE or APPLY_FAILED)."""

    record: Record
    reason: str
    kind: str = MALFORMED


class EventPublisher(Protocol):
    def publish(self, events: Sequence[Event], timeout_s: float) -> None:
        """Return only once the broker has acknowledged every event; else BusUnavailable."""
        ...

    def close(self) -> None: ...


class EventConsumer(Protocol):
    def poll(self, timeout_ms: int, max_records: int) -> list[Record]: ...

    def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> None:
        """Commit the position after the last polled records (call after applying them),
        or the given next offsets by (topic, partition) when polling runs ahead."""
        ...

    def has_assignment(self) -> bool: ...

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Consume again from these offsets by (topic, partition); partitions no longer
        assigned are left alone (their new owner finds the same gap)."""
        ...

    def lag(self) -> int:
        """Records behind the end of the assigned partitions (0 when unknown)."""
        ...

    def log_end(self, topic: str, partition: int) -> int | None:
        """The partition's end offset as last seen by this consumer (None when unknown)."""
        ...

    def close(self) -> None: ...


class DeadLetterPublisher(Protocol):
    def park(self, letters: Sequence[DeadLetter], timeout_s: float) -> None:
        """Return only once the broker has acknowledged every letter; else BusUnavailable."""
        ...

    def close(self) -> None: ...
