"""Shared fixtures: a small trained bundle, a real Redis, and a real Kafka-protocol broker."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import redis

from shortlist.bundle.bundle import Bundle
from shortlist.bundle.files import load_bundle, save_bundle
from shortlist.client import Client
from shortlist.config import Settings
from shortlist.data.synthetic import generate
from shortlist.feedback.bus import KafkaEventConsumer, KafkaEventPublisher, ensure_topic
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores import InMemoryStateStore, RedisStateStore
from shortlist.rpc.server import client_channel
from shortlist.rpc.telemetry import start_metrics_server
from shortlist.services.launch import InProcessStack, start_inprocess_stack
from shortlist.tools.redis_cluster import LocalRedisCluster
from shortlist.tools.stack import TansuBroker, free_port  # noqa: F401 (re-exported for tests)
from shortlist.training.pipeline import TrainConfig, train_bundle
from shortlist.v1 import feedback_pb2_grpc, gateway_pb2_grpc
from tests.pki import write_test_pki

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


def bare_gateway(settings: Settings):
    """A gateway server with the security of `settings` over the base servicer (every RPC
    UNIMPLEMENTED): what the interceptors let through reaches it."""
    from shortlist.rpc.server import start_server

    return start_server(
        "gateway",
        lambda s: gateway_pb2_grpc.add_GatewayServicer_to_server(
            gateway_pb2_grpc.GatewayServicer(), s
        ),
        ("shortlist.v1.Gateway",),
        "127.0.0.1:0",
        settings=settings,
    )


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


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a leaf certificate for the services and one from an unrelated CA (tests.pki)."""
    return write_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own (shortlist.tools.faults.OwnRedis: AOF, maxmemory
    64 MB, noeviction), so that it can be stopped, restarted, squeezed or slowed."""
    from shortlist.tools.faults import OwnRedis

    server = OwnRedis(tmp_path / "redis", maxmemory_mb=64)
    server.start()
    yield server
    server.stop()


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


def start_stack(
    settings: Settings,
    bundle: Bundle,
    partitions: int = 2,
    store_timeout_s: float | None = None,
    publish_block_s: float | None = None,
    **options,
) -> InProcessStack:
    """The in-process stack over the Redis and the broker that `settings` name, on its
    feedback topic (created first, with `partitions`) and group; `store_timeout_s` and
    `publish_block_s` shorten the store's and the producer's waits (outages show quickly);
    `options` go to start_inprocess_stack."""
    ensure_topic(settings.kafka_bootstrap, settings.feedback_topic, partitions)
    store = {} if store_timeout_s is None else {"timeout_s": store_timeout_s}
    producer = {} if publish_block_s is None else {"max_block_s": publish_block_s}
    return start_inprocess_stack(
        settings,
        bundle,
        RedisStateStore(settings.redis_url, settings.redis_prefix, **store),
        KafkaEventPublisher(settings.kafka_bootstrap, settings.feedback_topic, **producer),
        KafkaEventConsumer(
            settings.kafka_bootstrap, settings.feedback_topic, settings.feedback_group
        ),
        **options,
    )


@pytest.fixture(scope="module")
def stack(settings, bundle):
    s = start_stack(settings, bundle)
    yield s
    s.stop()


# A client of the module's stack, the admin stub, and a state store of each kind.
@pytest.fixture(scope="module")
def client(stack) -> Client:
    """`shortlist.client.Client` of the stack's gateway, as an app would call it (a 10 s
    deadline: the shared CI cores are slow)."""
    with Client(stack.gateway_target, timeout_s=10) as c:
        yield c


@pytest.fixture(scope="module")
def admin(stack):
    with client_channel(stack.target("feedback")) as channel:
        yield feedback_pb2_grpc.FeedbackAdminStub(channel)


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    """A Redis Cluster of three masters of the tests' own (redis-server in cluster mode on
    free ports), torn down after the session; its URL picks the cluster client."""
    cluster = LocalRedisCluster(masters=3)
    cluster.start()
    yield cluster.url
    cluster.stop()


@pytest.fixture(params=["redis", "redis-cluster"])
def any_redis_url(request) -> str:
    """The URL of the single Redis, then of the Redis Cluster."""
    return request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")


@pytest.fixture(params=["redis", "redis-cluster", "memory"])
def store(request):
    if request.param == "memory":
        yield InMemoryStateStore()
        return
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    s = RedisStateStore(url, request.getfixturevalue("redis_prefix"))
    yield s
    s.close()


def ev(n: int, user: str, item: str, kind: Kind) -> Event:
    return Event(f"e{n}", user, item, kind, 1_700_000_000_000 + n)


# A/B: a second bundle over the same catalogue from another model, and a stack serving both.
@pytest.fixture(scope="session")
def bundle_b_dir(tmp_path_factory, bundle) -> Path:
    data = generate(n_users=300, n_items=200, n_topics=5, likes_per_user=20, seed=3)
    b = train_bundle(data, TrainConfig(dim=8, epochs=10, candidates=100, seed=7))
    b.version = f"{bundle.version}-b"
    root = tmp_path_factory.mktemp("artifacts-b")
    save_bundle(b, root)
    return root


@pytest.fixture(scope="session")
def bundle_b(bundle_b_dir) -> Bundle:
    return load_bundle(bundle_b_dir)


@pytest.fixture(scope="module")
def ab_settings(settings, bundle_b_dir) -> Settings:
    return settings.replace(ab_bundle_b=str(bundle_b_dir), ab_share_b=0.5)


@pytest.fixture(scope="module")
def ab_stack(ab_settings, bundle, bundle_b):
    """The in-process stack serving two arms (share 0.5), with /metrics on a free port."""
    running = start_stack(ab_settings, bundle, bundle_b=bundle_b)
    metrics_port = free_port()
    metrics = start_metrics_server(metrics_port)
    running.metrics_target = f"127.0.0.1:{metrics_port}"
    yield running
    metrics.shutdown()
    running.stop()


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration is marked `integration` (real Redis, the broker,
    sockets); tests/unit needs none of them."""
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)
