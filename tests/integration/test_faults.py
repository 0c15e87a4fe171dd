"""Faults on the real parts: a feedback process killed mid-stream, Redis and broker restarts."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import redis

from shortlist.client import Client, Feedback
from shortlist.config import Settings
from shortlist.feedback.bus import KafkaEventPublisher, ensure_topic
from shortlist.feedback.events import Kind
from shortlist.tools.bench.feedback import redis_audit, synthetic_events
from shortlist.tools.stack import TansuBroker, free_port
from tests.conftest import eventually, start_stack, unique

pytestmark = pytest.mark.integration


def spawn_feedback(settings: Settings, bundle_dir) -> subprocess.Popen:
    env = {
        **os.environ,
        **settings.to_env(),
        "SHORTLIST_BUNDLE": str(bundle_dir),
        "SHORTLIST_FEEDBACK_ADDR": f"127.0.0.1:{free_port()}",
        "SHORTLIST_FEEDBACK_METRICS_PORT": str(free_port()),
    }
    argv = [sys.executable, "-m", "shortlist.services", "feedback"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_killed_feedback_processes_apply_every_acknowledged_event_once(
    broker, redis_url, redis_prefix, bundle, bundle_dir
):
    settings = Settings.from_env(
        {},
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        kafka_bootstrap=broker.bootstrap,
        feedback_topic=unique("faults"),
        feedback_group=unique("faults"),
        feedback_batch=200,
    )
    ensure_topic(settings.kafka_bootstrap, settings.feedback_topic, 4)
    events = synthetic_events(bundle, 4000, np.random.default_rng(7))
    likes = sum(e.kind == Kind.LIKE for e in events)
    publisher = KafkaEventPublisher(settings.kafka_bootstrap, settings.feedback_topic)
    publisher.publish(events[:2000], timeout_s=30)  # acknowledged by the broker

    first = spawn_feedback(settings, bundle_dir)
    try:
        eventually(lambda: redis_audit(redis_url, redis_prefix)["marks"] > 0, 60)
        first.send_signal(signal.SIGKILL)  # mid-stream: no clean shutdown, no final commit
        first.wait(10)
        partial = redis_audit(redis_url, redis_prefix)["marks"]
        publisher.publish(events[2000:], timeout_s=30)
        # Two processes now share the group's partitions; replays must be no-ops.
        pair = [spawn_feedback(settings, bundle_dir) for _ in range(2)]
        try:
            eventually(lambda: redis_audit(redis_url, redis_prefix)["marks"] >= 4000, 120, 0.5)
            time.sleep(1.0)  # let any replay of an uncommitted batch land before auditing
            audit = redis_audit(redis_url, redis_prefix)
        finally:
            for p in pair:
                p.terminate()
                p.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
        publisher.close()
    assert partial < 4000
    assert audit == {"marks": 4000, "user_likes": likes}


def like(user: str, item: str) -> Feedback:
    return Feedback(user, item, "like")


def stack_on_own_redis(own_redis, bundle, broker: TansuBroker, **overrides):
    """The in-process stack over `own_redis` and `broker`, with short store and bus
    timeouts so that outages show quickly."""
    settings = Settings.from_env(
        {},
        redis_url=own_redis.url,
        kafka_bootstrap=broker.bootstrap,
        feedback_topic=unique("fault"),
        feedback_group=unique("fault"),
        **overrides,
    )
    stack = start_stack(settings, bundle, 1, store_timeout_s=0.2, publish_block_s=1.0)
    return settings, stack


def test_redis_and_broker_restarts_are_survived(own_redis, bundle):
    broker = TansuBroker()
    broker.start()
    settings, stack = stack_on_own_redis(
        own_redis,
        bundle,
        broker,
        publish_timeout_ms=1500,
        retrieval_timeout_ms=500,
        ranking_timeout_ms=500,
    )
    user, item = bundle.users.id(5), bundle.items.id(3)
    try:
        # one attempt per call: the answers during the outages are the point, not a retry's
        with Client(stack.gateway_target, timeout_s=5, max_attempts=1) as client:
            assert not client.recommend(user, 5).fallback_used

            own_redis.stop()
            started = time.perf_counter()
            reply = client.recommend(user, 5)
            assert time.perf_counter() - started < 2.0
            assert reply.fallback_used and reply.fallback_reason.startswith("state_unavailable")
            assert len(reply.items) == 5
            # The broker still takes feedback; the worker holds it until Redis is back.
            client.send_feedback(like(user, item), timeout_s=10)

            own_redis.start()
            eventually(lambda: not client.recommend(user, 5).fallback_used, 30)
            store = redis.Redis.from_url(own_redis.url)
            seen = f"{settings.redis_prefix}{{u:{user}}}:seen"
            eventually(lambda: store.sismember(seen, item), 30)

            broker.stop()
            with pytest.raises(grpc.RpcError) as err:
                client.send_feedback(like(user, bundle.items.id(4)), timeout_s=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert len(client.recommend(user, 5).items) == 5

            broker.start()  # same port, empty storage: the producer reconnects by itself
            ensure_topic(settings.kafka_bootstrap, settings.feedback_topic, 1)

            def accepted() -> bool:
                try:
                    client.send_feedback(like(user, bundle.items.id(6)), timeout_s=10)
                    return True
                except grpc.RpcError:
                    return False

            eventually(accepted, 60, 0.5)
    finally:
        stack.stop()
        broker.stop()


def test_redis_stopped_under_load_serves_fallbacks_within_the_deadline(own_redis, bundle):
    """Four clients call Recommend back to back while Redis goes away and comes back: no
    call fails or outlives its deadline, calls during the outage are marked degraded, and
    personal results return by themselves."""
    broker = TansuBroker()
    broker.start()
    _, stack = stack_on_own_redis(
        own_redis, bundle, broker, retrieval_timeout_ms=400, ranking_timeout_ms=400
    )
    # the outage's exceptions fill the young generations: a full collection that walked
    # the loaded bundle would stall every thread past the stage deadlines
    assert gc.get_freeze_count() > 0
    deadline_s = 1.0
    phase = {"now": "before"}
    calls: list[tuple[str, float, str | None, str]] = []  # phase, seconds, error, fallback
    stop = threading.Event()

    def caller(n: int) -> None:
        # one attempt per call: a retry would hide a failed call
        with Client(stack.gateway_target, timeout_s=deadline_s, max_attempts=1) as client:
            u = 0
            while not stop.is_set():
                user = bundle.users.id((n * 50 + u) % len(bundle.users))
                u += 1
                at, started = phase["now"], time.perf_counter()
                error, reason = None, ""
                try:
                    reason = client.recommend(user, 5).fallback_reason
                except grpc.RpcError as exc:
                    error = exc.code().name
                # A call that spans a phase change (Redis back mid-call, say) is in neither.
                at = at if phase["now"] == at else "boundary"
                calls.append((at, time.perf_counter() - started, error, reason))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        phase["now"] = "stopping"
        own_redis.stop()
        time.sleep(0.5)
        phase["now"] = "outage"
        time.sleep(2.5)
        phase["now"] = "restarting"
        own_redis.start()
        time.sleep(3.0)
        phase["now"] = "after"
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        stack.stop()
        broker.stop()
    errors = [c for c in calls if c[2] is not None]
    assert not errors, errors[:5]
    assert max(c[1] for c in calls) < deadline_s
    outage = [c for c in calls if c[0] == "outage"]
    unmarked = [c for c in outage if not c[3].startswith("state_unavailable")]
    assert len(outage) > 20 and not unmarked, unmarked[:5]
    after = [c for c in calls if c[0] == "after"]
    assert after and not any(c[3] for c in after[-10:])
