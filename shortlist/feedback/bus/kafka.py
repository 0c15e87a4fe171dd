"""Kafka publisher and consumer (kafka-python), keyed by user so a user's events stay ordered."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from shortlist.feedback.bus.base import BusUnavailable, DeadLetter, Record
from shortlist.feedback.events import Event
from shortlist.rpc.telemetry import KAFKA_PRODUCE_LATENCY

log = logging.getLogger(__name__)
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


def client_security(settings: Any) -> dict[str, Any]:
    """kafka-python's security options from the settings (`kafka_security_protocol`, SASL
    user and password, the brokers' CA), for every producer, consumer and admin client.
    ValueError naming the setting when they do not fit together."""
    protocol = settings.kafka_security_protocol.strip().upper()
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"SHORTLIST_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)}, "
            f"got {settings.kafka_security_protocol!r}"
        )
    out: dict[str, Any] = {"security_protocol": protocol}
    user, password = settings.kafka_username, settings.kafka_password
    if protocol.startswith("SASL"):
        mechanism = settings.kafka_sasl_mechanism.strip().upper()
        if mechanism not in MECHANISMS:
            raise ValueError(
                f"SHORTLIST_KAFKA_SASL_MECHANISM must be one of {', '.join(MECHANISMS)}, "
                f"got {settings.kafka_sasl_mechanism!r}"
            )
        if not (user and password):
            raise ValueError(
                f"SHORTLIST_KAFKA_SECURITY_PROTOCOL={protocol} needs SHORTLIST_KAFKA_USERNAME "
                "and SHORTLIST_KAFKA_PASSWORD"
            )
        out |= {
            "sasl_mechanism": mechanism,
            "sasl_plain_username": user,
            "sasl_plain_password": password,
        }
    elif user or password:
        raise ValueError(
            "SHORTLIST_KAFKA_USERNAME/PASSWORD are set but SHORTLIST_KAFKA_SECURITY_PROTOCOL is "
            f"{protocol}: use SASL_PLAINTEXT or SASL_SSL"
        )
    cert, key = settings.kafka_cert_file, settings.kafka_key_file
    if not protocol.endswith("SSL"):
        if settings.kafka_ca_file or cert or key:
            raise ValueError(
                "SHORTLIST_KAFKA_CA_FILE/CERT_FILE/KEY_FILE are set but "
                f"SHORTLIST_KAFKA_SECURITY_PROTOCOL is {protocol}: use SSL or SASL_SSL"
            )
        return out
    if bool(cert) != bool(key):
        raise ValueError("SHORTLIST_KAFKA_CERT_FILE and SHORTLIST_KAFKA_KEY_FILE go together")
    out["ssl_check_hostname"] = True  # the brokers' certificate must name the host dialled
    if settings.kafka_ca_file:
        out["ssl_cafile"] = settings.kafka_ca_file
    if cert:  # mutual TLS (the SSL protocol, or a listener that asks for certificates)
        out |= {"ssl_certfile": cert, "ssl_keyfile": key}
    return out


def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int = 4,
    timeout_s: float = 10,
    replication: int = 1,
    security: Mapping[str, Any] | None = None,
) -> None:
    """Create the topic when it does not exist, with `replication` copies of each partition
    (local stack and tests; k8s pre-creates it, and with ACLs the services may not create
    topics: TopicAuthorizationFailed is logged)."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **(security or {})
    )
    try:
        admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=replication)]
        )
    except TopicAlreadyExistsError:
        pass
    except (TopicAuthorizationFailedError, ClusterAuthorizationFailedError):  # ACLs: made before
        log.info("not allowed to create topic %s: it must exist already", topic)
    finally:
        admin.close()


class KafkaEventPublisher:
    """Created lazily, so the gateway starts (and answers UNAVAILABLE) while the broker is down.
    `idempotent`: the broker writes a send retried by the producer once (producer id and
    sequence numbers; needs a broker that grants producer ids, as Apache Kafka does)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        max_block_s: float = 2.0,
        idempotent: bool = False,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self._idempotent = idempotent
        self._bootstrap = bootstrap
        self._max_block_ms = int(max_block_s * 1000)
        self._security = dict(security or {})
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def _get_producer(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                self._producer = KafkaProducer(
                    bootstrap_servers=self._bootstrap,
                    acks="all",
                    retries=5,
                    enable_idempotence=self._idempotent,
                    linger_ms=0,
                    max_block_ms=self._max_block_ms,
                    request_timeout_ms=5000,
                    reconnect_backoff_max_ms=1000,
                    **self._security,
                )
            return self._producer

    def publish(self, events: Sequence[Event], timeout_s: float) -> None:
        start = time.perf_counter()
        try:
            producer = self._get_producer()
            futures = [
                producer.send(self.topic, key=e.user_id.encode(), value=e.encode()) for e in events
            ]
            producer.flush(timeout=timeout_s)
            for f in futures:
                f.get(timeout=timeout_s)
            KAFKA_PRODUCE_LATENCY.observe(time.perf_counter() - start)
        except KafkaError as exc:
            raise BusUnavailable(f"kafka: {exc}") from exc

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=2)


class KafkaDeadLetterPublisher:
    """Parks feedback records the consumer cannot use on a dead-letter topic (created on
    first use when allowed), with the original key and bytes; headers say why and where
    from (`dlq.kind`: malformed, too_large or apply_failed; `dlq.reason`, `dlq.topic`,
    `dlq.partition`, `dlq.offset`). acks=all, like the feedback itself; a record parked
    twice (a batch replayed after a crash) may appear twice on the topic."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        max_block_s: float = 2.0,
        replication: int = 1,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._max_block_ms = int(max_block_s * 1000)
        self._replication = replication
        self._security = dict(security or {})
        self._producer: KafkaProducer | None = None

    def _get_producer(self) -> KafkaProducer:
        if self._producer is None:
            try:
                ensure_topic(
                    self._bootstrap,
                    self.topic,
                    1,
                    replication=self._replication,
                    security=self._security,
                )
            except KafkaError as exc:  # e.g. not allowed to create topics: it may exist
                log.warning("could not ensure dead-letter topic %s: %s", self.topic, exc)
            self._producer = KafkaProducer(
                bootstrap_servers=self._bootstrap,
                acks="all",
                retries=5,
                max_block_ms=self._max_block_ms,
                request_timeout_ms=5000,
                reconnect_backoff_max_ms=1000,
                **self._security,
            )
        return self._producer

    def park(self, letters: Sequence[DeadLetter], timeout_s: float) -> None:
        try:
            producer = self._get_producer()
            futures = []
            for letter in letters:
                r = letter.record
                headers = [
                    ("dlq.kind", letter.kind.encode()),
                    ("dlq.reason", letter.reason.encode()),
                    ("dlq.topic", r.topic.encode()),
                    ("dlq.partition", str(r.partition).encode()),
                    ("dlq.offset", str(r.offset).encode()),
                ]
                futures.append(producer.send(self.topic, key=r.key, value=r.value, headers=headers))
            producer.flush(timeout=timeout_s)
            for f in futures:
                f.get(timeout=timeout_s)
        except KafkaError as exc:
            raise BusUnavailable(f"kafka dead-letter topic {self.topic}: {exc}") from exc

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=2)


class KafkaEventConsumer:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group_id: str,
        fetch_max_wait_ms: int = 40,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        """`fetch_max_wait_ms`: see Settings.feedback_fetch_wait_ms; `security`:
        client_security(settings)."""
        self._consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            reconnect_backoff_max_ms=1000,
            fetch_max_wait_ms=fetch_max_wait_ms,
            **dict(security or {}),
        )

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        return [
            Record(r.value, r.partition, r.offset, r.key, r.topic)
            for records in batches.values()
            for r in records
        ]

    def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> None:
        if offsets is None:
            self._consumer.commit()
            return
        self._consumer.commit(
            {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        )

    def has_assignment(self) -> bool:
        return bool(self._consumer.assignment())

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        assigned = self._consumer.assignment()
        for (topic, partition), offset in offsets.items():
            tp = TopicPartition(topic, partition)
            if tp in assigned:
                self._consumer.seek(tp, offset)

    def lag(self) -> int:
        total = 0
        for tp in self._consumer.assignment():
            end = self._consumer.highwater(tp)
            if end is not None:
                total += max(0, end - self._consumer.position(tp))
        return total

    def log_end(self, topic: str, partition: int) -> int | None:
        tp = TopicPartition(topic, partition)
        if tp not in self._consumer.assignment():  # revoked since the poll
            return None
        return self._consumer.highwater(tp)

    def close(self) -> None:
        self._consumer.close(autocommit=False)
