"""Live item like counts kept in process (shortlist.ranking.item_likes), over the real Redis."""

from __future__ import annotations

import numpy as np
import pytest

from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores import RedisStateStore
from shortlist.ranking.item_likes import LiveItemLikes
from tests.conftest import eventually


@pytest.fixture
def store(redis_url, redis_prefix):
    s = RedisStateStore(redis_url, redis_prefix)
    yield s
    s.close()


def like(store: RedisStateStore, n: int, user: str, item: str) -> None:
    store.apply([Event(f"e{n}", user, item, Kind.LIKE, 1_700_000_000_000 + n)], {}, "v1")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_counts_follow_the_store_by_item_index(store, bundle):
    a, b = bundle.items.id(3), bundle.items.id(7)
    like(store, 1, "u1", a)
    like(store, 2, "u2", a)
    like(store, 3, "u1", b)
    like(store, 4, "u1", "not-in-this-bundle")
    live = LiveItemLikes(store, refresh_s=0)
    counts = live.counts(bundle.version, bundle.items)
    assert counts.shape == (len(bundle.items),) and counts.dtype == np.float32
    assert counts[3] == 2 and counts[7] == 1 and counts.sum() == 3
    like(store, 5, "u3", b)
    assert live.counts(bundle.version, bundle.items)[7] == 2  # refresh_s 0: read on every lookup


def test_background_refresh_only_once_the_interval_has_passed(store, bundle):
    clock = Clock()
    live = LiveItemLikes(store, refresh_s=1.0, clock=clock)
    live.refresh()
    item = bundle.items.id(5)
    like(store, 1, "u1", item)
    assert live.counts(bundle.version, bundle.items)[5] == 0  # read at 0.0, not stale yet
    clock.now = 0.5
    assert live.counts(bundle.version, bundle.items)[5] == 0
    clock.now = 1.0  # stale: this lookup answers from the old read and starts a new one
    assert live.counts(bundle.version, bundle.items)[5] == 0
    eventually(lambda: live.counts(bundle.version, bundle.items)[5] == 1, timeout_s=10)


def test_a_failed_read_keeps_the_last_counts(store, bundle):
    like(store, 1, "u1", bundle.items.id(2))
    live = LiveItemLikes(store, refresh_s=0)
    assert live.counts(bundle.version, bundle.items)[2] == 1
    live.store = RedisStateStore("redis://127.0.0.1:1/0", timeout_s=0.2)  # Redis gone
    assert live.counts(bundle.version, bundle.items)[2] == 1  # no exception; the last read stays


def test_a_dead_redis_gives_zeros_without_raising(bundle):
    dead = RedisStateStore("redis://127.0.0.1:1/0", timeout_s=0.2)
    live = LiveItemLikes(dead, refresh_s=0)
    assert not live.counts(bundle.version, bundle.items).any()
