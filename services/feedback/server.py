"""Feedback service: consumes events from the bus and applies them to the state store.

Per batch: decode (malformed records are counted and skipped), look up which event ids
are new and the users' histories (one round trip), fold the users' vectors in, apply
everything in one transaction, and only then commit the offsets. A crash anywhere before
the commit replays the batch, and the event-id marks make the replay a no-op.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc

from shortlist import serving
from shortlist.artifacts import Bundle
from shortlist.bus.base import EventConsumer
from shortlist.config import Settings
from shortlist.events import Event
from shortlist.stores.base import StateStore, StoreUnavailable
from shortlist.telemetry import (
    CONSUMER_LAG,
    EVENTS_APPLIED,
    EVENTS_DUPLICATE,
    EVENTS_MALFORMED,
    NO_ARM,
    STAGE_LATENCY,
)
from shortlist.v1 import feedback_pb2, feedback_pb2_grpc

log = logging.getLogger(__name__)
SERVICE = "feedback"


class FeedbackWorker:
    def __init__(
        self, bundle: Bundle, store: StateStore, consumer: EventConsumer, settings: Settings
    ) -> None:
        self.bundle = bundle
        self.store = store
        self.consumer = consumer
        self.settings = settings
        self.applied = 0
        self.duplicates = 0
        self.malformed = 0
        self.batches = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, timeout_ms: int = 200) -> int:
        """Poll one batch, apply it and commit; returns the number of records polled."""
        records = self.consumer.poll(timeout_ms, self.settings.feedback_batch)
        if not records:
            return 0
        events: list[Event] = []
        for r in records:
            try:
                events.append(Event.decode(r.value))
            except ValueError as exc:
                self.malformed += 1
                EVENTS_MALFORMED.inc()
                log.warning("skipping malformed record p%d@%d: %s", r.partition, r.offset, exc)
        self._apply_until_done(events)
        self.consumer.commit()
        self.batches += 1
        CONSUMER_LAG.set(self.consumer.lag())
        return len(records)

    def _apply_until_done(self, events: list[Event]) -> None:
        """Retry while the store is away: offsets must not move past unapplied events."""
        backoff = 0.05
        while True:
            try:
                self._apply(events)
                return
            except StoreUnavailable as exc:
                if self._stop.is_set():
                    raise
                log.warning("state store unavailable, retrying batch: %s", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _apply(self, events: list[Event]) -> None:
        if not events:
            return
        start = time.perf_counter()
        pending = self.store.prepare(events)
        fresh, ids = [], set()
        for event, new in zip(events, pending.new):
            if new and event.event_id not in ids:
                fresh.append(event)
                ids.add(event.event_id)
        histories = {u: list(h) for u, h in pending.histories.items()}
        for e in fresh:  # oldest first in the batch: prepend to make newest first
            histories[e.user_id].insert(0, (e.item_id, e.kind))
        touched = {e.user_id for e in fresh}
        bundle = self.bundle  # one bundle for the batch (hot reload swaps the attribute)
        vectors = serving.folded_vectors(bundle, {u: histories[u] for u in touched})
        if fresh:
            self.store.apply(fresh, vectors, bundle.version)
        self.applied += len(fresh)
        self.duplicates += len(events) - len(fresh)
        EVENTS_APPLIED.inc(len(fresh))
        EVENTS_DUPLICATE.inc(len(events) - len(fresh))
        STAGE_LATENCY.labels(SERVICE, "apply", NO_ARM).observe(time.perf_counter() - start)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="feedback-worker", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except StoreUnavailable:
                return  # only raised once stopping
            except Exception:  # keep consuming: a bad batch must not kill the worker
                log.exception("feedback batch failed; retrying")
                time.sleep(0.5)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        self.consumer.close()


class FeedbackAdminServicer(feedback_pb2_grpc.FeedbackAdminServicer):
    def __init__(self, worker: FeedbackWorker) -> None:
        self.worker = worker

    def Status(self, request, context):  # noqa: N802 (gRPC method name)
        w = self.worker
        return feedback_pb2.FeedbackStatusResponse(
            events_applied=w.applied,
            duplicates_skipped=w.duplicates,
            batches_committed=w.batches,
            malformed_records=w.malformed,
            topic=w.settings.feedback_topic,
            group_id=w.settings.feedback_group,
        )


def register(servicer: FeedbackAdminServicer):
    def _register(server: grpc.Server) -> None:
        feedback_pb2_grpc.add_FeedbackAdminServicer_to_server(servicer, server)

    return _register


SERVICE_NAMES = (feedback_pb2.DESCRIPTOR.services_by_name["FeedbackAdmin"].full_name,)
