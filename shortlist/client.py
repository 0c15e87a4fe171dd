"""A small typed client of the public API (`shortlist.v1.Gateway`) over gRPC.

    from shortlist.client import Client, Feedback

    with Client("127.0.0.1:50051", api_key="...") as client:
        reply = client.recommend("user-0007", 5, context={"device": "ios"})
        client.send_feedback(Feedback("user-0007", reply.items[0].item_id, "like"))

Every call has a deadline (`timeout_s`, 2 s by default). Retries are gRPC's own, from the
channel's service config: UNAVAILABLE only (the gateway answers it when a call may be tried
again: the broker did not acknowledge feedback, the server is starting or draining), up to
`max_attempts` with exponential backoff. All three calls are safe to retry: Recommend and
SimilarItems read only, and SendFeedback because every event carries an id (the client
assigns one when the caller does not) and the feedback worker applies an event id once.
`AsyncClient` is the same over `grpc.aio`. Replies are frozen dataclasses; `.raw` keeps the
proto message (fields added to the proto later are there first).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from shortlist.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

__all__ = [
    "AsyncClient",
    "Client",
    "Contribution",
    "Feedback",
    "Item",
    "Reasons",
    "Recommendation",
    "SimilarItems",
    "Tls",
    "service_config",
]

SERVICE = "shortlist.v1.Gateway"
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MAX_ATTEMPTS = 3
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the server's limit (shortlist.rpc.server)
KINDS = {
    "like": common_pb2.FEEDBACK_KIND_LIKE,
    "dislike": common_pb2.FEEDBACK_KIND_DISLIKE,
    "view": common_pb2.FEEDBACK_KIND_VIEW,
    "skip": common_pb2.FEEDBACK_KIND_SKIP,
}


@dataclass(frozen=True)
class Contribution:
    """One ranking feature's part of an item's score (`Reasons.top_features`)."""

    feature: str
    value: float
    contribution: float


@dataclass(frozen=True)
class Reasons:
    """Why an item was recommended (asked for with `recommend(..., with_reasons=True)`):
    the candidate sources that proposed it, the liked items most like it, the ranker's
    largest feature contributions and the request rules that moved it."""

    sources: tuple[str, ...]
    because_liked: tuple[str, ...]
    top_features: tuple[Contribution, ...]
    rules: tuple[str, ...]

    @classmethod
    def from_proto(cls, reasons: common_pb2.Reasons) -> Reasons:
        return cls(
            tuple(reasons.sources),
            tuple(reasons.because_liked),
            tuple(Contribution(f.feature, f.value, f.contribution) for f in reasons.top_features),
            tuple(reasons.rules),
        )


@dataclass(frozen=True)
class Item:
    item_id: str
    score: float
    reasons: Reasons | None = None  # None unless the request asked for reasons

    @classmethod
    def from_proto(cls, item: common_pb2.ScoredItem) -> Item:
        reasons = Reasons.from_proto(item.reasons) if item.HasField("reasons") else None
        return cls(item.item_id, item.score, reasons)


@dataclass(frozen=True)
class Recommendation:
    items: tuple[Item, ...]
    model_version: str
    arm: str
    fallback_used: bool
    fallback_reason: str
    raw: gateway_pb2.RecommendResponse = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, reply: gateway_pb2.RecommendResponse) -> Recommendation:
        return cls(
            tuple(Item.from_proto(i) for i in reply.items),
            reply.model_version,
            reply.arm,
            reply.fallback_used,
            reply.fallback_reason,
            reply,
        )

    @property
    def item_ids(self) -> list[str]:
        return [i.item_id for i in self.items]


@dataclass(frozen=True)
class SimilarItems:
    items: tuple[Item, ...]
    model_version: str
    raw: common_pb2.SimilarItemsResponse = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, reply: common_pb2.SimilarItemsResponse) -> SimilarItems:
        return cls(tuple(Item.from_proto(i) for i in reply.items), reply.model_version, reply)

    @property
    def item_ids(self) -> list[str]:
        return [i.item_id for i in self.items]


@dataclass(frozen=True)
class Feedback:
    """One user action. `kind`: like, dislike, view or skip. `event_id`: the client assigns a
    random one when empty (so a retried batch is applied once); `timestamp_ms`: 0 lets the
    gateway use its clock."""

    user_id: str
    item_id: str
    kind: str = "like"
    event_id: str = ""
    timestamp_ms: int = 0

    def to_proto(self) -> common_pb2.FeedbackEvent:
        try:
            kind = KINDS[self.kind.lower()]
        except KeyError:
            raise ValueError(
                f"feedback kind must be one of {', '.join(KINDS)}, got {self.kind!r}"
            ) from None
        return common_pb2.FeedbackEvent(
            event_id=self.event_id or uuid.uuid4().hex,
            user_id=self.user_id,
            item_id=self.item_id,
            kind=kind,
            timestamp_ms=self.timestamp_ms,
        )


@dataclass(frozen=True)
class Tls:
    """TLS to the gateway. Without `root_certificates` the system's roots verify the server;
    `certificate_chain` and `private_key` present a client certificate (mutual TLS);
    `server_name` overrides the name checked in the server's certificate."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> Tls:
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return cls(read(ca), read(cert), read(key), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )


def service_config(max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> str:
    """The gRPC service config of the client's channel: with `max_attempts` > 1, retries of
    UNAVAILABLE only (all three calls are idempotent: see the module's docstring). No
    `timeout` here: every call passes its own deadline, and grpcio misapplies a service
    config timeout (grpc/grpc#34547: one of about a second or less fails every call at once
    with DEADLINE_EXCEEDED)."""
    method: dict[str, Any] = {"name": [{"service": SERVICE}]}
    if max_attempts > 1:
        method["retryPolicy"] = {
            "maxAttempts": max_attempts,
            "initialBackoff": "0.05s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return json.dumps({"methodConfig": [method]})


def _options(
    timeout_s: float, max_attempts: int, tls: Tls | None, extra: Sequence[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if not 1 <= max_attempts <= 5:  # gRPC caps attempts at 5
        raise ValueError(f"max_attempts must be in 1..5, got {max_attempts}")
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", int(max_attempts > 1)),
        ("grpc.service_config", service_config(max_attempts)),
    ]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options + list(extra)


def _metadata(api_key: str | None, token: str | None) -> tuple[tuple[str, str], ...]:
    """The credentials as the gateway reads them: the key in `x-api-key` (so that a user
    token can go in `authorization`), the token as a bearer."""
    pairs = []
    if api_key:
        pairs.append(("x-api-key", api_key))
    if token:
        pairs.append(("authorization", f"Bearer {token}"))
    return tuple(pairs)


def _tls(tls: bool | Tls) -> Tls | None:
    if tls is True:
        return Tls()
    return tls or None


def _recommend_request(
    user_id: str,
    k: int,
    context: Mapping[str, str] | None,
    exclude: Iterable[str],
    with_reasons: bool,
    rules: common_pb2.Rules | None,
) -> gateway_pb2.RecommendRequest:
    return gateway_pb2.RecommendRequest(
        user_id=user_id,
        k=k,
        context=dict(context or {}),
        exclude_item_ids=list(exclude),
        with_reasons=with_reasons,
        rules=rules,
    )


def _feedback_request(events: Iterable[Feedback]) -> gateway_pb2.SendFeedbackRequest:
    return gateway_pb2.SendFeedbackRequest(events=[e.to_proto() for e in events])


class Client:
    """A blocking client; one channel (connection) per client, safe to share by threads.

    `tls`: False (plaintext), True (TLS verified by the system's roots) or a `Tls`.
    `api_key` and `token` (a user token, HS256 JWT) go with every call. `timeout_s` is every
    call's deadline unless the call names one; `max_attempts` (1: no retries) bounds
    attempts on UNAVAILABLE. `options`: more gRPC channel options.
    """

    def __init__(
        self,
        target: str,
        api_key: str | None = None,
        *,
        token: str | None = None,
        tls: bool | Tls = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        settings = _tls(tls)
        opts = _options(timeout_s, max_attempts, settings, options)
        if settings is None:
            self.channel = grpc.insecure_channel(target, options=opts)
        else:
            self.channel = grpc.secure_channel(target, settings.credentials(), options=opts)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.target = target
        self.timeout_s = timeout_s
        self._metadata = _metadata(api_key, token)

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        *,
        context: Mapping[str, str] | None = None,
        exclude: Iterable[str] = (),
        with_reasons: bool = False,
        rules: common_pb2.Rules | None = None,
        timeout_s: float | None = None,
    ) -> Recommendation:
        """Top-k items for the user; `with_reasons` attaches each item's `Reasons` (it costs
        time); `rules` filter, cap, pin and boost items (common_pb2.Rules)."""
        reply = self.stub.Recommend(
            _recommend_request(user_id, k, context, exclude, with_reasons, rules),
            timeout=timeout_s or self.timeout_s,
            metadata=self._metadata,
        )
        return Recommendation.from_proto(reply)

    def send_feedback(self, *events: Feedback, timeout_s: float | None = None) -> list[str]:
        """Sends the events in one call; their ids in order, once the broker has them all."""
        reply = self.stub.SendFeedback(
            _feedback_request(events), timeout=timeout_s or self.timeout_s, metadata=self._metadata
        )
        return list(reply.event_ids)

    def similar_items(
        self, item_id: str, k: int = 10, *, timeout_s: float | None = None
    ) -> SimilarItems:
        reply = self.stub.SimilarItems(
            common_pb2.SimilarItemsRequest(item_id=item_id, k=k),
            timeout=timeout_s or self.timeout_s,
            metadata=self._metadata,
        )
        return SimilarItems.from_proto(reply)

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Blocks until the channel is connected (grpc.FutureTimeoutError after timeout_s)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class AsyncClient:
    """`Client` over `grpc.aio` (create it inside the event loop that will use it)."""

    def __init__(
        self,
        target: str,
        api_key: str | None = None,
        *,
        token: str | None = None,
        tls: bool | Tls = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        settings = _tls(tls)
        opts = _options(timeout_s, max_attempts, settings, options)
        if settings is None:
            self.channel = grpc.aio.insecure_channel(target, options=opts)
        else:
            self.channel = grpc.aio.secure_channel(target, settings.credentials(), options=opts)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.target = target
        self.timeout_s = timeout_s
        self._metadata = _metadata(api_key, token)

    async def recommend(
        self,
        user_id: str,
        k: int = 10,
        *,
        context: Mapping[str, str] | None = None,
        exclude: Iterable[str] = (),
        with_reasons: bool = False,
        rules: common_pb2.Rules | None = None,
        timeout_s: float | None = None,
    ) -> Recommendation:
        reply = await self.stub.Recommend(
            _recommend_request(user_id, k, context, exclude, with_reasons, rules),
            timeout=timeout_s or self.timeout_s,
            metadata=self._metadata,
        )
        return Recommendation.from_proto(reply)

    async def send_feedback(self, *events: Feedback, timeout_s: float | None = None) -> list[str]:
        reply = await self.stub.SendFeedback(
            _feedback_request(events), timeout=timeout_s or self.timeout_s, metadata=self._metadata
        )
        return list(reply.event_ids)

    async def similar_items(
        self, item_id: str, k: int = 10, *, timeout_s: float | None = None
    ) -> SimilarItems:
        reply = await self.stub.SimilarItems(
            common_pb2.SimilarItemsRequest(item_id=item_id, k=k),
            timeout=timeout_s or self.timeout_s,
            metadata=self._metadata,
        )
        return SimilarItems.from_proto(reply)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


def now_ms() -> int:
    """Milliseconds since the epoch, the unit of `Feedback.timestamp_ms`."""
    return int(time.time() * 1000)
