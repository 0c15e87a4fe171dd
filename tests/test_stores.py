"""Contract tests of the state store, run on the real Redis and on the in-memory backend."""

from __future__ import annotations

import numpy as np
import pytest

from shortlist.events import Event, Kind
from shortlist.stores import InMemoryStateStore, RedisStateStore, StoreUnavailable
from shortlist.stores.base import HISTORY_LENGTH


@pytest.fixture(params=["redis", "memory"])
def store(request):
    if request.param == "memory":
        yield InMemoryStateStore()
        return
    s = RedisStateStore(
        request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    )
    yield s
    s.close()


def ev(n: int, user: str, item: str, kind: Kind) -> Event:
    return Event(f"e{n}", user, item, kind, 1_700_000_000_000 + n)


def test_apply_updates_sets_history_counters_and_vector(store):
    events = [
        ev(1, "u1", "a", Kind.LIKE),
        ev(2, "u1", "b", Kind.DISLIKE),
        ev(3, "u2", "a", Kind.LIKE),
    ]
    pending = store.prepare(events)
    assert pending.new == [True, True, True]
    assert pending.histories == {"u1": [], "u2": []}
    store.apply(events, {"u1": np.array([1.0, 2.0], np.float32)}, "v1")

    state = store.user_state("u1", "v1")
    assert state.seen == {"a", "b"}
    assert state.disliked == {"b"}
    np.testing.assert_array_equal(state.vector, [1.0, 2.0])
    assert store.user_state("u1", "v2").vector is None  # vectors belong to one bundle version

    signals = store.ranking_signals("u1", ["a", "b", "zzz"])
    assert signals.history == [("b", Kind.DISLIKE), ("a", Kind.LIKE)]
    np.testing.assert_array_equal(signals.live_likes, [2, 0, 0])
    assert signals.likes == 1


def test_prepare_recognises_applied_event_ids(store):
    events = [ev(1, "u1", "a", Kind.LIKE)]
    store.apply(events, {}, "v1")
    again = store.prepare([*events, ev(2, "u1", "c", Kind.VIEW)])
    assert again.new == [False, True]
    assert again.histories["u1"] == [("a", Kind.LIKE)]


def test_like_after_dislike_clears_the_dislike(store):
    store.apply([ev(1, "u", "a", Kind.DISLIKE)], {}, "v1")
    store.apply([ev(2, "u", "a", Kind.LIKE)], {}, "v1")
    assert store.user_state("u", "v1").disliked == set()


def test_history_is_bounded(store):
    events = [ev(n, "u", f"i{n}", Kind.VIEW) for n in range(HISTORY_LENGTH + 25)]
    store.apply(events, {}, "v1")
    history = store.ranking_signals("u", []).history
    assert len(history) == HISTORY_LENGTH
    assert history[0] == (f"i{HISTORY_LENGTH + 24}", Kind.VIEW)  # newest first


def test_unknown_user_has_empty_state(store):
    state = store.user_state("nobody", "v1")
    assert state.vector is None and state.seen == set() and state.disliked == set()


def test_redis_down_raises_store_unavailable():
    store = RedisStateStore("redis://127.0.0.1:1/0", timeout_s=0.2)
    with pytest.raises(StoreUnavailable):
        store.user_state("u", "v1")
    with pytest.raises(StoreUnavailable):
        store.ping()
