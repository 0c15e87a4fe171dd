"""Feedback consumers scale to the partition count (issue 28): two workers in one group
over four partitions share them, and every event is applied exactly once."""

from __future__ import annotations

import pytest

from shortlist.config import Settings
from shortlist.data.synthetic import generate
from shortlist.feedback.bus import KafkaEventConsumer, KafkaEventPublisher, ensure_topic
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores import RedisStateStore
from shortlist.feedback.worker import FeedbackWorker
from shortlist.tools.bench.feedback import redis_audit
from tests.conftest import eventually, unique

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    from shortlist.bundle.files import load_bundle, save_bundle
    from shortlist.models.spectral import SpectralCF, SpectralConfig
    from shortlist.training.pipeline import retrieval_bundle

    data = generate(n_users=80, n_items=60, n_topics=3, likes_per_user=6, seed=8)
    model = SpectralCF(SpectralConfig(rank=8, ideal_rank=4))
    model.fit(data)
    return load_bundle(save_bundle(retrieval_bundle(data, model), tmp_path_factory.mktemp("b")))


def test_two_consumers_over_four_partitions_apply_every_event_once(
    small_bundle, broker, redis_url, redis_prefix
):
    settings = Settings.from_env(
        {},
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        kafka_bootstrap=broker.bootstrap,
        feedback_topic=unique("scale"),
        feedback_group=unique("scale"),
        feedback_partitions=4,
    )
    ensure_topic(settings.kafka_bootstrap, settings.feedback_topic, 4)
    workers = [
        FeedbackWorker(
            small_bundle,
            RedisStateStore(redis_url, redis_prefix),
            KafkaEventConsumer(
                settings.kafka_bootstrap, settings.feedback_topic, settings.feedback_group
            ),
            settings,
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    publisher = KafkaEventPublisher(settings.kafka_bootstrap, settings.feedback_topic)
    users = [small_bundle.users.id(n) for n in range(80)]
    events = [
        Event(f"s{n}", users[n % 80], small_bundle.items.id(n // 80), Kind.LIKE, n)
        for n in range(2000)
    ]
    try:
        eventually(lambda: all(w.consumer.has_assignment() for w in workers), timeout_s=60)
        for lo in range(0, len(events), 250):
            publisher.publish(events[lo : lo + 250], 10)
        eventually(lambda: sum(w.applied for w in workers) >= len(events), timeout_s=120)
        assignments = [w.consumer._consumer.assignment() for w in workers]
    finally:
        publisher.close()
        for worker in workers:
            worker.stop()
    # both took part: the group split the four partitions between them
    assert all(len(a) == 2 for a in assignments), assignments
    assert not assignments[0] & assignments[1]
    assert all(w.applied > 0 for w in workers), [w.applied for w in workers]
    # exactly once: each event applied by one worker, no duplicates, all in Redis
    assert sum(w.applied for w in workers) == len(events)
    assert sum(w.duplicates for w in workers) == 0
    assert redis_audit(redis_url, redis_prefix) == {"marks": 2000, "user_likes": 2000}
    store = RedisStateStore(redis_url, redis_prefix)
    assert sum(store.item_likes().values()) == 2000
    assert sum(len(store.user_state(u, small_bundle.version).seen) for u in users) == 2000


def test_the_producer_is_idempotent_when_the_setting_says_so(broker):
    from shortlist.services.launch import kafka_publisher

    settings = Settings.from_env({}, kafka_bootstrap=broker.bootstrap)
    assert settings.kafka_idempotence == 0  # tansu, the local broker, grants no producer ids
    plain = kafka_publisher(settings)
    idempotent = kafka_publisher(settings.replace(kafka_idempotence=1))
    try:
        assert plain._get_producer().config["enable_idempotence"] is False
        producer = idempotent._get_producer()
        assert producer.config["enable_idempotence"] is True
        assert producer.config["acks"] == -1  # all
    finally:
        plain.close()
        idempotent.close()
