"""Rebuilding the live state (Redis) from the event log: the feedback archive, then the
feedback topic from its earliest offset, both replayed through the feedback worker's own
path (decode, dedup by event id, fold-in, the atomic apply, FORGET events, poison
handling), so the state rebuilt is the state the worker would have built.

Order: archive files by the time they were written (their name), rows in the order the
archiver consumed them, which keeps each user's events in topic order (a user's events
share a partition); then the topic. Events in both are applied once: the event-id marks
make the second a duplicate. The topic is read in a consumer group of its own, so the
live workers' offsets never move.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from shortlist.config import Settings
from shortlist.feedback.bus.base import EventConsumer, Record
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores.base import StateStore
from shortlist.feedback.vectors import FoldInData
from shortlist.feedback.worker import FeedbackWorker

ARCHIVE_TOPIC = "archive"  # the topic name replayed archive records carry


def archive_files(root: Path) -> list[Path]:
    """The archive's Parquet files in the order they were written: by the time in their
    name (`part-<time_ns>-<id>.parquet`), then event date (the files of one write)."""

    def written(path: Path) -> tuple[int, str, str]:
        stamp = path.name.split("-")[1] if path.name.count("-") >= 2 else ""
        return (int(stamp) if stamp.isdigit() else 0, path.parent.name, path.name)

    return sorted(root.glob("date=*/part-*.parquet"), key=written)


def archive_events(root: Path) -> Iterator[Event]:
    """Every archived event, in the order written (duplicates included: the worker's
    dedup drops them)."""
    for path in archive_files(root):
        table = pq.read_table(path, columns=["event_id", "user_id", "item_id", "kind", "timestamp"])
        columns = table.to_pydict()
        for event_id, user, item, kind, seconds in zip(
            columns["event_id"],
            columns["user_id"],
            columns["item_id"],
            columns["kind"],
            columns["timestamp"],
        ):
            yield Event(event_id, user, item or "", Kind[kind.upper()], round(seconds * 1000))


class ReplayConsumer:
    """An EventConsumer over records in hand (the archive's events, encoded as on the topic),
    so that the worker applies them exactly as it applies the topic's."""

    def __init__(self, values: Iterable[bytes]) -> None:
        self._values = iter(values)
        self.offset = 0

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        out = []
        for value in self._values:
            out.append(Record(value, 0, self.offset, topic=ARCHIVE_TOPIC))
            self.offset += 1
            if len(out) == max_records:
                break
        return out

    def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> None:
        return None

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """The worker seeks back when the store lost writes mid-rebuild; records in hand
        cannot be read again, so the rebuild stops and must be run again."""
        raise RuntimeError(f"the state store lost writes during the rebuild (at {offsets})")

    def has_assignment(self) -> bool:
        return True

    def lag(self) -> int:
        return 0

    def log_end(self, topic: str, partition: int) -> int | None:
        return None  # replayed records carry their own offsets; no reset from a rebuild

    def close(self) -> None:
        return None


@dataclass
class RebuildReport:
    archive_records: int = 0
    topic_records: int = 0
    applied: int = 0
    duplicates: int = 0
    malformed: int = 0  # not valid events, or too large
    poisoned: int = 0  # valid events whose apply kept raising

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def rebuild_group(settings: Settings) -> str:
    """A consumer group of the rebuild's own (the live workers' offsets never move)."""
    return f"{settings.feedback_group}-rebuild-{uuid.uuid4().hex[:8]}"


def rebuild_state(
    bundle: FoldInData,
    store: StateStore,
    settings: Settings,
    archive: Path | None = None,
    topic: EventConsumer | None = None,
    idle_polls: int = 5,
    poll_ms: int = 1000,
    assign_timeout_s: float = 60,
) -> RebuildReport:
    """Apply the archive's events, then the topic's from `topic` (a consumer positioned at
    the earliest offset, in a group of its own) until `idle_polls` polls in a row find
    nothing; returns what was read and what the worker did with it."""
    report = RebuildReport()
    worker = FeedbackWorker(bundle, store, ReplayConsumer(()), settings, dead_letters=None)
    if archive is not None:
        replay = ReplayConsumer(e.encode() for e in archive_events(archive))
        worker.consumer = replay
        while worker.run_once(0):
            pass
        report.archive_records = replay.offset
    if topic is not None:
        worker.consumer = topic
        idle, deadline = 0, time.monotonic() + assign_timeout_s
        while idle < idle_polls:
            polled = worker.run_once(poll_ms)
            report.topic_records += polled
            if polled:
                idle = 0
            elif topic.has_assignment():  # nothing left (not: the group still joining)
                idle += 1
            elif time.monotonic() > deadline:
                raise TimeoutError(f"no partitions assigned within {assign_timeout_s:g}s")
        topic.close()
    report.applied, report.duplicates = worker.applied, worker.duplicates
    report.malformed, report.poisoned = worker.malformed, worker.poisoned
    return report
