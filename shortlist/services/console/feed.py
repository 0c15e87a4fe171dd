"""The live feed: the feedback topic read from its end, the last events kept in memory.

A consumer without a group (nothing committed, no rebalancing with the feedback workers) is
assigned every partition, starts a little before the end so the page is not empty, and keeps
the newest `keep` events with a sequence number the page polls from.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from shortlist.feedback.events import Event

log = logging.getLogger(__name__)
RATE_WINDOW_S = 10.0


@dataclass(frozen=True)
class FeedEvent:
    seq: int
    received: float  # wall clock when the console read it
    event: Event
    partition: int
    offset: int

    @property
    def when(self) -> float:
        """The event's own time (the sender's or the gateway's clock), else its receipt."""
        return self.event.timestamp_ms / 1000 if self.event.timestamp_ms else self.received

    def as_dict(self) -> dict[str, Any]:
        e = self.event
        return {
            "seq": self.seq,
            "eventId": e.event_id,
            "userId": e.user_id,
            "itemId": e.item_id,
            "kind": e.kind.name.lower(),
            "timestampMs": e.timestamp_ms,
            "partition": self.partition,
            "offset": self.offset,
        }


class EventFeed:
    """The newest events of the feedback topic, read by a background thread started on
    first use (a mounted sub-application gets no lifespan events of its own)."""

    def __init__(self, bootstrap: str, topic: str, keep: int = 500, backfill: int = 20) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.backfill = backfill
        self._events: deque[FeedEvent] = deque(maxlen=keep)
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="console-feed", daemon=True)
                self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def since(self, after: int, limit: int = 200) -> dict[str, Any]:
        """Events with seq > `after` (oldest first, at most `limit`), the last seq, and the
        events per second over the last RATE_WINDOW_S."""
        self.start()
        now = time.time()
        with self._lock:
            events = [e for e in self._events if e.seq > after][-limit:] if limit > 0 else []
            recent = sum(1 for e in self._events if now - e.when <= RATE_WINDOW_S)
            last = self._seq
        return {
            "events": [e.as_dict() for e in events],
            "last": last,
            "perSecond": round(recent / RATE_WINDOW_S, 2),
            "error": self.error,
        }

    def _connect(self) -> KafkaConsumer:
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            reconnect_backoff_max_ms=1000,
            fetch_max_wait_ms=100,
        )
        partitions = consumer.partitions_for_topic(self.topic) or set()
        if not partitions:
            consumer.close()
            raise KafkaError(f"topic {self.topic} has no partitions (yet)")
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        ends = consumer.end_offsets(assigned)
        starts = consumer.beginning_offsets(assigned)
        share = max(1, self.backfill // len(assigned))
        for tp in assigned:
            consumer.seek(tp, max(starts.get(tp, 0), ends.get(tp, 0) - share))
        return consumer

    def _run(self) -> None:
        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._connect()
                    self.error = None
                batches = consumer.poll(timeout_ms=200, max_records=500)
            except Exception as exc:  # the feed is best effort: retry, show why on the page
                self.error = f"feedback topic unavailable: {exc}"
                log.debug("console feed: %s", exc)
                if consumer is not None:
                    consumer.close()
                    consumer = None
                self._stop.wait(1.0)
                continue
            self._keep(r for records in batches.values() for r in records)
        if consumer is not None:
            consumer.close()

    def _keep(self, records) -> None:
        now = time.time()
        for r in records:
            try:
                event = Event.decode(r.value)
            except ValueError:
                continue  # malformed records are the dead-letter topic's business
            with self._lock:
                self._seq += 1
                self._events.append(FeedEvent(self._seq, now, event, r.partition, r.offset))
