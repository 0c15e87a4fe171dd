"""Building a gRPC server the same way for every service: limits, health, reflection, metrics."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shortlist.telemetry import READY, MetricsInterceptor

MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...]

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in (*self.service_names, ""):
            self.health.set(name, status)

    def stop(self, grace_s: float = 1.0) -> None:
        self.set_serving(False)
        self.server.stop(grace_s).wait()


def start_server(
    metrics_name: str,
    register: Callable[[grpc.Server], None],
    service_names: tuple[str, ...],
    address: str,
    workers: int = 16,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> RunningServer:
    """Start a server on `address` ("host:port", port 0 picks a free one) and mark it SERVING."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=metrics_name),
        interceptors=[MetricsInterceptor(metrics_name)],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=workers * 16,
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    server.start()
    running = RunningServer(server, port, health_servicer, service_names)
    running.set_serving(True)
    READY.labels(metrics_name).set(1)
    return running


def client_channel(target: str, max_message_bytes: int = MAX_MESSAGE_BYTES) -> grpc.Channel:
    return grpc.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
        ],
    )
