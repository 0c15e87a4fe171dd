"""Wiring: build backends from settings, start one service as a process, or all four in one.

`shortlist serve <name>` (one process per service, as in containers and `make up`) and the
in-process stack (demo and integration tests) start the same servicers the same way.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from services.feedback import server as feedback_server
from services.feedback.server import FeedbackAdminServicer, FeedbackWorker
from services.gateway import server as gateway_server
from services.gateway.server import GatewayServicer
from services.ranking import server as ranking_server
from services.ranking.server import RankingServicer
from services.retrieval import server as retrieval_server
from services.retrieval.server import RetrievalServicer
from shortlist.artifacts import Bundle, load_bundle
from shortlist.bus import (
    DeadLetterPublisher,
    EventConsumer,
    EventPublisher,
    KafkaDeadLetterPublisher,
    KafkaEventConsumer,
    KafkaEventPublisher,
    ensure_topic,
)
from shortlist.config import Settings
from shortlist.grpc_server import RunningServer, client_channel, start_server
from shortlist.stores import RedisStateStore, StateStore
from shortlist.telemetry import MODEL_INFO, start_metrics_server

log = logging.getLogger(__name__)
SERVICES = ("retrieval", "ranking", "feedback", "gateway")


def redis_store(settings: Settings) -> StateStore:
    return RedisStateStore(settings.redis_url, settings.redis_prefix)


def kafka_publisher(settings: Settings) -> EventPublisher:
    return KafkaEventPublisher(settings.kafka_bootstrap, settings.feedback_topic)


def kafka_consumer(settings: Settings) -> EventConsumer:
    ensure_topic(settings.kafka_bootstrap, settings.feedback_topic, settings.feedback_partitions)
    return KafkaEventConsumer(
        settings.kafka_bootstrap, settings.feedback_topic, settings.feedback_group
    )


def kafka_dead_letters(settings: Settings) -> DeadLetterPublisher | None:
    """Where malformed feedback records are parked; none on the in-memory demo bus."""
    if settings.backend == "memory":
        return None
    return KafkaDeadLetterPublisher(settings.kafka_bootstrap, settings.dead_letter_topic)


@dataclass
class Started:
    server: RunningServer
    worker: FeedbackWorker | None = None

    def stop(self) -> None:
        if self.worker:
            self.worker.stop()
        self.server.stop()


def start_service(
    name: str,
    settings: Settings,
    bundle: Bundle,
    address: str,
    store: StateStore | None = None,
    publisher: EventPublisher | None = None,
    consumer: EventConsumer | None = None,
    retrieval_target: str | None = None,
    ranking_target: str | None = None,
) -> Started:
    """Start one service on `address`; missing backends are built from the settings."""
    if name == "retrieval":
        servicer = RetrievalServicer(bundle, store or redis_store(settings), settings)
        return Started(
            start_server(
                name, retrieval_server.register(servicer), retrieval_server.SERVICE_NAMES, address
            )
        )
    if name == "ranking":
        servicer = RankingServicer(bundle, store or redis_store(settings), settings)
        return Started(
            start_server(
                name, ranking_server.register(servicer), ranking_server.SERVICE_NAMES, address
            )
        )
    if name == "feedback":
        worker = FeedbackWorker(
            bundle,
            store or redis_store(settings),
            consumer or kafka_consumer(settings),
            settings,
            kafka_dead_letters(settings),
        )
        worker.start()
        server = start_server(
            name,
            feedback_server.register(FeedbackAdminServicer(worker)),
            feedback_server.SERVICE_NAMES,
            address,
            workers=2,
        )
        return Started(server, worker)
    if name == "gateway":
        servicer = GatewayServicer(
            bundle,
            client_channel(retrieval_target or settings.retrieval_addr),
            client_channel(ranking_target or settings.ranking_addr),
            publisher or kafka_publisher(settings),
            settings,
        )
        return Started(
            start_server(
                name, gateway_server.register(servicer), gateway_server.SERVICE_NAMES, address
            )
        )
    raise ValueError(f"unknown service {name!r}: choose from {', '.join(SERVICES)}")


def serve(name: str, settings: Settings) -> None:
    """Run one service in this process until SIGTERM or SIGINT."""
    bundle = load_bundle(Path(settings.bundle))
    MODEL_INFO.info({"version": bundle.version, "model": str(bundle.manifest.get("model"))})
    start_metrics_server(getattr(settings, f"{name}_metrics_port"), settings.metrics_host)
    started = start_service(name, settings, bundle, getattr(settings, f"{name}_addr"))
    log.info("%s serving bundle %s on port %d", name, bundle.version, started.server.port)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    log.info("%s stopping", name)
    started.stop()


@dataclass
class InProcessStack:
    """The four services in one process on free local ports (demo and integration tests)."""

    services: dict[str, Started] = field(default_factory=dict)

    @property
    def gateway_target(self) -> str:
        return f"127.0.0.1:{self.services['gateway'].server.port}"

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.services[name].server.port}"

    def stop(self) -> None:
        for name in reversed(list(self.services)):
            self.services.pop(name).stop()


def start_inprocess_stack(
    settings: Settings,
    bundle: Bundle,
    store: StateStore,
    publisher: EventPublisher,
    consumer: EventConsumer,
) -> InProcessStack:
    stack = InProcessStack()
    try:
        for name in ("retrieval", "ranking"):
            stack.services[name] = start_service(name, settings, bundle, "127.0.0.1:0", store)
        stack.services["feedback"] = start_service(
            "feedback", settings, bundle, "127.0.0.1:0", store, consumer=consumer
        )
        stack.services["gateway"] = start_service(
            "gateway",
            settings,
            bundle,
            "127.0.0.1:0",
            publisher=publisher,
            retrieval_target=stack.target("retrieval"),
            ranking_target=stack.target("ranking"),
        )
    except Exception:
        stack.stop()
        raise
    return stack
