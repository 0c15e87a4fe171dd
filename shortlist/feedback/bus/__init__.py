"""The feedback event bus: Kafka in production and tests, in-memory for the quickstart."""

from shortlist.feedback.bus.base import (
    BusUnavailable,
    DeadLetter,
    DeadLetterPublisher,
    EventConsumer,
    EventPublisher,
    Record,
)
from shortlist.feedback.bus.kafka import (
    KafkaDeadLetterPublisher,
    KafkaEventConsumer,
    KafkaEventPublisher,
    client_security,
    ensure_topic,
)
from shortlist.feedback.bus.memory import InMemoryBus

__all__ = [
    "BusUnavailable",
    "DeadLetter",
    "DeadLetterPublisher",
    "EventConsumer",
    "EventPublisher",
    "InMemoryBus",
    "KafkaDeadLetterPublisher",
    "KafkaEventConsumer",
    "KafkaEventPublisher",
    "Record",
    "client_security",
    "ensure_topic",
]
