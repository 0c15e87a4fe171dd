"""Contract tests of the state store, run on the real Redis and on the in-memory backend."""

from __future__ import annotations

import numpy as np
import pytest

from shortlist.feedback.events import Kind
from shortlist.feedback.stores import RedisStateStore, StoreUnavailable
from shortlist.feedback.stores.base import DEDUP_TTL_S, HISTORY_LENGTH, Conflict
from tests.conftest import ev


def test_apply_updates_sets_history_counters_and_vector(store):
    events = [
        ev(1, "u1", "a", Kind.LIKE),
        ev(2, "u1", "b", Kind.DISLIKE),
        ev(3, "u2", "a", Kind.LIKE),
    ]
    pending = store.prepare(events, "v1")
    assert pending.new == [True, True, True]
    assert {u: (f.seq, f.vector, f.kinds, f.complete) for u, f in pending.users.items()} == {
        "u1": (0, None, {}, True),
        "u2": (0, None, {}, True),
    }
    store.apply(events, {"u1": np.array([1.0, 2.0], np.float32)}, "v1")

    state = store.user_state("u1", "v1")
    assert state.seen == {"a", "b"}
    assert state.disliked == {"b"}
    np.testing.assert_array_equal(state.vector, [1.0, 2.0])
    assert store.user_state("u1", "v2").vector is None  # vectors belong to one bundle version

    assert state.history == [("b", Kind.DISLIKE), ("a", Kind.LIKE)]  # newest first
    assert state.likes == 1
    assert store.user_state("u2", "v1").likes == 1
    assert store.item_likes() == {"a": 2}  # items without a live like are absent


def test_prepare_recognises_applied_event_ids(store):
    events = [ev(1, "u1", "a", Kind.LIKE)]
    store.apply(events, {}, "v1")
    again = store.prepare([*events, ev(2, "u1", "c", Kind.VIEW)], "v1")
    assert again.new == [False, True]
    assert again.users["u1"].kinds == {"a": Kind.LIKE}  # no vector yet: the whole map
    assert again.users["u1"].complete and again.users["u1"].seq == 1


def test_like_after_dislike_clears_the_dislike(store):
    store.apply([ev(1, "u", "a", Kind.DISLIKE)], {}, "v1")
    store.apply([ev(2, "u", "a", Kind.LIKE)], {}, "v1")
    assert store.user_state("u", "v1").disliked == set()


def test_history_is_bounded(store):
    events = [ev(n, "u", f"i{n}", Kind.VIEW) for n in range(HISTORY_LENGTH + 25)]
    store.apply(events, {}, "v1")
    history = store.user_state("u", "v1").history
    assert len(history) == HISTORY_LENGTH
    assert history[0] == (f"i{HISTORY_LENGTH + 24}", Kind.VIEW)  # newest first


def test_unknown_user_has_empty_state(store):
    state = store.user_state("nobody", "v1")
    assert state.vector is None and state.seen == set() and state.disliked == set()
    assert state.history == [] and state.likes == 0


def test_redis_down_raises_store_unavailable():
    store = RedisStateStore("redis://127.0.0.1:1/0", timeout_s=0.2)
    with pytest.raises(StoreUnavailable):
        store.user_state("u", "v1")
    with pytest.raises(StoreUnavailable):
        store.ping()


def test_prepare_reads_the_batch_items_kinds_beside_a_stored_vector(store):
    store.apply(
        [ev(1, "u", "a", Kind.LIKE), ev(2, "u", "b", Kind.DISLIKE), ev(3, "u", "c", Kind.SKIP)],
        {"u": np.array([0.5, -1.0], np.float32)},
        "v1",
    )
    batch = [ev(4, "u", "b", Kind.LIKE), ev(5, "u", "new", Kind.LIKE)]
    incremental = store.prepare(batch, "v1").users["u"]
    assert not incremental.complete and incremental.seq == 1
    np.testing.assert_array_equal(incremental.vector, [0.5, -1.0])
    assert incremental.kinds == {"b": Kind.DISLIKE}  # only the batch's items
    whole = store.prepare(batch, "v1", complete=True).users["u"]
    assert whole.complete and whole.vector is None
    assert whole.kinds == {"a": Kind.LIKE, "b": Kind.DISLIKE, "c": Kind.SKIP}
    # Another bundle version has no vector yet: the whole map, to compute it from scratch.
    assert store.prepare(batch, "v2").users["u"].kinds == whole.kinds


def test_item_ids_with_separators_survive_the_kinds_map(store):
    odd = ["x\ny", "1:z", "", "\n"]
    store.apply([ev(n, "u", i, Kind.LIKE) for n, i in enumerate(odd) if i], {}, "v1")
    assert store.prepare([ev(9, "u", "q", Kind.VIEW)], "v1").users["u"].kinds == {
        i: Kind.LIKE for i in odd if i
    }


def test_apply_is_all_or_nothing_per_user_on_conflict(store):
    store.apply([ev(1, "u", "a", Kind.LIKE)], {}, "v1")
    seq = store.prepare([ev(2, "v", "b", Kind.LIKE)], "v1").users["v"].seq
    # An already applied event id among a user's events: nothing of the user is written.
    with pytest.raises(Conflict):
        store.apply([ev(5, "u", "e", Kind.LIKE), ev(1, "u", "a", Kind.LIKE)], {}, "v1")
    state = store.user_state("u", "v1")
    assert state.seen == {"a"} and state.likes == 1
    # A user written by someone else since prepare read its seq: nothing is written.
    store.apply([ev(3, "v", "c", Kind.LIKE)], {}, "v1")
    with pytest.raises(Conflict):
        store.apply([ev(4, "v", "d", Kind.LIKE)], {"v": np.ones(2, np.float32)}, "v1", {"v": seq})
    state = store.user_state("v", "v1")
    assert state.seen == {"c"} and state.vector is None
    assert store.item_likes() == {"a": 1, "c": 1}  # nothing counted of what was refused
    assert store.prepare([ev(4, "v", "d", Kind.LIKE)], "v1").new == [True]
    store.apply([ev(4, "v", "d", Kind.LIKE)], {}, "v1", {"v": seq + 1})
    assert store.user_state("v", "v1").seen == {"c", "d"}
    assert store.item_likes() == {"a": 1, "c": 1, "d": 1}


def test_drop_vectors_deletes_one_versions_vectors_only(store):
    vector = np.array([1.0, 2.0], np.float32)
    versions = ["v1", "v[1]*", "v2"]  # glob characters are matched literally
    for n, version in enumerate(versions):
        events = [ev(10 * n + k, f"u{k}", "a", Kind.LIKE) for k in range(3)]
        store.prepare(events, version)
        store.apply(events, {f"u{k}": vector for k in range(3)}, version)
    assert store.drop_vectors("v[1]*") == 3
    assert store.user_state("u0", "v[1]*").vector is None
    for version in ("v1", "v2"):
        np.testing.assert_array_equal(store.user_state("u2", version).vector, vector)
    state = store.user_state("u1", "v1")  # the rest of the user's state stays
    assert state.seen == {"a"} and state.likes == 3  # one like per version written
    assert store.drop_vectors("v[1]*") == 0


# --- Redis only (one Redis and a Redis Cluster) --------------------------------------------


def test_likes_of_a_write_cut_short_are_counted_by_the_replay_once(any_redis_url, redis_prefix):
    store = RedisStateStore(any_redis_url, redis_prefix)
    events = [ev(1, "u1", "a", Kind.LIKE), ev(2, "u2", "a", Kind.LIKE), ev(3, "u2", "b", Kind.VIEW)]
    counting = store._count_likes

    def crash(changes):  # the process stops after the users' writes, before the counts
        raise StoreUnavailable("stopped")

    store._count_likes = crash
    with pytest.raises(StoreUnavailable):
        store.apply(events, {}, "v1")
    assert store.item_likes() == {}
    store._count_likes = counting
    assert store.prepare(events, "v1").new == [False, False, False]  # the replay
    assert store.item_likes() == {"a": 2}
    store.prepare(events, "v1")  # and again: counted once
    assert store.item_likes() == {"a": 2}


def test_user_state_expires_after_the_ttl_refreshed_by_each_write(any_redis_url, redis_prefix):
    store = RedisStateStore(any_redis_url, redis_prefix, state_ttl_s=1000)
    store.apply([ev(1, "u", "a", Kind.DISLIKE)], {"u": np.ones(2, np.float32)}, "v1")
    client = store.router.client
    for name in ("seen", "dis", "hist", "kinds", "vec"):
        assert 990 < client.ttl(store.user_key("u", name)) <= 1000
    client.expire(store.user_key("u", "seen"), 5)
    store.apply([ev(2, "u", "a", Kind.LIKE)], {}, "v1")  # a write refreshes every key
    for name in ("seen", "hist", "kinds", "likes", "vec"):
        assert client.ttl(store.user_key("u", name)) > 990
    assert 0 < client.ttl(store.user_key("u", "ev:e1")) <= DEDUP_TTL_S
    forever = RedisStateStore(any_redis_url, redis_prefix + "x:", state_ttl_s=0)
    forever.apply([ev(1, "u", "a", Kind.LIKE)], {}, "v1")
    assert client.ttl(forever.user_key("u", "seen")) == -1  # no expiry


def test_cluster_keeps_each_user_in_one_slot_and_spreads_users(redis_cluster_url, redis_prefix):
    store = RedisStateStore(redis_cluster_url, redis_prefix)
    users = [f"user-{n}" for n in range(60)]
    events = [ev(n, u, f"i{n % 7}", Kind.LIKE) for n, u in enumerate(users)]
    store.prepare(events, "v1")
    store.apply(events, {u: np.ones(2, np.float32) for u in users}, "v1")
    client = store.router.client
    masters = set()
    for user in users:
        slots = {client.keyslot(store.user_key(user, k)) for k in ("seen", "vec", "ev:x")}
        assert len(slots) == 1
        masters.add(client.get_node_from_key(store.user_key(user, "seen")).name)
    assert len(masters) == 3  # the users' state is spread over the three masters
    assert sum(store.item_likes().values()) == 60
    assert store.drop_vectors("v1") == 60
    assert store.user_state("user-3", "v1").vector is None


def test_cluster_store_follows_a_slot_migrating_and_moved(redis_cluster_url, redis_prefix):
    import redis as redis_py

    store = RedisStateStore(redis_cluster_url, redis_prefix)
    store.apply([ev(1, "mover", "a", Kind.LIKE)], {"mover": np.ones(2, np.float32)}, "v1")
    client = store.router.client
    key = store.user_key("mover", "kinds")
    slot = client.keyslot(key)
    src = client.get_node_from_key(key)
    dst = next(n for n in client.get_primaries() if n.name != src.name)
    a = redis_py.Redis(host=src.host, port=src.port)
    b = redis_py.Redis(host=dst.host, port=dst.port)
    src_id, dst_id = a.execute_command("CLUSTER MYID"), b.execute_command("CLUSTER MYID")
    b.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    a.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    keys = a.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
    assert len(keys) >= 5  # the user's state and dedup mark
    a.execute_command("MIGRATE", dst.host, dst.port, "", 0, 5000, "KEYS", *keys)
    # migrating: the old master answers ASK, the store asks the new one
    state = store.user_state("mover", "v1")
    assert state.seen == {"a"} and state.vector is not None
    assert store.router.redirects == {"moved": 0, "ask": 1}
    for node in client.get_primaries():
        redis_py.Redis(host=node.host, port=node.port).execute_command(
            "CLUSTER SETSLOT", slot, "NODE", dst_id
        )
    # moved: the store's slot map is stale, MOVED refreshes it; writes land on the new master
    store.apply([ev(2, "mover", "b", Kind.LIKE)], {}, "v1")
    assert store.user_state("mover", "v1").seen == {"a", "b"}
    assert store.router.redirects["moved"] >= 1
    assert client.get_node_from_key(key).name == dst.name
    assert b.scard(store.user_key("mover", "seen")) == 2
