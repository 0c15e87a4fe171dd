"""Building a gRPC server the same way for every service: limits, health, reflection
(off on the public gateway unless configured), metrics."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shortlist.rpc import security
from shortlist.rpc.client_tls import ReloadingChannel
from shortlist.rpc.telemetry import READY, MetricsInterceptor

MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class DecodeErrorInterceptor(grpc.ServerInterceptor):
    """Undecodable request bytes are a client mistake: INVALID_ARGUMENT with the parser's
    message, where grpcio itself would answer INTERNAL ("Exception deserializing request!").
    Requests are parsed inside the handler instead of by grpcio."""

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        parse, inner = handler.request_deserializer, handler.unary_unary

        def parsed(raw: bytes, context: grpc.ServicerContext) -> Any:
            try:
                request = parse(raw)
            except Exception as exc:  # protobuf DecodeError, or a non-UTF-8 string field
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request is not a valid {handler_call_details.method} message: {exc}",
                )
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            parsed, request_deserializer=None, response_serializer=handler.response_serializer
        )


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...]
    health_server: grpc.Server | None = None  # plaintext, grpc.health.v1 only
    health_port: int = 0
    loopback_port: int = 0  # plaintext on 127.0.0.1, same services (the HTTP front door's)

    def set_serving(self, serving: bool, names: tuple[str, ...] | None = None) -> None:
        """Health of `names` (default: every service and "", the whole server)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in (*self.service_names, "") if names is None else names:
            self.health.set(name, status)

    def stop(self, grace_s: float = 1.0) -> None:
        self.set_serving(False)
        if self.health_server is not None:
            self.health_server.stop(grace_s)
        self.server.stop(grace_s).wait()


ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def connection_age_options(settings: Any) -> list[tuple[str, int]]:
    """Close connections after `max_connection_age_ms` (with a grace for calls in flight):
    clients then reconnect and resolve the name again, so pods added since get traffic."""
    age = getattr(settings, "max_connection_age_ms", 0) if settings is not None else 0
    if not age:
        return []
    return [("grpc.max_connection_age_ms", age), ("grpc.max_connection_age_grace_ms", 5000)]


def start_server(
    metrics_name: str,
    register: Callable[[grpc.Server], None],
    service_names: tuple[str, ...],
    address: str,
    workers: int = 16,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    settings: Any = None,
    share_port: bool = False,
    own_port: int = 0,
    loopback_port: bool = False,
    rate_limits: security.RateLimits | None = None,
) -> RunningServer:
    """Start a server on `address` ("host:port", port 0 picks a free one) and mark it SERVING.

    With `settings`, the server gets TLS (and mutual TLS) from its certificate files and the
    access control of service `metrics_name` (API keys and rate limits on the gateway, the
    internal token elsewhere); a gateway that would be plaintext or keyless beyond loopback
    without `insecure=1` refuses to start (see shortlist.rpc.security). `share_port`: other
    processes may bind the same port (SO_REUSEPORT, gateway workers); otherwise a port in
    use is an error. `own_port`: one more port on the same host for this process alone (a
    gateway worker's, see Settings.gateway_worker_port). `loopback_port`: one more port,
    plaintext on 127.0.0.1 (picked free), for callers in the same process or pod (the HTTP
    front door), with the same interceptors: TLS is the only thing it leaves out.
    `rate_limits` (gateway): the process's limits, to share with its HTTP front door
    (default: built from the settings).
    """
    credentials = None
    # Requests are parsed before the security interceptors, which read user ids from them
    # (a call refused by credentials alone is answered without parsing).
    interceptors: list[grpc.ServerInterceptor] = [
        MetricsInterceptor(metrics_name),
        DecodeErrorInterceptor(),
    ]
    if settings is not None:
        if metrics_name == "gateway":
            security.check_gateway_policy(settings, address)
        elif metrics_name != "archiver":  # serves health only
            security.check_internal_policy(settings, address)
        credentials = security.server_credentials(settings)
        interceptors += security.server_interceptors(metrics_name, settings, rate_limits)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=metrics_name),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", int(share_port)),
            *connection_age_options(settings),
        ],
        maximum_concurrent_rpcs=workers * 16,
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection_on(metrics_name, settings):
        reflection.enable_server_reflection(
            (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    if own_port:
        own = f"{address.rsplit(':', 1)[0]}:{own_port}"
        bound = (
            server.add_insecure_port(own)
            if credentials is None
            else server.add_secure_port(own, credentials)
        )
        if bound == 0:
            raise OSError(f"could not bind gRPC server to {own}")
    loopback = server.add_insecure_port("127.0.0.1:0") if loopback_port else 0
    if loopback_port and loopback == 0:
        raise OSError("could not bind a loopback port for the gRPC server")
    server.start()
    running = RunningServer(server, port, health_servicer, service_names, loopback_port=loopback)
    if settings is not None and settings.health_port:
        running.health_server, running.health_port = start_health_server(
            health_servicer, address, settings.health_port
        )
    running.set_serving(True)
    READY.labels(metrics_name).set(1)
    return running


def reflection_on(metrics_name: str, settings: Any) -> bool:
    """Reflection lists the whole API to anyone who connects: off on the public gateway
    unless `reflection=1`; internal services keep it (their transport is mutual TLS)."""
    return settings is None or metrics_name != "gateway" or bool(settings.reflection)


def start_health_server(
    servicer: health.HealthServicer, address: str, port: int
) -> tuple[grpc.Server, int]:
    """grpc.health.v1 alone, plaintext, on `port` of the main server's host (kubelet gRPC
    probes cannot speak TLS); it shares the main server's health states."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    host = address.rsplit(":", 1)[0]
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind the health port {host}:{port}")
    server.start()
    return server, bound


def client_channel(
    target: str, max_message_bytes: int = MAX_MESSAGE_BYTES, settings: Any = None
) -> grpc.Channel:
    """A channel to `target`; with `settings` (the gateway's channels to internal services),
    TLS when `internal_ca_file` is set (the client certificate re-read when its files
    change, shortlist.rpc.client_tls), the internal token on every call, and calls spread
    round robin over every address the target resolves to (`dns:///retrieval:50052` over a
    headless Service: one connection per pod, not one pinned pod per gateway)."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
    ]
    if settings is not None:
        options.append(("grpc.service_config", ROUND_ROBIN))
    files = security.client_tls_files(settings) if settings is not None else None
    if files is None:
        channel = grpc.insecure_channel(target, options=options)
    else:  # TLS files re-read when they change: a rotated client certificate without restart
        channel = ReloadingChannel(target, files, options)
    if settings is not None and settings.internal_token:
        channel = security.with_metadata(
            channel, ((security.INTERNAL_HEADER, settings.internal_token),)
        )
    return channel
