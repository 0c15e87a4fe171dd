"""Records the feedback consumer cannot apply, over the real broker and Redis: a malformed,
a too large and a poison record each reach the dead-letter topic with the reason while the
consumer goes on; a worker whose every apply fails stops parking after the limit; a
consumer stuck on an absent Redis makes the feedback service NOT_SERVING (over its gRPC
health port) and SERVING again once it moves; the consumer's progress is exported."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from shortlist.config import Settings
from shortlist.feedback.bus import KafkaDeadLetterPublisher, KafkaEventConsumer, ensure_topic
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores import RedisStateStore
from shortlist.feedback.worker import FeedbackWorker
from shortlist.services.launch import start_service
from shortlist.tools.bench.feedback import redis_audit, synthetic_events
from tests.conftest import eventually, unique

pytestmark = pytest.mark.integration
POISON_ITEM = "poison-item"
FEEDBACK_SERVICE = "shortlist.v1.FeedbackAdmin"


class PoisonStore(RedisStateStore):
    """The real Redis store, whose apply answers an error (as a failing Lua script would)
    for any chunk holding an event on POISON_ITEM, or for every chunk while `broken`."""

    broken = False

    def apply(self, events, vectors, version, expected=None, new_items=()):
        if self.broken or any(e.item_id == POISON_ITEM for e in events):
            raise redis.ResponseError("ERR Error running script: poison for this test")
        return super().apply(events, vectors, version, expected, new_items)


def worker_settings(broker, redis_url, redis_prefix, name, **overrides) -> Settings:
    return Settings.from_env(
        {},
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        kafka_bootstrap=broker.bootstrap,
        feedback_topic=unique(name),
        feedback_group=unique(name),
        feedback_batch=100,
        feedback_retry_backoff_ms=10,
        **overrides,
    )


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2**21)
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush(10)
    producer.close()


def dead_letters(bootstrap: str, topic: str, count: int) -> list:
    reader = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=5000,
    )
    letters = []
    for record in reader:
        letters.append(record)
        if len(letters) == count:
            break
    reader.close()
    return letters


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels or None) or 0.0


def test_malformed_huge_and_poison_records_reach_the_dead_letter_topic_and_the_consumer_goes_on(
    broker, redis_url, redis_prefix, bundle
):
    s = worker_settings(broker, redis_url, redis_prefix, "poison", feedback_apply_attempts=3)
    ensure_topic(s.kafka_bootstrap, s.feedback_topic, 2)
    good = synthetic_events(bundle, 400, np.random.default_rng(9))
    user = bundle.users.id(1)
    poison = Event("poison-1", user, POISON_ITEM, Kind.LIKE, 1)
    huge = Event("huge-1", user, "x" * 100_000, Kind.LIKE, 2)  # decodes; far over the limit
    bad = {
        b"malformed": (b"\xff\xfe not protobuf", "malformed", "undecodable"),
        b"huge": (huge.encode(), "too_large", "exceeds feedback_max_record_bytes=16384"),
        b"poison": (poison.encode(), "apply_failed", "apply failed 3 times: ResponseError"),
    }
    records = [(e.user_id.encode(), e.encode()) for e in good]
    for n, (key, (value, _, _)) in enumerate(bad.items()):  # among the good ones
        records.insert(100 + 120 * n, (key, value))
    produce(broker.bootstrap, s.feedback_topic, records)

    before = {k: sample("shortlist_feedback_dead_lettered_total", reason=k) for k in bad_kinds()}
    failures_before = sample("shortlist_feedback_apply_failures_total")
    worker = FeedbackWorker(
        bundle,
        PoisonStore(redis_url, redis_prefix),
        KafkaEventConsumer(s.kafka_bootstrap, s.feedback_topic, s.feedback_group),
        s,
        KafkaDeadLetterPublisher(s.kafka_bootstrap, s.dead_letter_topic),
    )
    worker.start()
    try:
        deadline = time.monotonic() + 90
        while worker.applied < len(good) or worker.parked < len(bad):
            assert time.monotonic() < deadline, (worker.applied, worker.parked)
            time.sleep(0.1)
        eventually(lambda: worker.stuck_for() == 0, 10)
    finally:
        worker.stop()
    likes = sum(e.kind == Kind.LIKE for e in good)
    assert redis_audit(redis_url, redis_prefix) == {"marks": len(good), "user_likes": likes}
    assert (worker.malformed, worker.poisoned, worker.parked) == (2, 1, 3)
    for kind in bad_kinds():
        assert sample("shortlist_feedback_dead_lettered_total", reason=kind) - before[kind] == 1
    # the poison event's batch 3 times, then it alone 3 times
    assert sample("shortlist_feedback_apply_failures_total") - failures_before == 6
    assert time.time() - sample("shortlist_feedback_last_progress_timestamp_seconds") < 30

    letters = dead_letters(broker.bootstrap, s.dead_letter_topic, len(bad))
    assert sorted(r.key for r in letters) == sorted(bad)
    for r in letters:
        value, kind, reason = bad[r.key]
        headers = {k: v.decode() for k, v in r.headers}
        assert r.value == value  # the original bytes, whatever they were
        assert headers["dlq.kind"] == kind
        assert reason in headers["dlq.reason"], headers["dlq.reason"]
        assert headers["dlq.topic"] == s.feedback_topic and int(headers["dlq.offset"]) >= 0

    # Offsets are committed past everything, the parked records included.
    probe = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=s.feedback_group)
    committed = [probe.committed(TopicPartition(s.feedback_topic, p)) for p in (0, 1)]
    probe.close()
    assert sum(committed) == len(good) + len(bad)


def bad_kinds() -> tuple[str, ...]:
    return ("malformed", "too_large", "apply_failed")


def test_a_worker_whose_every_apply_fails_parks_no_more_than_the_limit(
    broker, redis_url, redis_prefix, bundle
):
    """A broken worker (every apply answers an error) must not empty the topic into the
    dead-letter topic: after feedback_poison_limit records it holds on and retries, and once
    it works again the rest is applied, the parked ones not twice."""
    s = worker_settings(
        broker,
        redis_url,
        redis_prefix,
        "broken",
        feedback_apply_attempts=2,
        feedback_poison_limit=3,
    )
    ensure_topic(s.kafka_bootstrap, s.feedback_topic, 1)
    events = synthetic_events(bundle, 50, np.random.default_rng(4))
    produce(broker.bootstrap, s.feedback_topic, [(e.user_id.encode(), e.encode()) for e in events])
    store = PoisonStore(redis_url, redis_prefix)
    store.broken = True
    worker = FeedbackWorker(
        bundle,
        store,
        KafkaEventConsumer(s.kafka_bootstrap, s.feedback_topic, s.feedback_group),
        s,
        KafkaDeadLetterPublisher(s.kafka_bootstrap, s.dead_letter_topic),
    )
    worker.start()
    try:
        eventually(lambda: worker.stuck_for() > 1.5, 30)
        assert worker.poisoned == 3 and worker.applied == 0  # held, not parked
        store.broken = False
        eventually(lambda: worker.applied == len(events) - 3, 60)
        eventually(lambda: worker.stuck_for() == 0, 10)
    finally:
        worker.stop()
    assert redis_audit(redis_url, redis_prefix)["marks"] == len(events) - 3
    letters = dead_letters(broker.bootstrap, s.dead_letter_topic, 3)
    assert [r.value for r in letters] == [e.encode() for e in events[:3]]


def health_status(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        return stub.Check(request, timeout=2).status


def test_a_stuck_consumer_makes_the_feedback_service_not_ready_until_it_moves(
    broker,
    own_redis,
    bundle,
):
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    s = worker_settings(broker, own_redis.url, "sl:", "stuck", feedback_stuck_s=1)
    ensure_topic(s.kafka_bootstrap, s.feedback_topic, 1)
    started = start_service("feedback", s, bundle, "127.0.0.1:0")
    target = f"127.0.0.1:{started.server.port}"
    try:
        assert health_status(target, FEEDBACK_SERVICE) == serving
        own_redis.stop()  # the store away: retried without end, never parked
        events = synthetic_events(bundle, 30, np.random.default_rng(6))
        produce(broker.bootstrap, s.feedback_topic, [(b"k", e.encode()) for e in events])
        eventually(lambda: health_status(target, FEEDBACK_SERVICE) == not_serving, 30, 0.2)
        assert health_status(target, "") == serving  # liveness: a restart would not help
        eventually(lambda: sample("shortlist_feedback_consumer_stuck_seconds") > 1, 5)
        assert started.worker.parked == 0
        own_redis.start()
        eventually(lambda: health_status(target, FEEDBACK_SERVICE) == serving, 30, 0.2)
        assert redis_audit(own_redis.url, "sl:")["marks"] == len(events)
        eventually(lambda: sample("shortlist_feedback_consumer_stuck_seconds") == 0, 5)
    finally:
        started.stop()
