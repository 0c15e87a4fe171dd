"""The feedback worker over the real Redis and tansu: incremental fold-in equals the fold-in
over the whole history, a concurrent writer is detected, malformed records are parked on
the dead-letter topic without stopping the consumer."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from shortlist.bundle.files import load_bundle, save_bundle
from shortlist.config import Settings
from shortlist.data.synthetic import generate
from shortlist.feedback.bus import KafkaDeadLetterPublisher, KafkaEventConsumer, ensure_topic
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores import RedisStateStore
from shortlist.feedback.vectors import folded_vectors, updated_vectors
from shortlist.feedback.worker import FeedbackWorker
from shortlist.tools.bench.feedback import redis_audit, synthetic_events
from shortlist.v1 import common_pb2
from tests.conftest import unique

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spectral_bundle(tmp_path_factory):
    """A linear (item encoder) bundle: fold-in by encoder rows."""
    from shortlist.models.spectral import SpectralCF, SpectralConfig
    from shortlist.training.pipeline import retrieval_bundle

    data = generate(n_users=200, n_items=120, n_topics=4, likes_per_user=10, seed=5)
    model = SpectralCF(SpectralConfig(rank=32, ideal_rank=8))
    model.fit(data)
    root = tmp_path_factory.mktemp("spectral")
    return load_bundle(save_bundle(retrieval_bundle(data, model), root))


def random_batches(bundle, rng, users, batches, size):
    """Events over a small item pool (kinds change, items repeat, one item unknown to the
    bundle), each batch with a few replays of earlier events."""
    pool = [bundle.items.id(int(i)) for i in rng.choice(len(bundle.items), 30, replace=False)]
    pool.append("no-such-item")
    kinds = [Kind.LIKE, Kind.DISLIKE, Kind.SKIP, Kind.VIEW]
    done: list[Event] = []
    out = []
    n = 0
    for _ in range(batches):
        batch = []
        for _ in range(size):
            n += 1
            batch.append(
                Event(
                    f"ev-{n}",
                    users[int(rng.integers(len(users)))],
                    pool[int(rng.integers(len(pool)))],
                    kinds[int(rng.integers(4))],
                    n,
                )
            )
        if done:
            batch[3:3] = [done[int(i)] for i in rng.integers(len(done), size=5)]
        done.extend(batch)
        out.append(batch)
    return out


@pytest.mark.parametrize("kind", ["ridge", "linear"])
def test_incremental_fold_in_equals_the_fold_in_over_the_whole_history(
    kind, bundle, spectral_bundle, redis_url, redis_prefix
):
    b = bundle if kind == "ridge" else spectral_bundle
    store = RedisStateStore(redis_url, redis_prefix)
    rng = np.random.default_rng(11)
    users = [b.users.id(3), "brand-new", b.users.id(7)]
    history: dict[str, list] = {u: [] for u in users}  # newest first, uncapped
    seen: set[str] = set()
    # 8 x 90 events: each user ends with ~240, beyond the 200 kept in the Redis history.
    for batch in random_batches(b, rng, users, batches=8, size=90):
        pending = store.prepare(batch, b.version, complete=b.item_encoder is None)
        assert pending.new == [e.event_id not in seen for e in batch]
        fresh = list({e.event_id: e for e in batch if e.event_id not in seen}.values())
        vectors = updated_vectors(b, pending.users, fresh)
        touched = {e.user_id for e in fresh}
        store.apply(fresh, vectors, b.version, {u: pending.users[u].seq for u in touched})
        for e in fresh:
            history[e.user_id].insert(0, (e.item_id, e.kind))
            seen.add(e.event_id)
    assert min(len(h) for h in history.values()) > 200
    expected = folded_vectors(b, history)
    for user in users:
        got = store.user_state(user, b.version).vector
        np.testing.assert_allclose(got, expected[user], rtol=1e-4, atol=1e-4)
    # Another bundle version has no stored vector: computed from the whole map.
    other = store.prepare([Event("x", users[0], "zzz", Kind.VIEW, 0)], "other-version")
    assert other.users[users[0]].complete
    again = updated_vectors(b, other.users, [Event("x", users[0], "zzz", Kind.VIEW, 0)])
    np.testing.assert_allclose(again[users[0]], expected[users[0]], rtol=1e-4, atol=1e-4)


class RacingStore(RedisStateStore):
    """A real Redis store whose first apply finds that another worker (a rebalance) has
    just applied the same events: they are applied through a second store first."""

    def __init__(self, url, prefix, bundle):
        super().__init__(url, prefix)
        self.other = RedisStateStore(url, prefix)
        self.bundle = bundle
        self.raced = False

    def apply(self, events, vectors, version, expected=None, new_items=()):
        if not self.raced:
            self.raced = True
            pending = self.other.prepare(events, version)
            fresh = [e for e, new in zip(events, pending.new) if new]
            self.other.apply(fresh, updated_vectors(self.bundle, pending.users, fresh), version)
        return super().apply(events, vectors, version, expected, new_items)


def test_a_concurrent_writer_is_detected_and_nothing_is_applied_twice(
    broker, redis_url, redis_prefix, bundle
):
    settings = Settings.from_env(
        {},
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        kafka_bootstrap=broker.bootstrap,
        feedback_topic=unique("race"),
        feedback_group=unique("race"),
        feedback_batch=1000,
    )
    ensure_topic(settings.kafka_bootstrap, settings.feedback_topic, 1)
    events = synthetic_events(bundle, 600, np.random.default_rng(3))
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for e in events:
        producer.send(settings.feedback_topic, key=e.user_id.encode(), value=e.encode())
    producer.flush(10)
    producer.close()
    store = RacingStore(redis_url, redis_prefix, bundle)
    consumer = KafkaEventConsumer(
        settings.kafka_bootstrap, settings.feedback_topic, settings.feedback_group
    )
    worker = FeedbackWorker(bundle, store, consumer, settings)
    try:
        deadline = time.monotonic() + 60
        while worker.applied + worker.duplicates < len(events) and time.monotonic() < deadline:
            worker.run_once(timeout_ms=500)
    finally:
        worker.stop()
    likes = sum(e.kind == Kind.LIKE for e in events)
    assert worker.conflicts >= 1
    assert worker.applied + worker.duplicates == len(events) and worker.duplicates > 0
    assert redis_audit(redis_url, redis_prefix) == {"marks": len(events), "user_likes": likes}


def test_malformed_records_are_parked_on_the_dead_letter_topic(
    broker, redis_url, redis_prefix, bundle
):
    settings = Settings.from_env(
        {},
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        kafka_bootstrap=broker.bootstrap,
        feedback_topic=unique("dlq"),
        feedback_group=unique("dlq"),
        feedback_batch=100,
    )
    assert settings.dead_letter_topic == f"{settings.feedback_topic}.dlq"
    ensure_topic(settings.kafka_bootstrap, settings.feedback_topic, 2)
    good = synthetic_events(bundle, 300, np.random.default_rng(5))
    unknown_kind = common_pb2.FeedbackEvent(event_id="k", user_id="u", item_id="i", kind=99)
    bad = [
        (b"\xff\xfe not protobuf at all", "undecodable"),
        (b"", "lacks event_id"),
        (common_pb2.FeedbackEvent(user_id="u", item_id="i").SerializeToString(), "lacks"),
        (unknown_kind.SerializeToString(), "unknown kind 99"),
    ]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for n, e in enumerate(good):  # garbage mixed in between good events
        producer.send(settings.feedback_topic, key=e.user_id.encode(), value=e.encode())
        if n % 75 == 10:
            value, _ = bad[n // 75]
            producer.send(settings.feedback_topic, key=f"bad-{n // 75}".encode(), value=value)
    producer.flush(10)
    producer.close()

    def malformed_total() -> float:
        return REGISTRY.get_sample_value("shortlist_feedback_events_malformed_total") or 0.0

    before = malformed_total()
    consumer = KafkaEventConsumer(
        settings.kafka_bootstrap, settings.feedback_topic, settings.feedback_group
    )
    dead = KafkaDeadLetterPublisher(settings.kafka_bootstrap, settings.dead_letter_topic)
    worker = FeedbackWorker(
        bundle, RedisStateStore(redis_url, redis_prefix), consumer, settings, dead
    )
    worker.start()  # the worker's own loop: it must keep consuming past the garbage
    try:
        deadline = time.monotonic() + 60
        while worker.applied < len(good) or worker.parked < len(bad):
            assert time.monotonic() < deadline, (worker.applied, worker.parked)
            time.sleep(0.1)
    finally:
        worker.stop()  # finishes the batch in hand, commit included
    likes = sum(e.kind == Kind.LIKE for e in good)
    assert redis_audit(redis_url, redis_prefix) == {"marks": len(good), "user_likes": likes}
    assert worker.malformed == len(bad) and malformed_total() - before == len(bad)

    # The dead-letter topic holds the original bytes and keys, with the reason and origin.
    reader = KafkaConsumer(
        settings.dead_letter_topic,
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=5000,
    )
    letters = []
    for record in reader:
        letters.append(record)
        if len(letters) == len(bad):
            break
    reader.close()
    assert sorted(r.key for r in letters) == [f"bad-{n}".encode() for n in range(len(bad))]
    for r in letters:
        value, reason = bad[int(r.key.decode().split("-")[1])]
        headers = {k: v.decode() for k, v in r.headers}
        assert r.value == value
        assert reason in headers["dlq.reason"]
        assert headers["dlq.topic"] == settings.feedback_topic
        assert int(headers["dlq.offset"]) >= 0 and headers["dlq.partition"] in {"0", "1"}

    # Offsets are committed past everything, the garbage included: the group's next member
    # starts at the end. (tansu answers ListOffsets for the end with 1, so count instead.)
    probe = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=settings.feedback_group)
    parts = [TopicPartition(settings.feedback_topic, p) for p in (0, 1)]
    committed = [probe.committed(tp) for tp in parts]
    probe.close()
    assert sum(committed) == len(good) + len(bad)


def test_batched_fold_in_equals_fold_in_per_user():
    """Both solve paths (L x L Woodbury for short histories, d x d otherwise)."""
    from shortlist.feedback.foldin import FoldInTargets, batched_fold_in, fold_in

    rng = np.random.default_rng(2)
    items = rng.normal(size=(300, 24)).astype(np.float32)
    targets = FoldInTargets(like=1.3, dislike=0.2, prior_strength=0.7)
    kinds_all = [Kind.LIKE, Kind.DISLIKE, Kind.SKIP]
    users = []
    for length in (1, 3, 8, 9, 15, 23, 24, 40, 130):
        idx = rng.choice(300, length, replace=False)
        users.append((idx, [kinds_all[int(k)] for k in rng.integers(3, size=length)]))
    priors = rng.normal(size=(len(users), 24)).astype(np.float32)
    priors[1] = 0
    rows = np.concatenate([np.full(len(i), r) for r, (i, _) in enumerate(users)])
    flat_items = np.concatenate([i for i, _ in users])
    flat_kinds = np.concatenate([[int(k) for k in ks] for _, ks in users])
    got = batched_fold_in(items, rows, flat_items, flat_kinds, targets, priors)
    for r, (idx, kinds) in enumerate(users):
        want = fold_in(items, idx, kinds, targets, priors[r])
        np.testing.assert_allclose(got[r], want, rtol=1e-4, atol=1e-4)


def test_a_swap_retires_the_vectors_of_the_version_before_the_replaced_one(
    bundle, redis_url, redis_prefix
):
    store = RedisStateStore(redis_url, redis_prefix)
    worker = FeedbackWorker(bundle, store, None, Settings())  # swaps only: nothing consumed
    versions = [dataclasses.replace(bundle, version=f"{bundle.version}-{n}") for n in range(3)]
    vector = np.ones(bundle.item_vectors.shape[1], np.float32)
    user = bundle.users.id(0)
    for n, b in enumerate([bundle, *versions]):
        event = Event(f"retire-{n}", user, bundle.items.id(n), Kind.LIKE, n)
        store.prepare([event], b.version)
        store.apply([event], {user: vector}, b.version)
    assert worker.use_bundle(versions[0]) is None  # nothing before the replaced one yet
    cleanup = worker.use_bundle(versions[1])  # retires the first bundle's version
    cleanup.join(timeout=30)
    assert store.user_state(user, bundle.version).vector is None
    for kept in versions:
        assert store.user_state(user, kept.version).vector is not None
    cleanup = worker.use_bundle(versions[2])
    cleanup.join(timeout=30)
    assert store.user_state(user, versions[0].version).vector is None
    assert store.user_state(user, versions[1].version).vector is not None
