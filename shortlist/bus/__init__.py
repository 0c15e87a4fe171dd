"""The feedback event bus: Kafka in production and tests, in-memory for the quickstart."""

from shortlist.bus.base import BusUnavailable, EventConsumer, EventPublisher, Record
from shortlist.bus.kafka_bus import KafkaEventConsumer, KafkaEventPublisher, ensure_topic
from shortlist.bus.memory import InMemoryBus

__all__ = [
    "BusUnavailable",
    "EventConsumer",
    "EventPublisher",
    "InMemoryBus",
    "KafkaEventConsumer",
    "KafkaEventPublisher",
    "Record",
    "ensure_topic",
]
