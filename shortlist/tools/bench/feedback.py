"""`shortlist bench feedback`: freshness and ingestion throughput of the feedback loop.

Everything runs over the real parts: a tansu broker child process, the Redis at
`redis_url` (under a key prefix of its own, deleted afterwards) and gRPC over sockets.

* Freshness: Recommend for a user, like the top item, and once SendFeedback is
  acknowledged, call Recommend until the item is gone; the time from the acknowledgement
  to the reply that reflects it, per trial.
* Throughput: publish N events (plus a share of replayed duplicates) to a fresh topic,
  then let one FeedbackWorker (one consumer process, its service loop) apply them; events
  per second, and an audit in Redis that every event was applied exactly once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import redis

from shortlist.bundle.bundle import Bundle
from shortlist.config import Settings
from shortlist.data.synthetic import generate
from shortlist.feedback.bus import KafkaEventConsumer, KafkaEventPublisher, ensure_topic
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores import RedisStateStore
from shortlist.feedback.worker import FeedbackWorker
from shortlist.models.progress import bar, track
from shortlist.services.launch import start_inprocess_stack
from shortlist.tools.stack import TansuBroker, wait_for
from shortlist.training.pipeline import TrainConfig, train_bundle
from shortlist.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


@dataclass
class FeedbackBenchConfig:
    trials: int = 200
    events: int = 50_000
    duplicate_share: float = 0.05
    batch: int = 2000
    n_users: int = 2000
    n_items: int = 1000
    seed: int = 0
    redis_url: str = "redis://127.0.0.1:6379/0"


def percentiles(values_ms: list[float]) -> dict[str, float]:
    a = np.asarray(values_ms)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 2),
    }


def bench_bundle(cfg: FeedbackBenchConfig) -> Bundle:
    data = generate(n_users=cfg.n_users, n_items=cfg.n_items, n_topics=10, seed=cfg.seed)
    return train_bundle(data, TrainConfig(dim=32, epochs=10, candidates=100, seed=cfg.seed))


def measure_freshness(
    settings: Settings, bundle: Bundle, store: RedisStateStore, trials: int, seed: int
) -> list[float]:
    """Milliseconds from a like's acknowledgement to the first Recommend without the item."""
    publisher = KafkaEventPublisher(settings.kafka_bootstrap, settings.feedback_topic)
    consumer = KafkaEventConsumer(
        settings.kafka_bootstrap, settings.feedback_topic, settings.feedback_group
    )
    stack = start_inprocess_stack(settings, bundle, store, publisher, consumer)
    worker = stack.services["feedback"].worker
    channel = grpc.insecure_channel(stack.gateway_target)
    stub = gateway_pb2_grpc.GatewayStub(channel)
    rng = np.random.default_rng(seed)
    users = [bundle.users.id(int(u)) for u in rng.choice(len(bundle.users), trials, False)]
    try:
        # The group must own its partitions before the clock means anything.
        warm = common_pb2.FeedbackEvent(user_id=users[0], item_id=bundle.items.id(0))
        warm.kind = common_pb2.FEEDBACK_KIND_VIEW
        stub.SendFeedback(gateway_pb2.SendFeedbackRequest(events=[warm]), timeout=10)
        wait_for(lambda: worker.applied >= 1, 60, "the feedback group's first event")
        samples = []
        for user in track(users, "freshness trials"):
            top = stub.Recommend(gateway_pb2.RecommendRequest(user_id=user, k=20), timeout=2)
            item = top.items[0].item_id
            like = common_pb2.FeedbackEvent(
                user_id=user, item_id=item, kind=common_pb2.FEEDBACK_KIND_LIKE
            )
            stub.SendFeedback(gateway_pb2.SendFeedbackRequest(events=[like]), timeout=5)
            acked = time.perf_counter()
            while True:
                reply = stub.Recommend(gateway_pb2.RecommendRequest(user_id=user, k=20), timeout=2)
                if item not in {s.item_id for s in reply.items}:
                    break
                if time.perf_counter() - acked > 10:
                    raise RuntimeError(f"like of {item} by {user} not visible after 10 s")
            samples.append((time.perf_counter() - acked) * 1000)
        return samples
    finally:
        channel.close()
        stack.stop()
        publisher.close()


def synthetic_events(bundle: Bundle, n: int, rng: np.random.Generator) -> list[Event]:
    """`n` events with distinct (user, item) pairs: 80% likes, 20% dislikes."""
    n_users, n_items = len(bundle.users), len(bundle.items)
    pairs = rng.choice(n_users * n_items, size=n, replace=False)
    kinds = np.where(rng.random(n) < 0.8, Kind.LIKE, Kind.DISLIKE)
    now = int(time.time() * 1000)
    return [
        Event(
            event_id=uuid.uuid4().hex,
            user_id=bundle.users.id(int(p // n_items)),
            item_id=bundle.items.id(int(p % n_items)),
            kind=Kind(k),
            timestamp_ms=now,
        )
        for p, k in zip(pairs, kinds)
    ]


def measure_throughput(
    settings: Settings, bundle: Bundle, store: RedisStateStore, cfg: FeedbackBenchConfig
) -> dict[str, Any]:
    rng = np.random.default_rng(cfg.seed)
    events = synthetic_events(bundle, cfg.events, rng)
    replays = [events[i] for i in rng.choice(len(events), int(len(events) * cfg.duplicate_share))]
    stream = events + replays
    ensure_topic(settings.kafka_bootstrap, settings.feedback_topic, settings.feedback_partitions)
    publisher = KafkaEventPublisher(settings.kafka_bootstrap, settings.feedback_topic)
    start = time.perf_counter()
    for lo in track(range(0, len(stream), 1000), "events published"):
        publisher.publish(stream[lo : lo + 1000], timeout_s=30)
    publish_s = time.perf_counter() - start
    publisher.close()

    consumer = KafkaEventConsumer(
        settings.kafka_bootstrap, settings.feedback_topic, settings.feedback_group
    )
    worker = FeedbackWorker(bundle, store, consumer, settings)
    worker.start()  # the service's own (pipelined) loop
    deadline = time.monotonic() + 600
    try:
        with bar("events applied", len(stream)) as advance:
            shown = 0
            while (done := worker.applied + worker.duplicates) < len(stream):
                if time.monotonic() > deadline:
                    break
                if done > shown:
                    advance(done - shown)
                    shown = done
                time.sleep(0.005)
            finished = time.perf_counter()
    finally:
        worker.stop()
    # The clock starts with the first poll that got records (not the group join).
    elapsed = finished - (worker.first_records_at or finished)

    likes = sum(1 for e in events if e.kind == Kind.LIKE)
    audit = redis_audit(cfg.redis_url, settings.redis_prefix)
    return {
        "events": len(stream),
        "unique_events": len(events),
        "replayed": len(replays),
        "applied": worker.applied,
        "duplicates_skipped": worker.duplicates,
        "consume_seconds": round(elapsed, 3),
        "events_per_s": round(len(stream) / elapsed, 1) if elapsed else 0.0,
        "publish_events_per_s": round(len(stream) / publish_s, 1),
        "redis_dedup_marks": audit["marks"],
        "redis_user_like_counters": audit["user_likes"],
        "expected_likes": likes,
        "exactly_once": audit["marks"] == len(events)
        and audit["user_likes"] == likes
        and worker.applied == len(events),
        "batch": settings.feedback_batch,
    }


def redis_audit(url: str, prefix: str) -> dict[str, int]:
    """Dedup marks and the sum of per-user like counters under `prefix`."""
    client = redis.Redis.from_url(url)
    marks = sum(1 for _ in client.scan_iter(f"{prefix}{{u:*}}:ev:*", count=5000))
    keys = list(client.scan_iter(f"{prefix}{{u:*}}:likes", count=5000))
    user_likes = sum(int(v) for v in client.mget(keys)) if keys else 0
    return {"marks": marks, "user_likes": user_likes}


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(f"{prefix}*", count=5000))
    for lo in range(0, len(keys), 5000):
        client.delete(*keys[lo : lo + 5000])


def run(cfg: FeedbackBenchConfig, progress=print, bundle: Bundle | None = None) -> dict[str, Any]:
    if bundle is None:
        progress(f"training a bench bundle ({cfg.n_users} users, {cfg.n_items} items)")
        bundle = bench_bundle(cfg)
    broker = TansuBroker()
    broker.start()
    run_id = uuid.uuid4().hex[:8]
    result: dict[str, Any] = {"bench": "feedback"}
    try:
        fresh = Settings(
            redis_url=cfg.redis_url,
            redis_prefix=f"slbench:{run_id}:f:",
            kafka_bootstrap=broker.bootstrap,
            feedback_topic=f"bench-fresh-{run_id}",
            feedback_group=f"bench-fresh-{run_id}",
        )
        store = RedisStateStore(cfg.redis_url, fresh.redis_prefix)
        progress(f"freshness: {cfg.trials} like -> Recommend trials over tansu and Redis")
        samples = measure_freshness(fresh, bundle, store, cfg.trials, cfg.seed)
        result["freshness"] = {"trials": len(samples), **percentiles(samples)}
        delete_prefix(cfg.redis_url, fresh.redis_prefix)

        thr = Settings(
            redis_url=cfg.redis_url,
            redis_prefix=f"slbench:{run_id}:t:",
            kafka_bootstrap=broker.bootstrap,
            feedback_topic=f"bench-thr-{run_id}",
            feedback_group=f"bench-thr-{run_id}",
            feedback_batch=cfg.batch,
        )
        progress(f"throughput: {cfg.events:,} events (+{cfg.duplicate_share:.0%} replays)")
        store = RedisStateStore(cfg.redis_url, thr.redis_prefix)
        result["throughput"] = measure_throughput(thr, bundle, store, cfg)
        delete_prefix(cfg.redis_url, thr.redis_prefix)
    finally:
        broker.stop()
    return result
