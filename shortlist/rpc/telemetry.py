"""Prometheus metrics shared by all services, and the gRPC interceptor that records them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

# A/B arm of the request a metric describes (shortlist.bundle.ab): "a" (the default bundle) or "b";
# NO_ARM where the request names no user (SimilarItems, health, bad input before the user).
NO_ARM = "none"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

RPC_REQUESTS = Counter(
    "shortlist_rpc_requests_total",
    "RPCs handled, by service, method, status code and A/B arm",
    ["service", "method", "code", "arm"],
)
RPC_LATENCY = Histogram(
    "shortlist_rpc_latency_seconds",
    "Server-side RPC latency",
    ["service", "method", "code", "arm"],
    buckets=LATENCY_BUCKETS,
)
STAGE_LATENCY = Histogram(
    "shortlist_stage_latency_seconds",
    "Latency of one stage inside a request",
    ["service", "stage", "arm"],
    buckets=LATENCY_BUCKETS,
)
FALLBACKS = Counter(
    "shortlist_fallbacks_total",
    "Requests answered by a fallback, by reason and A/B arm",
    ["reason", "arm"],
)
CANDIDATES = Histogram(
    "shortlist_candidates_returned",
    "Candidates returned by retrieval",
    ["service", "arm"],
    buckets=(0, 10, 20, 50, 100, 200, 500, 1000),
)
RETRIEVAL_ANSWERS = Counter(
    "shortlist_retrieval_answers_total",
    "Shortlists by how they were found (answer: precomputed, the bundle's shortlist of a "
    "trained user; memo, the search memo; search, the ANN index; popularity)",
    ["service", "answer", "arm"],
)
EVENTS_PUBLISHED = Counter(
    "shortlist_feedback_events_published_total",
    "Feedback events acknowledged by the broker, by the A/B arm of the event's user",
    ["arm", "kind"],
)
EVENTS_APPLIED = Counter(
    "shortlist_feedback_events_applied_total", "Feedback events applied to the state store"
)
EVENTS_DUPLICATE = Counter(
    "shortlist_feedback_events_duplicate_total", "Replayed feedback events skipped"
)
EVENTS_MALFORMED = Counter(
    "shortlist_feedback_events_malformed_total", "Topic records that are not valid events"
)
EVENTS_ARCHIVED = Counter(
    "shortlist_feedback_events_archived_total",
    "Feedback events written to the archive (durable, offsets committed after)",
)
CONSUMER_LAG = Gauge(
    "shortlist_feedback_consumer_lag",
    "Records in the feedback topic not yet consumed by this process's partitions",
)
DEAD_LETTERED = Counter(
    "shortlist_feedback_dead_lettered_total",
    "Feedback records parked on the dead-letter topic, by reason (malformed: not a valid "
    "event; too_large: over feedback_max_record_bytes; apply_failed: a poison record whose "
    "apply kept raising)",
    ["reason"],
)
APPLY_FAILURES = Counter(
    "shortlist_feedback_apply_failures_total",
    "Applies of feedback that raised an error other than the store being away (each is "
    "retried with backoff; an event that keeps failing alone is parked)",
)
LAST_PROGRESS = Gauge(
    "shortlist_feedback_last_progress_timestamp_seconds",
    "Unix time the feedback consumer last committed a batch or found nothing to consume",
)
CONSUMER_STUCK = Gauge(
    "shortlist_feedback_consumer_stuck_seconds",
    "How long the feedback consumer has held records without committing them (0: progressing)",
)
KAFKA_PRODUCE_LATENCY = Histogram(
    "shortlist_kafka_produce_latency_seconds",
    "Time until the broker acknowledged a SendFeedback batch",
    buckets=LATENCY_BUCKETS,
)
REDIS_LATENCY = Histogram(
    "shortlist_redis_latency_seconds",
    "Redis round trips, by operation",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
TLS_RELOADS = Counter(
    "shortlist_tls_certificate_reloads_total",
    "Times the server's TLS certificate files changed and were loaded for new handshakes",
)
TLS_CLIENT_RELOADS = Counter(
    "shortlist_tls_client_certificate_reloads_total",
    "Times a client's TLS files (CA, certificate, key) changed and new channels use them",
)
MODEL_INFO = Info("shortlist_model", "Artifact bundles served by this process, by A/B arm", ["arm"])
READY = Gauge("shortlist_ready", "1 when the service is serving", ["service"])


_request = threading.local()


def set_arm(arm: str) -> None:
    """Name the A/B arm of the RPC this thread is handling (read by MetricsInterceptor)."""
    _request.arm = arm


def current_arm() -> str:
    return getattr(_request, "arm", NO_ARM)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> Any:
    """Expose /metrics on its own port (0 disables it); returns the HTTP server (or None),
    whose `shutdown()` stops it."""
    if not port:
        return None
    server, _thread = start_http_server(port, addr=host)
    return server


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every unary RPC by method and final status code."""

    def __init__(self, service: str) -> None:
        self.service = service

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary
        service = self.service

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            _request.arm = NO_ARM
            code = grpc.StatusCode.OK
            try:
                response = inner(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                name = code.name if isinstance(code, grpc.StatusCode) else str(code)
                arm = _request.arm
                RPC_REQUESTS.labels(service, method, name, arm).inc()
                RPC_LATENCY.labels(service, method, name, arm).observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
