"""`shortlist rebuild-state` over the real broker and Redis: the state rebuilt into an empty
prefix from the archive (the real archiver's files, through the CLI) and from the feedback
topic (from its earliest offset) equals the state the live worker built, FORGET events,
resent duplicates and items new to the bundle included."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from shortlist.config import Settings
from shortlist.feedback.archive import Archiver
from shortlist.feedback.bus import KafkaEventConsumer, KafkaEventPublisher, ensure_topic
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.rebuild import archive_files, rebuild_group, rebuild_state
from shortlist.feedback.stores import RedisStateStore
from shortlist.feedback.worker import FeedbackWorker
from tests.conftest import unique

pytestmark = pytest.mark.integration
NEW_ITEMS = ("brand-new-1", "brand-new-2")


def event_log(bundle, rng) -> list[Event]:
    """Feedback of 40 users over a pool of 60 items and two new ones (kinds change, items
    repeat), a few events sent twice, one user forgotten midway who comes back after."""
    users = [bundle.users.id(int(u)) for u in rng.choice(len(bundle.users), 40, replace=False)]
    pool = [bundle.items.id(int(i)) for i in rng.choice(len(bundle.items), 60, replace=False)]
    pool += list(NEW_ITEMS)
    kinds = [Kind.LIKE, Kind.LIKE, Kind.DISLIKE, Kind.SKIP, Kind.VIEW]
    events: list[Event] = []
    for n in range(900):
        user = users[int(rng.integers(len(users)))]
        item = pool[int(rng.integers(len(pool)))]
        events.append(
            Event(f"ev-{n}", user, item, kinds[int(rng.integers(5))], 1_700_000_000_000 + n)
        )
        if n % 97 == 5:
            events.append(events[int(rng.integers(len(events)))])  # a client retry
        if n == 450:
            events.append(Event("forget-1", users[0], "", Kind.FORGET, 1_700_000_000_000 + n))
    return events


def state_of(store: RedisStateStore, bundle, users: list[str]) -> dict:
    """What the services read, users' vectors and new items' vectors apart (compared with a
    tolerance: a batch's fold-in and the same events' in other batches round differently)."""
    version = bundle.version
    exact, vectors = {}, {}
    for user in users:
        s = store.user_state(user, version)
        exact[user] = (s.seen, s.disliked, s.history, s.likes)
        vectors[user] = s.vector
    exact["item_likes"] = store.item_likes()
    catalogue = store.catalogue(version)
    exact["hidden"] = catalogue.hidden
    feedback = store.item_feedback(list(NEW_ITEMS), version)
    exact["new_item_kinds"] = {i: {u: k for u, (k, _) in f.items()} for i, f in feedback.items()}
    vectors.update({f"item:{i}": v for i, v in catalogue.vectors.items()})
    return {"exact": exact, "vectors": vectors}


def assert_same_state(got: dict, want: dict) -> None:
    assert got["exact"] == want["exact"]
    assert got["vectors"].keys() == want["vectors"].keys()
    for key, vector in want["vectors"].items():
        if vector is None:
            assert got["vectors"][key] is None, key
        else:
            np.testing.assert_allclose(got["vectors"][key], vector, rtol=1e-4, atol=1e-5)


def test_rebuilt_state_equals_the_live_state(
    broker, redis_url, redis_prefix, bundle, bundle_dir, tmp_path
):
    s = Settings.from_env(
        {},
        redis_url=redis_url,
        kafka_bootstrap=broker.bootstrap,
        feedback_topic=unique("rebuild"),
        feedback_group=unique("rebuild"),
        feedback_batch=128,  # batches cut other than the rebuild's
        archive_file_events=150,  # several archive files
        archive_flush_ms=100,
    )
    live, from_archive, from_topic = (f"{redis_prefix}{p}:" for p in ("live", "arch", "topic"))
    ensure_topic(s.kafka_bootstrap, s.feedback_topic, 2)
    events = event_log(bundle, np.random.default_rng(21))
    publisher = KafkaEventPublisher(s.kafka_bootstrap, s.feedback_topic)
    publisher.publish(events, timeout_s=30)
    publisher.close()
    unique_ids = len({e.event_id for e in events})

    # The live worker, and the archiver in its own group.
    worker = FeedbackWorker(
        bundle,
        RedisStateStore(redis_url, live),
        KafkaEventConsumer(s.kafka_bootstrap, s.feedback_topic, s.feedback_group),
        s,
    )
    archiver = Archiver(
        KafkaEventConsumer(s.kafka_bootstrap, s.feedback_topic, unique("archive")),
        s,
        tmp_path / "archive",
    )
    deadline = time.monotonic() + 120
    while worker.applied < unique_ids or archiver.archived < len(events):
        assert time.monotonic() < deadline, (worker.applied, archiver.archived)
        if worker.applied < unique_ids:
            worker.run_once(200)
        archiver.run_once(200)
    archiver.flush()
    worker.stop()
    archiver.stop()
    assert len(archive_files(tmp_path / "archive")) >= 3
    users = sorted({e.user_id for e in events})
    want = state_of(RedisStateStore(redis_url, live), bundle, users)
    assert (
        want["exact"][users[0]] != (set(), set(), [], 0)
        and want["vectors"]["item:brand-new-1"] is not None
    )

    # From the archive, through the CLI, into an empty prefix.
    env = {
        **os.environ,
        **s.to_env(),
        "SHORTLIST_BUNDLE": str(bundle_dir),
        "SHORTLIST_REDIS_PREFIX": from_archive,
    }
    argv = [sys.executable, "-m", "shortlist.tools.cli", "rebuild-state"]
    argv += ["--archive", str(tmp_path / "archive")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f'"archive_records": {len(events)}' in done.stdout, done.stdout
    assert_same_state(state_of(RedisStateStore(redis_url, from_archive), bundle, users), want)
    # The prefix now holds keys: a second rebuild into it is refused.
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already holds keys" in again.stdout + again.stderr

    # From the topic, from its earliest offset, in a group of its own.
    store = RedisStateStore(redis_url, from_topic)
    consumer = KafkaEventConsumer(s.kafka_bootstrap, s.feedback_topic, rebuild_group(s))
    report = rebuild_state(bundle, store, s, topic=consumer, idle_polls=3, poll_ms=500)
    assert report.topic_records == len(events) and report.applied == unique_ids
    assert report.duplicates == len(events) - unique_ids
    assert_same_state(state_of(store, bundle, users), want)
