"""Integration (#25): the catalogue and users between trainings, over real sockets, the real
Redis and the tansu broker; and the state store's catalogue contract on Redis and memory."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import redis

from shortlist.client import Client, Feedback
from shortlist.feedback.bus import KafkaEventPublisher
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores import InMemoryStateStore, RedisStateStore
from shortlist.v1 import common_pb2, feedback_pb2, gateway_pb2
from tests.conftest import ev, eventually, unique

FORGET = common_pb2.FEEDBACK_KIND_FORGET


# --- the store contract ------------------------------------------------------------------


def test_hide_show_remove_count_changes_and_move_the_generation(store):
    g0 = store.catalogue_generation()
    assert store.hide_items(["a", "b"]) == 2
    assert store.hide_items(["a"]) == 0  # hiding a hidden item changes nothing
    g1 = store.catalogue_generation()
    assert g1 > g0
    assert store.catalogue("v1").hidden == {"a", "b"}
    assert store.show_items(["a", "zz"]) == 1
    assert store.catalogue("v1").hidden == {"b"}
    assert store.remove_items(["c", "b"]) == 2
    state = store.catalogue("v1")
    assert state.hidden == {"b", "c"} and state.removed == {"b", "c"}
    assert store.show_items(["c"]) == 0  # removed items stay hidden
    assert store.hide_items(["c"]) == 0
    assert store.remove_items(["c"]) == 0
    assert store.catalogue("v1").generation == store.catalogue_generation() > g1


def test_upsert_counts_changes_and_skips_removed_items(store):
    assert store.upsert_items({"n1": {"genre": "jazz"}, "n2": {}}) == 2
    assert store.upsert_items({"n1": {"genre": "jazz"}}) == 0
    assert store.upsert_items({"n1": {"genre": "rock", "year": "1999"}}) == 1
    assert store.item_attributes(["n1", "n3"]) == {"n1": {"genre": "rock", "year": "1999"}}
    store.remove_items(["n1"])
    assert store.item_attributes(["n1"]) == {}
    assert store.upsert_items({"n1": {"genre": "pop"}}) == 0


def test_feedback_on_new_items_and_their_vectors(store):
    events = [ev(1, "u1", "new", Kind.LIKE), ev(2, "u2", "new", Kind.DISLIKE)]
    events += [ev(3, "u2", "old", Kind.LIKE), ev(4, "u3", "new", Kind.VIEW)]
    store.prepare(events, "v1")
    store.apply(events, {"u2": np.array([1.0, 0.0], np.float32)}, "v1", new_items={"new"})
    fb = store.item_feedback(["new", "old", "none"], "v1")
    assert set(fb) == {"new"}  # views are not preferences; known items are not recorded
    assert fb["new"]["u1"] == (int(Kind.LIKE), None)
    kind, vec = fb["new"]["u2"]
    assert kind == int(Kind.DISLIKE)
    np.testing.assert_array_equal(vec, [1.0, 0.0])

    g = store.catalogue_generation()
    store.set_item_vectors({"new": np.array([0.5, 0.5], np.float32)}, "v1")
    assert store.catalogue_generation() > g
    np.testing.assert_array_equal(store.catalogue("v1").vectors["new"], [0.5, 0.5])
    assert store.catalogue("v2").vectors == {}
    store.drop_vectors("v1")
    assert store.catalogue("v1").vectors == {}

    store.set_item_vectors({"new": np.array([0.5, 0.5], np.float32)}, "v1")
    store.remove_items(["new"])
    assert store.catalogue("v1").vectors == {} and store.item_feedback(["new"], "v1") == {}
    later = [ev(5, "u4", "new", Kind.LIKE)]
    store.prepare(later, "v1")
    store.apply(later, {}, "v1", new_items={"new"})
    assert store.item_feedback(["new"], "v1") == {}  # a removed item gathers nothing


def test_forget_deletes_the_users_state_once(store):
    events = [ev(1, "u1", "a", Kind.LIKE), ev(2, "u1", "b", Kind.DISLIKE)]
    events += [ev(3, "u1", "new", Kind.LIKE), ev(4, "u2", "a", Kind.LIKE)]
    store.prepare(events, "v1")
    vec = np.array([1.0, 2.0], np.float32)
    store.apply(events, {"u1": vec, "u2": vec}, "v1", new_items={"new"})
    store.apply([ev(5, "u1", "c", Kind.VIEW)], {"u1": vec}, "v2")
    forget = Event("f1", "u1", "", Kind.FORGET, 1)
    assert store.forget(forget)
    for version in ("v1", "v2"):
        state = store.user_state("u1", version)
        assert (state.vector, state.seen, state.disliked, state.history, state.likes) == (
            None,
            set(),
            set(),
            [],
            0,
        )
    assert store.prepare([ev(6, "u1", "a", Kind.LIKE)], "v1").users["u1"].kinds == {}
    assert store.item_likes() == {"a": 1}  # u2's like stays
    assert store.item_feedback(["new"], "v1") == {}
    assert store.user_state("u2", "v1").likes == 1
    assert not store.forget(forget)  # the same FORGET again: a no-op


def test_forget_leaves_no_redis_key_of_the_user(any_redis_url, redis_prefix):
    s = RedisStateStore(any_redis_url, redis_prefix)
    events = [ev(1, "u*1", "a", Kind.LIKE), ev(2, "u*1", "b", Kind.DISLIKE)]
    s.prepare(events, "v1")
    s.apply(events, {"u*1": np.ones(2, np.float32)}, "v1")
    s.apply([ev(3, "u*1", "c", Kind.LIKE)], {"u*1": np.ones(2, np.float32)}, "v2")
    user_keys = f"{redis_prefix}{{u:u\\*1}}:*"

    def state_keys() -> set[str]:  # the dedup marks (ev:<id>) stay until they expire
        return {k.decode() for k in s.router.scan(user_keys) if b"}:ev:" not in k}

    assert {k.rpartition(":")[2] for k in state_keys()} == {
        "seen",
        "dis",
        "hist",
        "likes",
        "kinds",
        "vec",  # vec: a hash of both versions
    }
    assert s.forget(Event("f", "u*1", "", Kind.FORGET, 1))
    assert state_keys() == set()


# --- the services ------------------------------------------------------------------------


def recommend(client: Client, user: str, k: int = 10) -> list[str]:
    return client.recommend(user, k).item_ids


def similar(client: Client, item: str, k: int = 10) -> list[str]:
    return client.similar_items(item, k).item_ids


def send(client: Client, user: str, item: str) -> list[str]:
    return client.send_feedback(Feedback(user, item, "like"))


def status(admin) -> feedback_pb2.FeedbackStatusResponse:
    return admin.Status(feedback_pb2.FeedbackStatusRequest(), timeout=2)


def ids(*items: str) -> feedback_pb2.ItemIdsRequest:
    return feedback_pb2.ItemIdsRequest(item_ids=list(items))


def test_hidden_item_leaves_recommend_and_similar_items_at_once(client, admin, bundle):
    user = bundle.users.id(11)
    top = recommend(client, user)[0]
    probe = bundle.items.id(int(bundle.items.indices([top])[0]) == 0)  # another item
    neighbour = similar(client, probe, k=50)
    assert admin.HideItems(ids(top), timeout=5).changed == 1
    try:
        assert top not in recommend(client, user)
        if top in neighbour:
            assert top not in similar(client, probe, k=50)
        with pytest.raises(grpc.RpcError) as err:
            similar(client, top)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert admin.HideItems(ids(top), timeout=5).changed == 0
    finally:
        assert admin.ShowItems(ids(top), timeout=5).changed == 1
    assert recommend(client, user)[0] == top
    assert similar(client, probe, k=50) == neighbour


def test_hidden_item_leaves_similar_items(client, admin, bundle):
    probe = bundle.items.id(7)
    first = similar(client, probe, k=5)[0]
    admin.HideItems(ids(first), timeout=5)
    try:
        assert first not in similar(client, probe, k=5)
    finally:
        admin.ShowItems(ids(first), timeout=5)
    assert similar(client, probe, k=5)[0] == first


def test_feedback_on_an_unknown_item_is_acknowledged(client, admin):
    start = status(admin).events_applied
    acked = send(client, unique("user"), unique("not-yet-trained"))
    assert len(acked) == 1 and acked[0]
    eventually(lambda: status(admin).events_applied >= start + 1, timeout_s=30)


def neighbours(bundle, user: int, n: int) -> list[str]:
    """The `n` trained users whose vectors are closest (cosine) to `user`'s."""
    v = bundle.user_vectors[np.arange(len(bundle.users))]
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    order = np.argsort(-(unit @ unit[user]))
    return [bundle.users.id(u) for u in order if u != user][:n]


def test_new_item_liked_by_similar_users_is_recommended(client, admin, bundle):
    item = unique("new-item")
    assert (
        admin.UpsertItems(
            feedback_pb2.UpsertItemsRequest(
                items=[feedback_pb2.CatalogueItem(item_id=item, attributes={"genre": "new"})]
            ),
            timeout=5,
        ).changed
        == 1
    )
    target = 20
    user = bundle.users.id(target)
    assert item not in recommend(client, user, k=100)  # no likes yet: no vector
    for liker in neighbours(bundle, target, 10):
        send(client, liker, item)
    assert eventually(lambda: item in recommend(client, user, k=20), timeout_s=10)
    # and SimilarItems answers for it, from its folded-in vector
    assert len(similar(client, item, k=5)) == 5
    admin.RemoveItems(ids(item), timeout=5)
    assert item not in recommend(client, user, k=100)


def test_delete_user_forgets_their_live_state_once(client, admin, bundle, settings, redis_url):
    user = bundle.users.id(30)
    before = recommend(client, user)
    for item in before[:3]:
        send(client, user, item)
    # the user's own likes applied (other tests' events may still be arriving)
    eventually(lambda: not set(before[:3]) & set(recommend(client, user)), timeout_s=30)
    r = redis.Redis.from_url(redis_url)
    pattern = f"{settings.redis_prefix}{{u:{user}}}:*"

    def keys() -> list[bytes]:  # the user's state; their dedup marks (ev:<id>) stay
        return [k for k in r.scan_iter(pattern) if b"}:ev:" not in k]

    assert keys()

    reply = admin.DeleteUser(feedback_pb2.DeleteUserRequest(user_id=user), timeout=10)
    assert reply.event_id
    eventually(lambda: not keys(), timeout_s=30)
    assert recommend(client, user) == before  # the trained vector again

    # The same FORGET again (a replay): skipped as a duplicate.
    s = status(admin)
    again = Event(reply.event_id, user, "", Kind.FORGET, 1)
    publisher = KafkaEventPublisher(settings.kafka_bootstrap, settings.feedback_topic)
    try:
        publisher.publish([again], 10)
    finally:
        publisher.close()
    eventually(lambda: status(admin).duplicates_skipped >= s.duplicates_skipped + 1, timeout_s=30)
    assert status(admin).events_applied == s.events_applied


def test_forget_from_a_client_is_refused(client):
    # Raw stub: the client has no FORGET kind (Feedback refuses it), so only a hand-built
    # message can show the gateway refusing one.
    def forget(item: str) -> None:
        event = common_pb2.FeedbackEvent(user_id="u", item_id=item, kind=FORGET)
        client.stub.SendFeedback(gateway_pb2.SendFeedbackRequest(events=[event]), timeout=10)

    with pytest.raises(ValueError, match="feedback kind"):
        Feedback("u", "some-item", "forget").to_proto()
    with pytest.raises(grpc.RpcError) as err:
        forget("")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        forget("some-item")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[0].kind" in err.value.details()


@pytest.mark.parametrize(
    "method, request_, field",
    [
        ("HideItems", feedback_pb2.ItemIdsRequest(), "item_ids"),
        ("HideItems", feedback_pb2.ItemIdsRequest(item_ids=["a", ""]), "item_ids[1]"),
        ("ShowItems", feedback_pb2.ItemIdsRequest(item_ids=["x" * 257]), "item_ids[0]"),
        ("RemoveItems", feedback_pb2.ItemIdsRequest(item_ids=["a"] * 1001), "item_ids"),
        ("UpsertItems", feedback_pb2.UpsertItemsRequest(), "items (count)"),
        (
            "UpsertItems",
            feedback_pb2.UpsertItemsRequest(items=[feedback_pb2.CatalogueItem(item_id=" ")]),
            "items[0].item_id",
        ),
        (
            "UpsertItems",
            feedback_pb2.UpsertItemsRequest(
                items=[feedback_pb2.CatalogueItem(item_id="a", attributes={"": "1"})]
            ),
            "items[0].attributes",
        ),
        ("DeleteUser", feedback_pb2.DeleteUserRequest(), "user_id"),
    ],
)
def test_bad_admin_input_names_the_field(admin, method, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        getattr(admin, method)(request_, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


# --- the worker, in order and once -------------------------------------------------------


def test_worker_applies_forget_in_order_within_a_batch(bundle, settings):
    from shortlist.feedback.bus import InMemoryBus
    from shortlist.feedback.worker import FeedbackWorker

    store, bus = InMemoryStateStore(), InMemoryBus()
    worker = FeedbackWorker(bundle, store, bus.consumer(), settings)
    a, b = bundle.items.id(0), bundle.items.id(1)
    events = [
        Event("w1", "u", a, Kind.LIKE, 1),
        Event("w2", "u", "", Kind.FORGET, 2),
        Event("w3", "u", b, Kind.LIKE, 3),
        Event("w2", "u", "", Kind.FORGET, 2),  # the same FORGET again: skipped
        Event("w4", "v", "brand-new", Kind.LIKE, 4),
    ]
    bus.publisher().publish(events, 1)
    while worker.run_once(timeout_ms=50):
        pass
    state = store.user_state("u", bundle.version)
    assert state.seen == {b} and state.likes == 1  # the like after the FORGET survives
    assert (worker.applied, worker.duplicates) == (4, 1)
    assert store.item_feedback(["brand-new"], bundle.version) == {
        "brand-new": {"v": (int(Kind.LIKE), None)}
    }
    # v is a new user with no vector: the item has no liker with a vector yet
    assert store.catalogue(bundle.version).vectors == {}
    trained = bundle.users.id(0)
    bus.publisher().publish([Event("w5", trained, "brand-new", Kind.LIKE, 5)], 1)
    while worker.run_once(timeout_ms=50):
        pass
    assert set(store.catalogue(bundle.version).vectors) == {"brand-new"}
