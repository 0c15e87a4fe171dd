"""Contract tests of the event bus on the real broker (tansu) and on the in-memory log."""

from __future__ import annotations

import pytest

from shortlist.feedback.bus import (
    BusUnavailable,
    InMemoryBus,
    KafkaEventConsumer,
    KafkaEventPublisher,
    ensure_topic,
)
from shortlist.feedback.events import Event, Kind
from tests.conftest import eventually, unique


class KafkaSide:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.topic = unique("topic")
        self.group = unique("group")
        ensure_topic(bootstrap, self.topic, partitions=3)

    def publisher(self):
        return KafkaEventPublisher(self.bootstrap, self.topic)

    def consumer(self):
        return KafkaEventConsumer(self.bootstrap, self.topic, self.group)


@pytest.fixture(params=["kafka", "memory"])
def bus(request):
    if request.param == "memory":
        return InMemoryBus()
    return KafkaSide(request.getfixturevalue("broker").bootstrap)


def events(n: int, start: int = 0) -> list[Event]:
    return [Event(f"e{i}", f"u{i % 4}", f"item{i}", Kind.LIKE, i) for i in range(start, start + n)]


def drain(consumer, expected: int) -> list[Event]:
    got: list[Event] = []

    def more():
        got.extend(Event.decode(r.value) for r in consumer.poll(200, 100))
        return len(got) >= expected

    eventually(more, timeout_s=30, interval=0)
    return got


def test_published_events_are_consumed(bus):
    publisher, consumer = bus.publisher(), bus.consumer()
    try:
        publisher.publish(events(10), timeout_s=5)
        got = drain(consumer, 10)
        assert sorted(e.event_id for e in got) == sorted(e.event_id for e in events(10))
        for user in {e.user_id for e in got}:  # keyed by user: per-user order is kept
            ids = [e.event_id for e in got if e.user_id == user]
            assert ids == sorted(ids, key=lambda s: int(s[1:]))
    finally:
        consumer.close()
        publisher.close()


def test_new_consumer_resumes_after_committed_offset(bus):
    publisher = bus.publisher()
    first = bus.consumer()
    publisher.publish(events(5), timeout_s=5)
    drain(first, 5)
    first.commit()
    first.close()
    publisher.publish(events(3, start=5), timeout_s=5)
    second = bus.consumer()
    try:
        got = drain(second, 3)
        assert sorted(e.event_id for e in got) == ["e5", "e6", "e7"]
    finally:
        second.close()
        publisher.close()


def test_publish_without_broker_is_unavailable():
    publisher = KafkaEventPublisher("127.0.0.1:1", "nowhere", max_block_s=0.5)
    with pytest.raises(BusUnavailable):
        publisher.publish(events(1), timeout_s=0.5)


def test_event_round_trip_and_malformed_records():
    e = Event("id-1", "u", "i", Kind.DISLIKE, 123)
    assert Event.decode(e.encode()) == e
    with pytest.raises(ValueError, match="undecodable"):
        Event.decode(b"\xff\xff\xff")
    with pytest.raises(ValueError, match="lacks"):
        Event.decode(Event("", "u", "i", Kind.LIKE, 1).encode())
    bad_kind = Event("x", "u", "i", Kind.LIKE, 1).encode().replace(b"\x20\x01", b"\x20\x09")
    with pytest.raises(ValueError, match="unknown kind"):
        Event.decode(bad_kind)
