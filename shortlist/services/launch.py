"""Wiring: build backends from settings, start one service as a process, or all four in one.

`shortlist serve <name>` (one process per service, as in containers and `make up`) and the
in-process stack (demo and integration tests) start the same servicers the same way.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from starlette.routing import BaseRoute, Mount

from shortlist.bundle.ab import ARM_A, ARM_B, check_arms, load_arms
from shortlist.bundle.bundle import Bundle
from shortlist.bundle.files import load_bundle
from shortlist.bundle.promotion import latest_version
from shortlist.bundle.watcher import BundleWatcher
from shortlist.config import Settings
from shortlist.feedback.archive import Archiver
from shortlist.feedback.bus import (
    DeadLetterPublisher,
    EventConsumer,
    EventPublisher,
    KafkaDeadLetterPublisher,
    KafkaEventConsumer,
    KafkaEventPublisher,
    client_security,
    ensure_topic,
)
from shortlist.feedback.stores import RedisStateStore, RedisTLS, StateStore
from shortlist.feedback.worker import FeedbackWorker
from shortlist.retrieval.index import limit_native_threads
from shortlist.rpc.security import RateLimits, check_gateway_policy
from shortlist.rpc.server import RunningServer, client_channel, start_server
from shortlist.rpc.telemetry import MODEL_INFO, start_metrics_server
from shortlist.services import feedback as feedback_server
from shortlist.services import gateway as gateway_server
from shortlist.services import ranking as ranking_server
from shortlist.services import retrieval as retrieval_server
from shortlist.services.console import create_console
from shortlist.services.feedback import FeedbackAdminServicer
from shortlist.services.gateway import GatewayServicer
from shortlist.services.http_api import HttpServer, start_http_server
from shortlist.services.local import LocalRanker, LocalRetriever
from shortlist.services.ranking import RankingServicer
from shortlist.services.remote import RemoteRanker, RemoteRetriever
from shortlist.services.retrieval import RetrievalServicer
from shortlist.services.stages import Ranker, Retriever

log = logging.getLogger(__name__)
SERVICES = ("retrieval", "ranking", "feedback", "gateway", "archiver")


def redis_store(settings: Settings) -> StateStore:
    return RedisStateStore(
        settings.redis_url,
        settings.redis_prefix,
        state_ttl_s=settings.state_ttl_s,
        tls=RedisTLS.from_settings(settings),
    )


def kafka_publisher(settings: Settings) -> EventPublisher:
    return KafkaEventPublisher(
        settings.kafka_bootstrap,
        settings.feedback_topic,
        idempotent=bool(settings.kafka_idempotence),
        security=client_security(settings),
    )


def kafka_consumer(settings: Settings, group: str | None = None) -> EventConsumer:
    """A consumer of the feedback topic in `group` (default: the feedback workers'; the
    archiver has a group of its own, so it sees every event)."""
    security = client_security(settings)
    ensure_topic(
        settings.kafka_bootstrap,
        settings.feedback_topic,
        settings.feedback_partitions,
        replication=settings.feedback_replication,
        security=security,
    )
    return KafkaEventConsumer(
        settings.kafka_bootstrap,
        settings.feedback_topic,
        group or settings.feedback_group,
        settings.feedback_fetch_wait_ms,
        security=security,
    )


def kafka_dead_letters(settings: Settings) -> DeadLetterPublisher | None:
    """Where records the consumer cannot use are parked; none on the in-memory demo bus."""
    if settings.backend == "memory":
        return None
    return KafkaDeadLetterPublisher(
        settings.kafka_bootstrap,
        settings.dead_letter_topic,
        replication=settings.feedback_replication,
        security=client_security(settings),
    )


@dataclass
class Started:
    server: RunningServer
    worker: FeedbackWorker | None = None
    # what hot reload swaps the bundle of (`use_bundle`): a stage or the gateway servicer
    servicer: object | None = None
    readiness: feedback_server.ConsumerReadiness | None = None  # the feedback service's
    http: HttpServer | None = None  # the gateway's HTTP/JSON front door, when it has one

    def swap_bundle(self, bundle: Bundle) -> None:
        """Serve `bundle` from now on: one reference assignment per holder."""
        for holder in (self.servicer, self.worker):
            if holder is not None:
                holder.use_bundle(bundle)

    def stop(self) -> None:
        if self.readiness:
            self.readiness.stop()
        if self.http:
            self.http.stop()
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
    bundle_b: Bundle | None = None,
    http_address: str | None = None,
    http_routes: Sequence[BaseRoute] = (),
    feedback_target: str | None = None,
) -> Started:
    """Start one service on `address`; missing backends are built from the settings.

    `http_address` (gateway only): also serve the HTTP/JSON API there, forwarding to a
    plaintext loopback port of the gRPC server (shortlist.services.http_api), with
    `http_routes` mounted beside it (e.g. a web console), and its admin calls forwarded to
    the feedback service at `feedback_target` (default `settings.feedback_addr`).

    `bundle_b` (A/B arm "b"): retrieval and ranking load it beside `bundle` and serve the
    one each request names by version; the gateway assigns users to arms.
    """
    others = () if bundle_b is None else (bundle_b,)
    if bundle_b is not None:
        check_arms({ARM_A: bundle, ARM_B: bundle_b})
    if name in ("retrieval", "ranking"):
        local = store or redis_store(settings)
        if name == "retrieval":
            stage: LocalRetriever | LocalRanker = LocalRetriever(bundle, local, settings, others)
            register = retrieval_server.register(RetrievalServicer(stage, settings))
            names = retrieval_server.SERVICE_NAMES
        else:
            stage = LocalRanker(bundle, local, settings, others)
            register = ranking_server.register(RankingServicer(stage, settings))
            names = ranking_server.SERVICE_NAMES
        server = start_server(name, register, names, address, settings=settings)
        return Started(server, servicer=stage)
    if name == "feedback":
        worker = FeedbackWorker(
            bundle,
            store or redis_store(settings),
            consumer or kafka_consumer(settings),
            settings,
            kafka_dead_letters(settings),
        )
        worker.start()
        admin = FeedbackAdminServicer(worker, publisher or kafka_publisher(settings), settings)
        server = start_server(
            name,
            feedback_server.register(admin),
            feedback_server.SERVICE_NAMES,
            address,
            workers=2,
            settings=settings,
        )
        readiness = feedback_server.ConsumerReadiness(worker, server, settings.feedback_stuck_s)
        return Started(server, worker, readiness=readiness.start())
    if name == "gateway":
        retriever, ranker = gateway_stages(
            settings, bundle, store, others, retrieval_target, ranking_target
        )
        servicer = GatewayServicer(
            bundle, retriever, ranker, publisher or kafka_publisher(settings), settings, bundle_b
        )
        if http_address:
            check_gateway_policy(settings, http_address)  # before anything listens
        share = settings.gateway_workers > 1
        limits = RateLimits.from_settings(settings)  # one set for gRPC and HTTP alike
        started = Started(
            start_server(
                name,
                gateway_server.register(servicer),
                gateway_server.SERVICE_NAMES,
                address,
                settings=settings,
                share_port=share,
                own_port=settings.gateway_worker_port,
                loopback_port=bool(http_address),
                rate_limits=limits,
            ),
            servicer=servicer,
        )
        if http_address:
            try:
                target = f"127.0.0.1:{started.server.loopback_port}"
                started.http = start_http_server(
                    settings,
                    target,
                    http_address,
                    share,
                    extra_routes=http_routes,
                    feedback_target=feedback_target,
                    rate_limits=limits,
                )
            except BaseException:
                started.stop()
                raise
        return started
    raise ValueError(f"unknown service {name!r}: choose from {', '.join(SERVICES)}")


def gateway_stages(
    settings: Settings,
    bundle: Bundle,
    store: StateStore | None,
    others: tuple[Bundle, ...],
    retrieval_target: str | None,
    ranking_target: str | None,
) -> tuple[Retriever, Ranker]:
    """The gateway's two stages: in its own process when co-located (one state store for
    both), else clients of the retrieval and ranking services."""
    if settings.colocate:
        local = store or redis_store(settings)
        return (
            LocalRetriever(bundle, local, settings, others),
            LocalRanker(bundle, local, settings, others),
        )
    retrieval = client_channel(retrieval_target or settings.retrieval_addr, settings=settings)
    ranking = client_channel(ranking_target or settings.ranking_addr, settings=settings)
    return RemoteRetriever(retrieval), RemoteRanker(ranking, pin_version=bool(others))


def serve(name: str, settings: Settings) -> None:
    """Run one service in this process until SIGTERM or SIGINT."""
    if name == "archiver":
        serve_archiver(settings)
        return
    serving = start_serving(name, settings)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    log.info("%s stopping", name)
    serving.stop()


@dataclass
class Serving:
    """A service process's parts once it serves: what stops it, and nothing that holds a
    bundle (the stages hold the bundles: a hot swap frees the one it replaces)."""

    started: Started
    watcher: BundleWatcher | None

    def stop(self) -> None:
        if self.watcher:
            self.watcher.stop()
        self.started.stop()


def start_serving(name: str, settings: Settings) -> Serving:
    """Load the bundle(s), start service `name` with hot reload, glibc malloc tuned. The
    loaded bundles are referenced only from the stages once this returns (a reference kept
    here for the process's life would pin the first bundle through every swap)."""
    tune_allocator(settings.malloc_arena_max, settings.malloc_mmap_threshold)
    limit_native_threads(1)
    # The feedback service folds vectors in for the default bundle only
    # (docs/decisions/0015-fold-in.md, Limitations).
    arms_of = settings if name != "feedback" else settings.replace(ab_bundle_b="")
    arms = load_arms(arms_of, with_index=searches(name, settings))
    for arm, b in arms.items():
        MODEL_INFO.labels(arm).info({"version": b.version, "model": str(b.manifest.get("model"))})
    start_metrics_server(getattr(settings, f"{name}_metrics_port"), settings.metrics_host)
    http_address = settings.gateway_http_addr if name == "gateway" else None
    loopback: dict[str, str] = {}  # the gateway's own plaintext port, once it listens
    routes = []
    if http_address and settings.console:
        console = create_console(settings, gateway_target=lambda: loopback["target"])
        routes.append(Mount("/console", app=console))
    started = start_service(
        name,
        settings,
        arms[ARM_A],
        getattr(settings, f"{name}_addr"),
        bundle_b=arms.get(ARM_B),
        http_address=http_address,
        http_routes=routes,
    )
    if started.server.loopback_port:
        loopback["target"] = f"127.0.0.1:{started.server.loopback_port}"
    log.info(
        "%s serving bundle(s) %s on port %d",
        name,
        ", ".join(f"{a}={b.version}" for a, b in arms.items()),
        started.server.port,
    )
    freeze_loaded_objects()
    watcher = watch_bundle(settings, arms[ARM_A], started.swap_bundle, searches(name, settings))
    return Serving(started, watcher)


def serve_archiver(settings: Settings) -> None:
    """The archiver (shortlist.feedback.archive) until SIGTERM or SIGINT, with /metrics and
    grpc.health.v1 like the other services (it serves no other RPC and loads no bundle).
    A stop writes what it has buffered; if its loop dies the process exits, not serving."""
    start_metrics_server(settings.archiver_metrics_port, settings.metrics_host)
    archiver = Archiver(kafka_consumer(settings, settings.archive_group), settings)
    archiver.start()
    server = start_server(
        "archiver", lambda _server: None, (), settings.archiver_addr, workers=2, settings=settings
    )
    log.info("archiver writing %s on health port %d", archiver.root, server.port)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):
        if not archiver.alive():
            server.set_serving(False)
            raise RuntimeError("the archiver's loop stopped")
    log.info("archiver stopping")
    server.set_serving(False)
    archiver.stop()
    server.stop()


def freeze_loaded_objects() -> None:
    """Move what start-up made (bundles' id maps, modules, servicers) out of the garbage
    collector's reach, so that a full collection on the request path no longer walks it
    (docs/decisions/0006-ranking-service-speed.md). Frozen objects are still freed by
    reference counting; a hot-swapped bundle is not frozen. Then the heap pages that
    start-up freed go back to the system: a loaded FAISS index frees its many list buffers
    into glibc's heap, which keeps them otherwise (docs/decisions/0007-served-index.md)."""
    gc.collect()
    gc.freeze()
    release_free_heap()


M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # mallopt parameters (glibc malloc.h)


def tune_allocator(arena_max: int, mmap_threshold: int) -> bool:
    """glibc's mallopt at start-up, before the server's threads allocate; 0 leaves a
    parameter as it is. False where the C library has no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = True
    if arena_max > 0:
        ok = bool(mallopt(M_ARENA_MAX, arena_max)) and ok
    if mmap_threshold > 0:
        ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and ok
    return ok


def release_free_heap() -> None:
    """glibc's malloc_trim(0), where the C library has it (not musl, not macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(ctypes.c_size_t(0))


def searches(name: str, settings: Settings) -> bool:
    """Whether service `name` searches the FAISS index (the others load bundles without it)."""
    return name == "retrieval" or (name == "gateway" and settings.colocate)


def watch_bundle(
    settings: Settings, bundle: Bundle, swap, with_index: bool = True
) -> BundleWatcher | None:
    """Hot reload of arm a when the bundle root's LATEST changes (polled) or on SIGHUP."""
    root = Path(settings.bundle)
    if latest_version(root) is None:
        return None  # a bundle directory itself: nothing newer can be published there

    def swapped(new: Bundle) -> None:
        swap(new)
        MODEL_INFO.labels(ARM_A).info(
            {"version": new.version, "model": str(new.manifest.get("model"))}
        )

    watcher = BundleWatcher(
        root,
        bundle.version,
        swapped,
        settings.bundle_poll_ms / 1000,
        loader=functools.partial(
            load_bundle, with_index=with_index, key=settings.bundle_key or None
        ),
    )
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda *_: watcher.request_reload())
    return watcher.start()


@dataclass
class InProcessStack:
    """The four services in one process on free local ports (demo and integration tests)."""

    services: dict[str, Started] = field(default_factory=dict)
    metrics_target: str | None = None  # HOST:PORT of /metrics, when the caller started one

    @property
    def gateway_target(self) -> str:
        return f"127.0.0.1:{self.services['gateway'].server.port}"

    @property
    def http_url(self) -> str:
        """The HTTP/JSON API's base URL (the stack was started with an `http_address`)."""
        http = self.services["gateway"].http
        if http is None:
            raise RuntimeError("this stack serves no HTTP/JSON API")
        return f"http://127.0.0.1:{http.port}"

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.services[name].server.port}"

    def swap_bundle(self, bundle: Bundle) -> None:
        for started in self.services.values():
            started.swap_bundle(bundle)

    def stop(self) -> None:
        """Stop the services; what start-up froze goes back to the collector (a test session
        starts many stacks, and a frozen cycle is never freed)."""
        for name in reversed(list(self.services)):
            self.services.pop(name).stop()
        gc.unfreeze()


def start_inprocess_stack(
    settings: Settings,
    bundle: Bundle,
    store: StateStore,
    publisher: EventPublisher,
    consumer: EventConsumer,
    bundle_b: Bundle | None = None,
    http_address: str | None = None,
    http_routes: Sequence[BaseRoute] = (),
) -> InProcessStack:
    """`http_address` (e.g. "127.0.0.1:0"): the gateway serves the HTTP/JSON API there too,
    with `http_routes` beside it."""
    stack = InProcessStack()
    for arm, b in ((ARM_A, bundle), (ARM_B, bundle_b)):
        if b is not None:
            MODEL_INFO.labels(arm).info(
                {"version": b.version, "model": str(b.manifest.get("model"))}
            )
    try:
        for name in ("retrieval", "ranking"):
            stack.services[name] = start_service(
                name, settings, bundle, "127.0.0.1:0", store, bundle_b=bundle_b
            )
        stack.services["feedback"] = start_service(
            "feedback", settings, bundle, "127.0.0.1:0", store, publisher, consumer
        )
        stack.services["gateway"] = start_service(
            "gateway",
            settings,
            bundle,
            "127.0.0.1:0",
            publisher=publisher,
            retrieval_target=stack.target("retrieval"),
            ranking_target=stack.target("ranking"),
            bundle_b=bundle_b,
            http_address=http_address,
            http_routes=http_routes,
            feedback_target=stack.target("feedback"),
        )
    except Exception:
        stack.stop()
        raise
    freeze_loaded_objects()  # as each service's process does: no full collection walks it
    return stack
