"""The feedback consumer: events from the bus applied to the state store, exactly once.

Per batch: decode (malformed records are counted and parked on the dead-letter topic),
read which event ids are new and the state of their users (one round trip), fold the
users' vectors in (incrementally for linear bundles, one batched solve otherwise), apply
the new events in chunks of whole users, each one atomic script that writes only if
neither its event ids nor its users changed since the read, and only then commit the
offsets. A crash anywhere before the commit replays the batch, and the event-id marks
make the replay a no-op; a concurrent writer (a rebalance) makes a chunk answer
`Conflict` and the rest of the batch is read again.

A FORGET event (FeedbackAdmin.DeleteUser) splits the batch: the events before it are
applied first, then it is applied alone (`StateStore.forget`, atomic, its id marked like
any other). Likes and dislikes of items the bundle does not know are recorded per item and
fold those items' vectors in (`new_item_vectors`), recomputed from the store after every
batch that names them (also on a replay, so a crash between the two writes loses nothing).

Records that cannot be applied never stall the partitions: a record over
`feedback_max_record_bytes` or not a valid event is parked on the dead-letter topic at
once; a valid event whose apply raises (a poison record: the store answers, with an error)
is retried with the batch `feedback_apply_attempts` times with backoff, then the batch is
applied event by event and an event that fails alone as often is parked with the error.
The store being away is not poison: that is retried until it is back, and shows as a
consumer that holds records without committing (`stuck_for`, readiness, the metrics).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from shortlist.config import Settings
from shortlist.feedback.bus.base import (
    APPLY_FAILED,
    MALFORMED,
    TOO_LARGE,
    BusUnavailable,
    DeadLetter,
    DeadLetterPublisher,
    EventConsumer,
    Record,
)
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores.base import (
    PREFERENCE_KINDS,
    Conflict,
    StateStore,
    StoreUnavailable,
)
from shortlist.feedback.vectors import FoldInData, new_item_vectors, updated_vectors
from shortlist.rpc.telemetry import (
    APPLY_FAILURES,
    CONSUMER_LAG,
    CONSUMER_STUCK,
    DEAD_LETTERED,
    EVENTS_APPLIED,
    EVENTS_DUPLICATE,
    EVENTS_MALFORMED,
    LAST_PROGRESS,
    NO_ARM,
    STAGE_LATENCY,
)

log = logging.getLogger(__name__)
SERVICE = "feedback"
APPLY_CHUNK = 500  # events per atomic write: bounds how long one write holds Redis
OFFSET_CHECK_S = 5.0  # how often an idle worker checks the store still has its offsets


@dataclass
class _Batch:
    records: list[Record]
    events: list[Event] = field(default_factory=list)
    sources: list[Record] = field(default_factory=list)  # the record of each event
    bad: list[DeadLetter] = field(default_factory=list)
    poisoned: set[int] = field(default_factory=set)  # events of this batch already parked
    log_ends: dict[tuple[str, int], int] = field(default_factory=dict)  # seen at the poll


class WorkerFault(RuntimeError):
    """More poison records in a row than `feedback_poison_limit`: the failure is taken for
    the worker's own (a bug, a broken script), so records are no longer parked."""


class FeedbackWorker:
    def __init__(
        self,
        bundle: FoldInData,
        store: StateStore,
        consumer: EventConsumer,
        settings: Settings,
        dead_letters: DeadLetterPublisher | None = None,
    ) -> None:
        self.bundle = bundle
        self.store = store
        self.consumer = consumer
        self.settings = settings
        self.dead_letters = dead_letters
        self.applied = 0
        self.duplicates = 0
        self.malformed = 0  # not valid events, or too large
        self.poisoned = 0  # valid events parked because their apply kept raising
        self.parked = 0  # records the dead-letter topic acknowledged
        self._poison_run = 0  # poison records parked since the last event applied
        self.conflicts = 0
        self.batches = 0
        self.first_records_at: float | None = None  # perf_counter of the first records
        self._previous_version: str | None = None  # the bundle the current one replaced
        # Offsets consumption went back to after the store lost writes (record_offsets),
        # and the one to go back to now (set by the applier, done by the polling thread).
        self._sought: dict[tuple[str, int], int] = {}
        self._rewind: dict[tuple[str, int], int] = {}
        self._rewound = threading.Event()
        self.rewinds = 0
        self._committed: dict[tuple[str, int], int] = {}  # next offsets committed
        self._store_was_away = False  # during the batch being applied (applier thread)
        self._checked_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Progress: batches fetched and not yet committed, and when the consumer last
        # committed one or had nothing in hand (time.monotonic()).
        self._outstanding = 0
        self._last_progress = time.monotonic()
        self._lag_at = 0.0
        self._progressed()

    def use_bundle(self, bundle: FoldInData) -> threading.Thread | None:
        """Hot swap: the next batch folds in with `bundle` (the current one keeps its own).
        The version before the one replaced is retired: its users' vectors are deleted in
        the background (the replaced one stays, as the services keep serving it until
        their own swap). Returns that cleanup thread, if any."""
        retired = self._previous_version
        if bundle.version == self.bundle.version:
            return None
        self._previous_version = self.bundle.version
        self.bundle = bundle
        if retired is None or retired == bundle.version:
            return None
        cleanup = threading.Thread(
            target=self._drop_vectors, args=(retired,), name="retire-vectors", daemon=True
        )
        cleanup.start()
        return cleanup

    def _drop_vectors(self, version: str) -> None:
        try:
            dropped = self.store.drop_vectors(version)
        except StoreUnavailable as exc:  # the keys stay; a later retirement does not see them
            log.warning("vectors of retired bundle %s not deleted: %s", version, exc)
            return
        log.info("deleted %d user vectors of retired bundle %s", dropped, version)

    def run_once(self, timeout_ms: int = 200) -> int:
        """Poll one batch, apply it and commit; returns the number of records polled."""
        batch = self._fetch(timeout_ms)
        if batch is None:
            self._progressed()
            return 0
        self._handle(batch)
        if self._rewind_needed(batch):
            self.consumer.seek(self._rewind)
            self._rewind = {}
            return len(batch.records)
        self.consumer.commit()
        self.batches += 1
        self._outstanding -= 1
        self._progressed()
        CONSUMER_LAG.set(self.consumer.lag())
        return len(batch.records)

    def stuck_for(self) -> float:
        """Seconds the consumer has held records without committing them (0 when it has
        none in hand): the feedback service's readiness and the stuck gauge read this."""
        if self._outstanding <= 0:
            return 0.0
        return max(0.0, time.monotonic() - self._last_progress)

    def _progressed(self) -> None:
        """A batch committed, or nothing in hand: the consumer is not stuck."""
        self._last_progress = time.monotonic()
        LAST_PROGRESS.set(time.time())
        CONSUMER_STUCK.set(0)

    def _report(self) -> None:
        """Lag and stuck time, at most once a second (the loop thread: lag reads the
        consumer, which is not thread-safe)."""
        now = time.monotonic()
        if now - self._lag_at < 1.0:
            return
        self._lag_at = now
        CONSUMER_STUCK.set(self.stuck_for())
        try:
            CONSUMER_LAG.set(self.consumer.lag())
        except Exception as exc:  # e.g. a rebalance in progress: keep the last value
            log.debug("consumer lag unknown: %s", exc)

    def _fetch(self, timeout_ms: int) -> _Batch | None:
        """Poll and decode one batch; malformed records are counted and set aside."""
        records = self.consumer.poll(timeout_ms, self.settings.feedback_batch)
        if not records:
            return None
        if self.first_records_at is None:
            self.first_records_at = time.perf_counter()
        self._outstanding += 1
        batch = _Batch(records, log_ends=self._log_ends({(r.topic, r.partition) for r in records}))
        decode = Event.decode
        limit = self.settings.feedback_max_record_bytes
        for r in records:
            if len(r.value) > limit:
                reason = f"record of {len(r.value)} bytes exceeds feedback_max_record_bytes={limit}"
                self._set_aside(batch, DeadLetter(r, reason, TOO_LARGE))
                continue
            try:
                event = decode(r.value)
            except ValueError as exc:
                self._set_aside(batch, DeadLetter(r, str(exc), MALFORMED))
                continue
            batch.events.append(event)
            batch.sources.append(r)
        return batch

    def _rewind_needed(self, batch: _Batch) -> bool:
        """Record the batch's offsets in the store after its state; True (and `_rewind`
        set) when the store lost writes since: consume again from what it still has."""
        ranges: dict[tuple[str, int], tuple[int, int]] = {}
        for r in batch.records:
            tp = (r.topic, r.partition)
            start, end = ranges.get(tp, (r.offset, r.offset + 1))
            ranges[tp] = (min(start, r.offset), max(end, r.offset + 1))
        for tp, (start, end) in ranges.items():
            if tp in self._sought:  # consumed from there: the records between are none
                ranges[tp] = (min(start, self._sought.pop(tp)), end)
        backoff = 0.05
        while True:
            if self._store_was_away:
                # A store that went away mid-batch may have restarted without the writes
                # made before (an AOF's lost tail) while its offsets still say the batch
                # before: nothing would show the gap. Apply the batch again (the event-id
                # marks make what is there a no-op) before its offsets are recorded.
                self._store_was_away = False
                log.warning("the state store was away during the batch: applying it again")
                self._handle(batch, park=False)
            try:
                gaps = self.store.record_offsets(
                    self.settings.feedback_group, ranges, batch.log_ends
                )
                break
            except StoreUnavailable as exc:
                if self._stop.is_set():
                    raise
                log.warning("offsets not recorded in the store, retrying: %s", exc)
                self._store_was_away = True
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        if not gaps:
            return False
        log.warning("the state store lost writes; consuming again from %s", gaps)
        self.rewinds += 1
        self._sought.update(gaps)
        self._rewound.clear()
        self._rewind = gaps
        return True

    def _log_ends(self, partitions) -> dict[tuple[str, int], int]:
        """The partitions' log ends as the consumer saw them (on the polling thread: a
        consumer is not thread-safe): the store resets an offset above its log's end (the
        log was made again) instead of hiding gaps behind it."""
        ends = {tp: self.consumer.log_end(*tp) for tp in partitions}
        return {tp: end for tp, end in ends.items() if end is not None}

    def _set_aside(self, batch: _Batch, letter: DeadLetter) -> None:
        r = letter.record
        self.malformed += 1
        EVENTS_MALFORMED.inc()
        log.warning("%s record p%d@%d: %s", letter.kind, r.partition, r.offset, letter.reason)
        batch.bad.append(letter)

    def _handle(self, batch: _Batch, park: bool = True) -> None:
        """Park the records set aside (unless `park` is off: done already) and apply the
        events, poison ones parked too; returns once all of the batch is either applied or
        parked."""
        if batch.bad and park:
            self._park_until_done(batch.bad)
        if self._tries(lambda: self._apply_until_done(batch.events), "a batch") is None:
            return
        log.error("applying the %d events of a batch one by one", len(batch.events))
        while True:
            try:
                self._apply_each(batch)
                return
            except WorkerFault as exc:
                if self._stop.is_set():
                    raise
                log.error("%s; retrying the batch", exc)
                time.sleep(self.settings.feedback_retry_backoff_ms / 1000 * 20)

    def _tries(self, apply, what: str) -> Exception | None:
        """Run `apply` up to feedback_apply_attempts times, backing off after each error
        (the store being away is retried inside `apply`); the last error, or None."""
        backoff = self.settings.feedback_retry_backoff_ms / 1000
        attempts = max(1, self.settings.feedback_apply_attempts)
        for attempt in range(1, attempts + 1):
            try:
                apply()
                return None
            except (StoreUnavailable, BusUnavailable):
                raise  # only raised out of the retry loops once stopping
            except Exception as exc:
                APPLY_FAILURES.inc()
                log.warning("applying %s failed (try %d of %d): %r", what, attempt, attempts, exc)
                if self._stop.is_set():
                    raise
                if attempt == attempts:
                    return exc
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        return None  # not reached

    def _apply_each(self, batch: _Batch) -> None:
        """The batch's events one at a time, in order (those already applied are
        duplicates now); an event that keeps failing alone is parked with its error."""
        attempts = max(1, self.settings.feedback_apply_attempts)
        for n, (event, record) in enumerate(zip(batch.events, batch.sources)):
            if n in batch.poisoned:
                continue
            error = self._tries(lambda e=event: self._apply_until_done([e]), "an event alone")
            if error is None:
                self._poison_run = 0
                continue
            if self._poison_run >= self.settings.feedback_poison_limit:
                raise WorkerFault(
                    f"{self._poison_run} records in a row failed to apply, the last with "
                    f"{error!r}: taken for a fault of the worker, not parking"
                )
            reason = f"apply failed {attempts} times: {type(error).__name__}: {error}"
            log.error("poison record p%d@%d parked: %s", record.partition, record.offset, reason)
            self._park_until_done([DeadLetter(record, reason, APPLY_FAILED)])
            batch.poisoned.add(n)
            self.poisoned += 1
            self._poison_run += 1

    def _park_until_done(self, letters: list[DeadLetter]) -> None:
        """Offsets must not move past a bad record before the dead-letter topic has it."""
        if self.dead_letters is None:
            return  # no dead-letter topic (in-memory demo bus): counted and logged only
        backoff = 0.05
        while True:
            try:
                self.dead_letters.park(letters, self.settings.publish_timeout_ms / 1000)
                self.parked += len(letters)
                for letter in letters:
                    DEAD_LETTERED.labels(letter.kind).inc()
                return
            except BusUnavailable as exc:
                if self._stop.is_set():
                    raise
                log.warning("dead-letter topic unavailable, retrying: %s", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _apply_until_done(self, events: list[Event]) -> None:
        """Retry while the store is away: offsets must not move past unapplied events."""
        backoff = 0.05
        remaining = events
        while remaining:
            try:
                remaining = self._apply(remaining)
            except StoreUnavailable as exc:
                remaining = getattr(exc, "rest", remaining)
                if self._stop.is_set():
                    raise
                self._store_was_away = True
                log.warning("state store unavailable, retrying batch: %s", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _apply(self, events: list[Event]) -> list[Event]:
        """Apply what is new among `events` in order, FORGET events one by one between the
        feedback before and after them; returns the events still to apply (when the store
        answered a conflict). StoreUnavailable carries the rest in `rest`."""
        while events:
            cut = next((n for n, e in enumerate(events) if e.kind == Kind.FORGET), len(events))
            try:
                rest = self._apply_feedback(events[:cut])
            except StoreUnavailable as exc:
                exc.rest = getattr(exc, "rest", events[:cut]) + events[cut:]
                raise
            if rest:
                return rest + events[cut:]
            if cut < len(events):
                try:
                    self._forget(events[cut])
                except StoreUnavailable as exc:
                    exc.rest = events[cut:]
                    raise
            events = events[cut + 1 :]
        return []

    def _forget(self, event: Event) -> None:
        if self.store.forget(event):
            self.applied += 1
            EVENTS_APPLIED.inc()
            log.info("forgot user %r (event %s)", event.user_id, event.event_id)
        else:
            self.duplicates += 1
            EVENTS_DUPLICATE.inc()

    def _apply_feedback(self, events: list[Event]) -> list[Event]:
        """Apply what is new among `events` (no FORGET); returns the events still to apply
        (those of chunks not yet written when the store went away or answered a conflict)."""
        if not events:
            return []
        start = time.perf_counter()
        bundle = self.bundle  # one bundle for the batch (hot reload swaps the attribute)
        linear = bundle.item_encoder is not None
        pending = self.store.prepare(events, bundle.version, complete=not linear)
        fresh: list[Event] = []
        ids: set[str] = set()
        for event, new in zip(events, pending.new):
            if new and event.event_id not in ids:
                fresh.append(event)
                ids.add(event.event_id)
        skipped = len(events) - len(fresh)
        self.duplicates += skipped
        EVENTS_DUPLICATE.inc(skipped)
        vectors = updated_vectors(bundle, pending.users, fresh)
        # every event's new item, the duplicates' too: a replay recomputes their vectors
        new_items = {
            e.item_id
            for e in events
            if e.kind in PREFERENCE_KINDS and e.item_id not in bundle.items
        }
        chunks = _chunks_of_whole_users(fresh, APPLY_CHUNK)
        for n, chunk in enumerate(chunks):
            users = {e.user_id for e in chunk}
            try:
                self.store.apply(
                    chunk,
                    {u: vectors[u] for u in users if u in vectors},
                    bundle.version,
                    {u: pending.users[u].seq for u in users},
                    new_items=new_items,
                )
            except StoreUnavailable as exc:
                # This chunk may or may not have been written: the next prepare tells.
                exc.rest = [e for c in chunks[n:] for e in c]
                raise
            except Conflict as exc:
                self.conflicts += 1
                log.warning("feedback batch conflicts with another writer, rereading: %s", exc)
                return [e for c in chunks[n:] for e in c]
            self.applied += len(chunk)
            EVENTS_APPLIED.inc(len(chunk))
        if new_items:  # after the users' vectors are written: the fold-in reads them
            feedback = self.store.item_feedback(sorted(new_items), bundle.version)
            self.store.set_item_vectors(new_item_vectors(bundle, feedback), bundle.version)
        STAGE_LATENCY.labels(SERVICE, "apply", NO_ARM).observe(time.perf_counter() - start)
        return []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="feedback-worker", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        """The service loop, pipelined: this thread polls, decodes and commits (a consumer
        is not thread-safe) while an applier thread applies the batch before; offsets of
        a batch are committed once the applier has finished it, in order."""
        todo: queue.Queue[_Batch | None] = queue.Queue(maxsize=1)
        done: queue.Queue[_Batch] = queue.Queue()
        applier = threading.Thread(
            target=self._apply_loop, args=(todo, done), name="feedback-apply", daemon=True
        )
        applier.start()
        waiting: _Batch | None = None
        try:
            while not self._stop.is_set() and applier.is_alive():
                self._commit_done(done)
                if self._rewind:  # the applier waits: nothing fetched so far is applied
                    waiting = None
                    while not todo.empty():
                        todo.get_nowait()
                    self.consumer.seek(self._rewind)
                    self._rewind = {}
                    self._rewound.set()
                if self._outstanding == 0:
                    self._progressed()
                self._report()
                if waiting is None:
                    try:
                        waiting = self._fetch(200)
                    except Exception:  # the consumer reconnects by itself; keep polling
                        log.exception("feedback poll failed; retrying")
                        time.sleep(0.5)
                    if waiting is None and todo.empty():
                        self._check_offsets_when_idle()
                    continue
                try:
                    todo.put(waiting, timeout=0.05)
                    waiting = None
                except queue.Full:
                    pass
        finally:
            # A batch still waiting is not applied, so not committed: the group replays it.
            while applier.is_alive():
                try:
                    todo.put(None, timeout=0.1)
                    break
                except queue.Full:
                    pass
            applier.join(timeout=10)
            self._commit_done(done)

    def _check_offsets_when_idle(self) -> None:
        """Every OFFSET_CHECK_S while no records come: has the store lost writes below the
        committed offsets (Redis restarted from an AOF missing its tail)? Then consume
        again from what it has, without waiting for the partition's next record."""
        if time.monotonic() - self._checked_at < OFFSET_CHECK_S or not self._committed:
            return
        self._checked_at = time.monotonic()
        ranges = {tp: (offset, 0) for tp, offset in self._committed.items()}
        try:
            gaps = self.store.record_offsets(
                self.settings.feedback_group, ranges, self._log_ends(ranges)
            )
        except StoreUnavailable:
            return
        if gaps:
            log.warning("the state store lost writes; consuming again from %s", gaps)
            self.rewinds += 1
            self._sought.update(gaps)
            self.consumer.seek(gaps)

    def _apply_loop(self, todo: queue.Queue, done: queue.Queue) -> None:
        while (batch := todo.get()) is not None:
            backoff = 0.5
            while True:
                try:
                    self._handle(batch)
                    if self._rewind_needed(batch):  # not committed: consumed again
                        while not self._rewound.wait(0.1):
                            if self._stop.is_set():
                                return
                        batch = None
                    break
                except (StoreUnavailable, BusUnavailable):
                    return  # only raised once stopping
                except Exception:  # never skip a batch: retry it, and say so
                    if self._stop.is_set():
                        return
                    log.exception("feedback batch failed; retrying it")
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            if batch is not None:
                done.put(batch)

    def _commit_done(self, done: queue.Queue) -> None:
        offsets: dict[tuple[str, int], int] = {}
        n = 0
        while True:
            try:
                batch = done.get_nowait()
            except queue.Empty:
                break
            n += 1
            for r in batch.records:
                key = (r.topic, r.partition)
                offsets[key] = max(offsets.get(key, 0), r.offset + 1)
        if not n:
            return
        self._outstanding -= n  # handled: no longer held, committed or not
        try:
            self.consumer.commit(offsets)
        except Exception as exc:  # e.g. partitions revoked: the new owner replays, as no-ops
            log.warning("offset commit failed (the group will replay): %s", exc)
            return
        self._committed.update(offsets)
        self.batches += n
        self._progressed()
        CONSUMER_LAG.set(self.consumer.lag())

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        self.consumer.close()
        if self.dead_letters is not None:
            self.dead_letters.close()


def _chunks_of_whole_users(events: list[Event], size: int) -> list[list[Event]]:
    """Consecutive chunks of about `size` events, a user's events never split (its vector
    and seq are written with all of them); events keep their order within a user."""
    by_user: dict[str, list[Event]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e)
    chunks: list[list[Event]] = []
    current: list[Event] = []
    for user_events in by_user.values():
        if current and len(current) + len(user_events) > size:
            chunks.append(current)
            current = []
        current.extend(user_events)
    if current:
        chunks.append(current)
    return chunks
