"""Shared fixtures: a small trained bundle, a real Redis, and a real Kafka-protocol broker."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import redis

from services.launch import start_inprocess_stack
from shortlist.artifacts import Bundle, load_bundle, save_bundle
from shortlist.bus import KafkaEventConsumer, KafkaEventPublisher, ensure_topic
from shortlist.config import Settings
from shortlist.data.synthetic import generate
from shortlist.stack import TansuBroker, free_port  # noqa: F401 (re-exported for tests)
from shortlist.stores import RedisStateStore
from shortlist.training import TrainConfig, train_bundle

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    """A bundle trained on small built-in data (seconds on 2 cores)."""
    data = generate(n_users=300, n_items=200, n_topics=5, likes_per_user=20, seed=3)
    root = tmp_path_factory.mktemp("artifacts")
    save_bundle(train_bundle(data, TrainConfig(dim=16, epochs=15, candidates=100)), root)
    return root


@pytest.fixture(scope="session")
def bundle(bundle_dir) -> Bundle:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"tests need a real Redis at {REDIS_URL} (.ci/run starts one): {exc}")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url) -> str:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"sltest:{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def broker() -> TansuBroker:
    b = TansuBroker()
    b.start()
    yield b
    b.stop()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def eventually(check, timeout_s: float = 30, interval: float = 0.05):
    """Poll `check` until it returns a truthy value; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met after {timeout_s}s (last value {value!r})")


# The in-process stack over the real Redis and broker, one per test module that asks for it.
@pytest.fixture(scope="module")
def settings(redis_url, broker) -> Settings:
    prefix = f"sltest:{uuid.uuid4().hex[:8]}:"
    s = Settings.from_env(
        {},
        redis_url=redis_url,
        redis_prefix=prefix,
        kafka_bootstrap=broker.bootstrap,
        feedback_topic=unique("feedback"),
        feedback_group=unique("group"),
        candidates=100,
        retrieval_timeout_ms=2000,
        ranking_timeout_ms=2000,
    )
    yield s
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="module")
def stack(settings, bundle):
    ensure_topic(settings.kafka_bootstrap, settings.feedback_topic, 2)
    s = start_inprocess_stack(
        settings,
        bundle,
        RedisStateStore(settings.redis_url, settings.redis_prefix),
        KafkaEventPublisher(settings.kafka_bootstrap, settings.feedback_topic),
        KafkaEventConsumer(
            settings.kafka_bootstrap, settings.feedback_topic, settings.feedback_group
        ),
    )
    yield s
    s.stop()
