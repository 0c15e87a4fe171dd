"""The HTTP/JSON front door of the public API: `POST /v1/recommend`, `/v1/feedback`,
`/v1/similar-items`, the FeedbackAdmin calls under `/v1/admin/`, and the OpenAPI document
at `GET /openapi.json`.

Bodies are the proto messages in proto3 JSON (`google.protobuf.json_format`), so HTTP cannot
drift from the proto; each call is forwarded to the gateway's gRPC server over loopback with
the caller's credentials, so API keys, scopes, user tokens, rate limits, size caps, input
checks and error messages are the gRPC gateway's own, and its status code maps to an HTTP
status (docs/decisions/0034-http-json-front-door.md). The admin calls are checked here
(`AdminAccess`: keys with the `admin` scope) and forwarded to the feedback service with the
internal credentials (docs/decisions/0039-admin-over-http.md). `create_app` builds the app;
`start_http_server` serves it with uvicorn in a thread of the gateway process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import uvicorn
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from shortlist.config import Settings
from shortlist.rpc.client_tls import CHECK_S, GRACE_S
from shortlist.rpc.security import (
    API_KEY_HEADER,
    INTERNAL_HEADER,
    AdminAccess,
    RateLimits,
    check_gateway_policy,
    client_tls_files,
)
from shortlist.rpc.server import MAX_MESSAGE_BYTES
from shortlist.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc, gateway_pb2, gateway_pb2_grpc

log = logging.getLogger(__name__)

# gRPC status -> HTTP status (the mapping of google.rpc.Code's documentation).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
# Request headers passed on to the gateway as gRPC metadata (the credentials).
FORWARDED_HEADERS = ("authorization", API_KEY_HEADER)


@dataclass(frozen=True)
class Endpoint:
    """One RPC over HTTP: `POST path`, body `request`, reply `response`."""

    path: str
    method: str  # the RPC's name, of the Gateway (or FeedbackAdmin when `admin`)
    request: type[Message]
    response: type[Message]
    summary: str
    admin: bool = False  # a FeedbackAdmin call: scope admin, forwarded to the feedback service


ENDPOINTS = (
    Endpoint(
        "/v1/recommend",
        "Recommend",
        gateway_pb2.RecommendRequest,
        gateway_pb2.RecommendResponse,
        "Top-k items for a user: retrieval shortlist, reranked with context (scope recommend).",
    ),
    Endpoint(
        "/v1/feedback",
        "SendFeedback",
        gateway_pb2.SendFeedbackRequest,
        gateway_pb2.SendFeedbackResponse,
        "Likes, dislikes, views and skips, acknowledged once the broker has them (scope feedback).",
    ),
    Endpoint(
        "/v1/similar-items",
        "SimilarItems",
        common_pb2.SimilarItemsRequest,
        common_pb2.SimilarItemsResponse,
        "Items closest to a given item in the embedding space (scope recommend).",
    ),
    Endpoint(
        "/v1/admin/upsert-items",
        "UpsertItems",
        feedback_pb2.UpsertItemsRequest,
        feedback_pb2.CatalogueChangeResponse,
        "Add items to the catalogue or replace their attributes (scope admin).",
        admin=True,
    ),
    Endpoint(
        "/v1/admin/hide-items",
        "HideItems",
        feedback_pb2.ItemIdsRequest,
        feedback_pb2.CatalogueChangeResponse,
        "Stop recommending items until shown again (scope admin).",
        admin=True,
    ),
    Endpoint(
        "/v1/admin/show-items",
        "ShowItems",
        feedback_pb2.ItemIdsRequest,
        feedback_pb2.CatalogueChangeResponse,
        "Recommend hidden items again (scope admin).",
        admin=True,
    ),
    Endpoint(
        "/v1/admin/remove-items",
        "RemoveItems",
        feedback_pb2.ItemIdsRequest,
        feedback_pb2.CatalogueChangeResponse,
        "Remove items from the catalogue for good (scope admin).",
        admin=True,
    ),
    Endpoint(
        "/v1/admin/delete-user",
        "DeleteUser",
        feedback_pb2.DeleteUserRequest,
        feedback_pb2.DeleteUserResponse,
        "Forget a user's live state, through the feedback topic (scope admin).",
        admin=True,
    ),
)


def error_response(
    code: grpc.StatusCode, message: str, http_status: int | None = None
) -> JSONResponse:
    """The JSON error body: `{"error": {"code": <HTTP status>, "status": <gRPC code name>,
    "message": ...}}` (the shape of Google's JSON APIs), the message as gRPC sends it."""
    status = http_status or HTTP_STATUS.get(code, 500)
    body = {"error": {"code": status, "status": code.name, "message": message}}
    return JSONResponse(body, status_code=status)


def to_json(message: Message) -> dict[str, Any]:
    """A reply in proto3 JSON (lowerCamelCase names, enums by name, every field present)."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


class GatewayBridge:
    """A `grpc.aio` channel to the gateway, opened in the serving event loop."""

    def __init__(self, target: str, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.channel: grpc.aio.Channel | None = None
        self.stub: gateway_pb2_grpc.GatewayStub | None = None

    async def open(self) -> None:
        self.channel = grpc.aio.insecure_channel(
            self.target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def call(self, endpoint: Endpoint, request: Message, metadata) -> Message:
        rpc = getattr(self.stub, endpoint.method)
        return await rpc(request, timeout=self.timeout_s, metadata=metadata)


class AdminBridge:
    """A `grpc.aio` channel to the feedback service's FeedbackAdmin, with the gateway's
    internal credentials (TLS from `internal_ca_file`, the internal token on every call),
    as `shortlist.rpc.server.client_channel` gives the gateway's other internal channels."""

    def __init__(self, target: str, settings: Settings) -> None:
        self.target = target
        self.settings = settings
        self.timeout_s = settings.http_timeout_ms / 1000
        self.metadata: tuple[tuple[str, str], ...] = ()
        if settings.internal_token:
            self.metadata = ((INTERNAL_HEADER, settings.internal_token),)
        self.channel: grpc.aio.Channel | None = None
        self.stub: feedback_pb2_grpc.FeedbackAdminStub | None = None
        # TLS files re-read when they change (as client_channel's ReloadingChannel): a new
        # channel takes the calls, the old one closes after the grace period.
        self.files = client_tls_files(settings)
        self._checked_at = 0.0
        self._retired: set[grpc.aio.Channel] = set()
        self.options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]

    async def open(self) -> None:
        if self.files is None:
            self.channel = grpc.aio.insecure_channel(self.target, options=self.options)
            self.stub = feedback_pb2_grpc.FeedbackAdminStub(self.channel)
        else:
            self._use(self.files.initial())
            self._checked_at = time.monotonic()

    def _use(self, credentials: grpc.ChannelCredentials) -> None:
        self.channel = grpc.aio.secure_channel(self.target, credentials, options=self.options)
        self.stub = feedback_pb2_grpc.FeedbackAdminStub(self.channel)

    def _reload(self) -> None:
        """A new channel when the TLS files changed (looked at once per CHECK_S)."""
        now = time.monotonic()
        if self.files is None or now - self._checked_at < CHECK_S:
            return
        self._checked_at = now
        credentials = self.files.fetch()
        if credentials is None:
            return
        old = self.channel
        self._use(credentials)
        if old is not None:
            self._retired.add(old)
            asyncio.get_running_loop().call_later(
                GRACE_S, lambda: asyncio.ensure_future(self._close_retired(old))
            )

    async def _close_retired(self, channel: grpc.aio.Channel) -> None:
        if channel in self._retired:
            self._retired.discard(channel)
            await channel.close()

    async def close(self) -> None:
        for channel in [self.channel, *self._retired]:
            if channel is not None:
                await channel.close()
        self._retired.clear()

    async def call(self, endpoint: Endpoint, request: Message, _metadata) -> Message:
        """The caller's credentials stay here: the feedback service sees the gateway's."""
        self._reload()
        rpc = getattr(self.stub, endpoint.method)
        return await rpc(request, timeout=self.timeout_s, metadata=self.metadata)


def _too_large(size: int) -> JSONResponse:
    """413, with the code gRPC gives a message over its size limit."""
    return error_response(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"request body of {size} bytes is over the limit of {MAX_MESSAGE_BYTES}",
        413,
    )


def _handler(
    endpoint: Endpoint,
    bridge: GatewayBridge | AdminBridge,
    access: AdminAccess | None = None,
    limits: RateLimits | None = None,
):
    """`access` and `limits` (admin calls): the admin check and the gateway process's rate
    limits. The gateway's own calls meet both in its gRPC interceptors; the admin calls go
    to the feedback service, so they meet them here, in the same RateLimits object."""
    rpc_method = f"/{feedback_pb2.DESCRIPTOR.services_by_name['FeedbackAdmin'].full_name}/"
    rpc_method += endpoint.method

    async def handle(request: Request) -> Response:
        if access is not None:
            refused = access.refusal(request.headers)
            if refused is not None:
                return error_response(*refused)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_MESSAGE_BYTES:
            return _too_large(int(declared))
        body = await request.body()
        if len(body) > MAX_MESSAGE_BYTES:
            return _too_large(len(body))
        try:
            message = json_format.Parse(body or b"{}", endpoint.request())
        except json_format.ParseError as exc:
            return error_response(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request is not a valid {endpoint.request.DESCRIPTOR.full_name} in JSON: {exc}",
            )
        if access is not None and limits is not None:
            host = request.client.host if request.client else "unknown"
            limited = limits.refusal(access.client(request.headers, host), rpc_method, message)
            if limited is not None:
                return error_response(grpc.StatusCode.RESOURCE_EXHAUSTED, limited)
        metadata = tuple(
            (name, request.headers[name]) for name in FORWARDED_HEADERS if name in request.headers
        )
        try:
            reply = await bridge.call(endpoint, message, metadata)
        except grpc.aio.AioRpcError as exc:
            return error_response(exc.code(), exc.details() or exc.code().name)
        return JSONResponse(to_json(reply))

    return handle


def create_app(
    gateway_target: str,
    settings: Settings | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    feedback_target: str | None = None,
    address: str | None = None,
    rate_limits: RateLimits | None = None,
) -> Starlette:
    """The HTTP/JSON API as a Starlette app that calls the gateway at `gateway_target`
    (plaintext gRPC, normally the gateway's own loopback port) and the admin calls' feedback
    service at `feedback_target` (default `settings.feedback_addr`); `address` is where it
    is served (default `settings.gateway_http_addr`: admin calls without keys only on
    loopback). `extra_routes` are added after the API's (e.g. `Mount("/console", ...)`).
    `rate_limits`: the gateway process's limits, which its gRPC server holds too (default:
    built from the settings, for an app without a gateway in its process)."""
    settings = settings or Settings()
    bridge = GatewayBridge(gateway_target, settings.http_timeout_ms / 1000)
    admin = AdminBridge(feedback_target or settings.feedback_addr, settings)
    access = AdminAccess(settings, address or settings.gateway_http_addr)
    # Admin calls draw from the gateway's own buckets (per key, calls and events), so a key
    # has one budget over gRPC and HTTP (docs/decisions/0049-one-rate-limiter-for-grpc-and-http.md).
    limits = rate_limits or RateLimits.from_settings(settings)
    document = openapi_document()

    async def openapi(_request: Request) -> Response:
        return JSONResponse(document)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await bridge.open()
        await admin.open()
        try:
            yield
        finally:
            await admin.close()
            await bridge.close()

    routes: list[BaseRoute] = [
        Route(
            e.path,
            _handler(e, admin, access, limits) if e.admin else _handler(e, bridge),
            methods=["POST"],
        )
        for e in ENDPOINTS
    ]
    routes.append(Route("/openapi.json", openapi, methods=["GET"]))
    routes.extend(extra_routes)
    return Starlette(routes=routes, lifespan=lifespan)


# ---- OpenAPI 3 from the proto descriptors -------------------------------------------------

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    # proto3 JSON writes 64-bit integers as strings (and reads numbers or strings)
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64"},
}


def _field_schema(field: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = field.message_type.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _single(value, schemas)}
    single = _single(field, schemas)
    if field.is_repeated:
        return {"type": "array", "items": single}
    return single


def _single(field: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return {"$ref": f"#/components/schemas/{_message_schema(field.message_type, schemas)}"}
    if field.type == FieldDescriptor.TYPE_ENUM:
        return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
    return dict(_SCALARS[field.type])


def _message_schema(descriptor: Descriptor, schemas: dict[str, Any]) -> str:
    """Adds the schema of `descriptor` (and of the messages it uses) to `schemas`; its name."""
    name = descriptor.full_name
    if name not in schemas:
        schemas[name] = {}  # placeholder first: recursive messages refer to themselves
        properties = {f.json_name: _field_schema(f, schemas) for f in descriptor.fields}
        schemas[name] = {"type": "object", "properties": properties}
    return name


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for the HTTP/JSON API, built from the proto descriptors at start."""
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "integer", "description": "HTTP status"},
                        "status": {"type": "string", "description": "gRPC status code name"},
                        "message": {"type": "string"},
                    },
                }
            },
        }
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    paths: dict[str, Any] = {}
    for e in ENDPOINTS:
        request = _message_schema(e.request.DESCRIPTOR, schemas)
        response = _message_schema(e.response.DESCRIPTOR, schemas)
        errors = {
            str(status): {"description": ", ".join(c.name for c in codes), "content": error}
            for status, codes in _statuses().items()
        }
        paths[e.path] = {
            "post": {
                "operationId": e.method,
                "summary": e.summary,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}
                    },
                },
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": f"#/components/schemas/{response}"}
                            }
                        },
                    },
                    **errors,
                },
                "security": (
                    [{"apiKey": []}, {"bearer": []}]
                    if e.admin
                    else [{"apiKey": []}, {"bearer": []}, {}]
                ),
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Shortlist",
            "version": "v1",
            "description": "The shortlist.v1.Gateway API, and shortlist.v1.FeedbackAdmin's "
            "catalogue and user calls under /v1/admin/ (API keys with scope admin), over "
            "HTTP/JSON: bodies are the proto messages in proto3 JSON (lowerCamelCase names; "
            "the proto names are accepted too).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def _statuses() -> dict[int, list[grpc.StatusCode]]:
    out: dict[int, list[grpc.StatusCode]] = {}
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        out.setdefault(HTTP_STATUS[code], []).append(code)
    return out


# ---- serving ------------------------------------------------------------------------------


@dataclass
class HttpServer:
    """uvicorn serving the app in a thread of its own (its own event loop)."""

    server: uvicorn.Server
    thread: threading.Thread
    port: int

    def stop(self, timeout_s: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


def _listen(address: str, share_port: bool) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: a reply written in two parts (headers, then body)
    # must not wait for the client's delayed ACK of the first (Nagle: ~40 ms a call).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if share_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, int(port)))
    sock.set_inheritable(True)
    return sock


def start_http_server(
    settings: Settings,
    gateway_target: str,
    address: str | None = None,
    share_port: bool = False,
    extra_routes: Sequence[BaseRoute] = (),
    feedback_target: str | None = None,
    rate_limits: RateLimits | None = None,
) -> HttpServer:
    """Serve `create_app(gateway_target)` on `address` (default `settings.gateway_http_addr`;
    port 0 picks a free one), with the gateway's TLS settings (a client CA: client
    certificates required) and the same refusal to serve plaintext beyond loopback.
    `rate_limits`: the gateway process's (see `create_app`)."""
    address = address or settings.gateway_http_addr
    check_gateway_policy(settings, address)
    tls: dict[str, Any] = {}
    if settings.tls_cert_file or settings.tls_key_file:
        tls = {"ssl_certfile": settings.tls_cert_file, "ssl_keyfile": settings.tls_key_file}
        if settings.tls_client_ca_file:
            tls |= {"ssl_ca_certs": settings.tls_client_ca_file, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    sock = _listen(address, share_port)
    config = uvicorn.Config(
        create_app(gateway_target, settings, extra_routes, feedback_target, address, rate_limits),
        log_config=None,
        access_log=False,
        lifespan="on",
        **tls,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="http", daemon=True
    )
    thread.start()
    port = sock.getsockname()[1]
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise OSError(f"the HTTP server on {address} did not start")
        time.sleep(0.01)
    log.info("HTTP/JSON API on %s (port %d), forwarding to %s", address, port, gateway_target)
    return HttpServer(server, thread, port)
