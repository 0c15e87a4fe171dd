"""A single-partition in-process log with committed offsets: the quickstart's bus."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from shortlist.feedback.bus.base import Record
from shortlist.feedback.events import Event


class InMemoryBus:
    """Holds the log; `publisher()` and `consumer()` give the two sides of the interface."""

    def __init__(self) -> None:
        self._log: list[bytes] = []
        self._committed = 0
        self._cond = threading.Condition()

    def publisher(self) -> _Publisher:
        return _Publisher(self)

    def consumer(self) -> _Consumer:
        """A consumer that resumes from the last committed offset, as a group member would."""
        return _Consumer(self)

    def append(self, values: Sequence[bytes]) -> None:
        with self._cond:
            self._log.extend(values)
            self._cond.notify_all()


class _Publisher:
    def __init__(self, bus: InMemoryBus) -> None:
        self._bus = bus

    def publish(self, events: Sequence[Event], timeout_s: float) -> None:
        self._bus.append([e.encode() for e in events])

    def close(self) -> None:
        return None


class _Consumer:
    def __init__(self, bus: InMemoryBus) -> None:
        self._bus = bus
        with bus._cond:
            self._position = bus._committed

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        bus = self._bus
        with bus._cond:
            if self._position >= len(bus._log):
                bus._cond.wait(timeout_ms / 1000)
            values = bus._log[self._position : self._position + max_records]
            records = [Record(v, 0, self._position + n) for n, v in enumerate(values)]
            self._position += len(values)
            return records

    def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> None:
        with self._bus._cond:
            self._bus._committed = max(offsets.values()) if offsets else self._position

    def has_assignment(self) -> bool:
        return True

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        with self._bus._cond:
            for offset in offsets.values():
                self._position = offset

    def lag(self) -> int:
        with self._bus._cond:
            return len(self._bus._log) - self._position

    def log_end(self, topic: str, partition: int) -> int | None:
        with self._bus._cond:
            return len(self._bus._log)

    def close(self) -> None:
        return None
