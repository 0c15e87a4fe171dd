"""The feedback archive: every event of the feedback topic appended to Parquet files by
event date, so that training can read what users did (`shortlist train --events <archive>`).

The archiver is a consumer group of its own (Settings.archive_group): it reads every event
whatever the feedback worker does, at its own pace. Events are buffered and written when
`archive_file_events` have arrived or `archive_flush_ms` has passed since the first one:
one file per event date (UTC), `<archive_path>/date=YYYY-MM-DD/part-<time>-<id>.parquet`,
written under a hidden temporary name, fsynced, renamed, and its directory fsynced; only
then are the offsets committed. Files are never rewritten or deleted, so a reader never
sees half a file, and one archiver writes an archive directory (a leftover temporary file
is an unfinished write of its own, removed at start).

Duplicates are removed when reading, not avoided when writing: a crash between a file's
rename and the commit replays those events, which land again in another file (batches
are not cut at the same offsets twice, so a file cannot be named by what it holds). The
archive is at least once; shortlist.data.events keeps one row per event id (which also
removes an event a client sent twice). Records that do not decode are counted and
skipped: the feedback worker parks them on the dead-letter topic.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shortlist.config import Settings
from shortlist.feedback.bus.base import EventConsumer, Record
from shortlist.feedback.events import Event
from shortlist.rpc.telemetry import EVENTS_ARCHIVED

log = logging.getLogger(__name__)

# What shortlist.data.events reads: kind as text, timestamp in epoch seconds.
SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("kind", pa.string()),
        ("timestamp", pa.float64()),
    ]
)
TEMPORARY = ".parquet.tmp"


def events_table(events: Sequence[Event]) -> pa.Table:
    """The events as the archive's columns."""
    return pa.table(
        {
            "event_id": [e.event_id for e in events],
            "user_id": [e.user_id for e in events],
            "item_id": [e.item_id for e in events],
            "kind": [e.kind.name.lower() for e in events],
            "timestamp": [e.timestamp_ms / 1000 for e in events],
        },
        schema=SCHEMA,
    )


def write_events(root: Path, events: Sequence[Event]) -> list[Path]:
    """Write `events` durably, one new file per event date; returns the files written."""
    if not events:
        return []
    table = events_table(events)
    millis = pc.multiply(table.column("timestamp"), 1000).cast(pa.int64())
    dates = pc.strftime(millis.cast(pa.timestamp("ms", tz="UTC")), format="%Y-%m-%d")
    written = []
    stamp = time.time_ns()
    for date in pc.unique(dates).to_pylist():
        part = table.filter(pc.equal(dates, date))
        directory = root / f"date={date}"
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            _fsync_dir(directory.parent)
        path = directory / f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        _write_durably(part, path)
        written.append(path)
    return written


def _write_durably(table: pa.Table, path: Path) -> None:
    """Temporary file, fsync, rename, fsync of the directory: after a crash the file is
    either whole or absent."""
    tmp = path.with_name(f".{path.stem}{TEMPORARY}")
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_unfinished(root: Path) -> int:
    """Delete temporary files a crash left (their events were not committed: they come
    again); returns how many."""
    found = list(root.rglob(f".*{TEMPORARY}")) if root.is_dir() else []
    for path in found:
        path.unlink(missing_ok=True)
    return len(found)


class Archiver:
    """Consumes the feedback topic and writes the archive; offsets are committed only once
    the files holding the events are durable."""

    def __init__(
        self, consumer: EventConsumer, settings: Settings, root: Path | None = None
    ) -> None:
        self.consumer = consumer
        self.settings = settings
        self.root = Path(root if root is not None else settings.archive_path)
        self.archived = 0
        self.malformed = 0
        self.files = 0
        self._events: list[Event] = []
        self._offsets: dict[tuple[str, int], int] = {}
        self._first_at: float | None = None  # monotonic time of the first unwritten record
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        removed = remove_unfinished(self.root)
        if removed:
            log.info("removed %d unfinished archive file(s) under %s", removed, self.root)

    def run_once(self, timeout_ms: int = 200) -> int:
        """Poll one batch (unless a full file waits to be written), and write the buffer
        when it is due; returns the number of records polled."""
        polled = 0
        if len(self._events) < self.settings.archive_file_events:
            records = self.consumer.poll(timeout_ms, self.settings.feedback_batch)
            polled = len(records)
            self._take(records)
        if self._due():
            self.flush()
        return polled

    def _take(self, records: list[Record]) -> None:
        for r in records:
            key = (r.topic, r.partition)
            self._offsets[key] = max(self._offsets.get(key, 0), r.offset + 1)
            try:
                self._events.append(Event.decode(r.value))
            except ValueError as exc:
                self.malformed += 1
                log.warning("skipped malformed record p%d@%d: %s", r.partition, r.offset, exc)
        if records and self._first_at is None:
            self._first_at = time.monotonic()

    def _due(self) -> bool:
        if self._first_at is None:
            return False
        if len(self._events) >= self.settings.archive_file_events:
            return True
        return (time.monotonic() - self._first_at) * 1000 >= self.settings.archive_flush_ms

    def flush(self) -> int:
        """Write the buffered events, then commit their offsets; returns the events written.
        A failed write keeps the buffer (and the offsets) for the next try."""
        if self._first_at is None:
            return 0
        events = self._events
        self.files += len(write_events(self.root, events))
        self.archived += len(events)
        EVENTS_ARCHIVED.inc(len(events))
        offsets, self._offsets = self._offsets, {}
        self._events, self._first_at = [], None
        try:
            self.consumer.commit(offsets)
        except Exception as exc:  # e.g. partitions revoked: replayed, removed when read
            log.warning("archive offsets not committed (the events come again): %s", exc)
        return len(events)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="archiver", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self.run_once()
                backoff = 0.1
            except Exception:  # the broker or the disk away: nothing is committed, retry
                log.exception("archiving failed; retrying")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        try:
            self.flush()  # what was polled before the stop, so a restart need not replay it
        except Exception:
            log.exception("archive buffer not written at stop (the events come again)")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
        self.consumer.close()
