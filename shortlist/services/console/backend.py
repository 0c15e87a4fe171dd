"""What the console pages and its JSON API show, fetched server-side.

Recommendations, similar items and feedback go through the public gateway over gRPC (the
same path and checks as any client); the user's recent feedback and live item figures come
from the state store; bundle figures from the bundle files; rates from the services'
metrics; the live feed from the feedback topic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from shortlist.config import Settings
from shortlist.feedback.stores import RedisStateStore, RedisTLS, StateStore, StoreUnavailable
from shortlist.rpc import security
from shortlist.rpc.server import client_channel
from shortlist.services.console.access import ActionKeys, Refused
from shortlist.services.console.facts import BundleShelf
from shortlist.services.console.feed import EventFeed
from shortlist.services.console.metrics import MetricsSummary, default_targets
from shortlist.services.console.reports import list_reports
from shortlist.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

READ_TIMEOUT_S = 2.0
SEND_TIMEOUT_S = 5.0
HISTORY_SHOWN = 30
# Ask for each item's reasons where the gateway's contract has them (issue 29's reasons).
WITH_REASONS = "with_reasons" in gateway_pb2.RecommendRequest.DESCRIPTOR.fields_by_name
KINDS = {"like": common_pb2.FEEDBACK_KIND_LIKE, "dislike": common_pb2.FEEDBACK_KIND_DISLIKE}
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def refused_from(exc: grpc.RpcError, what: str) -> Refused:
    """A gateway error as the HTTP status and message the page shows."""
    code = exc.code()
    return Refused(HTTP_STATUS.get(code, 502), f"{what}: {code.name}: {exc.details()}")


def as_json(message: Any) -> dict[str, Any]:
    """A reply in proto3 JSON names, every field present (new fields, such as reasons,
    reach the page without a change here)."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


class ConsoleBackend:
    def __init__(
        self,
        settings: Settings,
        gateway_target: str | Callable[[], str] | None = None,
        store: StateStore | None = None,
        metrics_targets: list[str] | None = None,
        feed: EventFeed | None = None,
    ) -> None:
        self.settings = settings
        self.keys = ActionKeys(settings)
        self.shelf = BundleShelf(settings.bundle, settings.ab_bundle_b)
        self.reports_dir = Path(settings.reports_dir)
        self.metrics = MetricsSummary(
            default_targets(settings) if metrics_targets is None else metrics_targets
        )
        if feed is None and settings.backend != "memory":
            feed = EventFeed(settings.kafka_bootstrap, settings.feedback_topic)
        self.feed = feed
        self._gateway_target = gateway_target or settings.gateway_addr
        self._store = store
        self._channel: grpc.Channel | None = None
        self._stub: gateway_pb2_grpc.GatewayStub | None = None
        self._lock = threading.Lock()

    # connections, opened on first use
    @property
    def gateway(self) -> gateway_pb2_grpc.GatewayStub:
        with self._lock:
            if self._stub is None:
                target = self._gateway_target
                self._channel = client_channel(target() if callable(target) else target)
                self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
            return self._stub

    @property
    def store(self) -> StateStore:
        with self._lock:
            if self._store is None:
                self._store = RedisStateStore(
                    self.settings.redis_url,
                    self.settings.redis_prefix,
                    tls=RedisTLS.from_settings(self.settings),
                )
            return self._store

    def _read_metadata(self) -> tuple[tuple[str, str], ...]:
        key = self.settings.console_api_key
        return ((security.API_KEY_HEADER, key),) if key else ()

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()
        if self._channel is not None:
            self._channel.close()

    def check_id(self, value: str, field: str) -> str:
        value = value.strip()
        if not value:
            raise Refused(400, f"{field} must not be empty")
        if len(value) > self.settings.max_id_length:
            raise Refused(400, f"{field} is longer than {self.settings.max_id_length} characters")
        return value

    # what the pages show
    def overview(self) -> dict[str, Any]:
        serving = self.shelf.serving()
        arm_b = self.shelf.arm_b()
        metrics = self.metrics.read()
        return {
            "serving": serving.manifest.get("version") if serving else None,
            "bundleRoot": str(self.shelf.path),
            "versions": self.shelf.versions(),
            "promotions": self.shelf.promotions(),
            "arms": {
                "enabled": bool(self.settings.ab_bundle_b),
                "shareB": self.settings.ab_share_b,
                "salt": self.settings.ab_salt,
                "a": serving.manifest.get("version") if serving else None,
                "b": arm_b.manifest.get("version") if arm_b else None,
            },
            "metrics": metrics,
            "feed": self.feed.since(0, limit=0) if self.feed else None,
            "reports": list_reports(self.reports_dir),
            "readOnly": self.keys.read_only,
            "at": time.time(),
        }

    def user(self, user_id: str, k: int = 10) -> dict[str, Any]:
        user_id = self.check_id(user_id, "user_id")
        if not 1 <= k <= self.settings.max_k:
            raise Refused(400, f"k must be in 1..{self.settings.max_k}, got {k}")
        request = gateway_pb2.RecommendRequest(user_id=user_id, k=k)
        if WITH_REASONS:
            request.with_reasons = True
        try:
            reply = self.gateway.Recommend(
                request,
                timeout=READ_TIMEOUT_S,
                metadata=self._read_metadata(),
            )
        except grpc.RpcError as exc:
            raise refused_from(exc, "Recommend") from None
        serving = self.shelf.serving()
        out: dict[str, Any] = {
            "userId": user_id,
            "recommendations": as_json(reply),
            "trained": bool(serving and user_id in serving.user_index),
            "history": [],
            "liveLikes": 0,
            "stateError": None,
        }
        try:
            state = self.store.user_state(user_id, reply.model_version)
        except StoreUnavailable as exc:
            out["stateError"] = f"state store unavailable: {exc}"
            return out
        out["history"] = [
            {"itemId": item, "kind": kind.name.lower()} for item, kind in state.history
        ][:HISTORY_SHOWN]
        out["liveLikes"] = state.likes
        out["seen"] = len(state.seen)
        out["folded"] = state.vector is not None
        return out

    def item(self, item_id: str, k: int = 10) -> dict[str, Any]:
        item_id = self.check_id(item_id, "item_id")
        serving = self.shelf.serving()
        facts = serving.item(item_id) if serving else None
        out: dict[str, Any] = {"itemId": item_id, "bundle": facts, "similar": None}
        try:
            out["liveAttributes"] = self.store.item_attributes([item_id]).get(item_id, {})
            out["liveLikes"] = self.store.item_likes().get(item_id, 0)
            version = serving.manifest.get("version", "") if serving else ""
            catalogue = self.store.catalogue(version)
            out["hidden"] = item_id in catalogue.hidden
            out["removed"] = item_id in catalogue.removed
            out["stateError"] = None
        except StoreUnavailable as exc:
            out["stateError"] = f"state store unavailable: {exc}"
        if facts is None and not out.get("liveAttributes"):
            raise Refused(404, f"item {item_id!r} is neither in the serving bundle nor upserted")
        try:
            reply = self.gateway.SimilarItems(
                common_pb2.SimilarItemsRequest(item_id=item_id, k=k),
                timeout=READ_TIMEOUT_S,
                metadata=self._read_metadata(),
            )
            out["similar"] = as_json(reply)
        except grpc.RpcError as exc:
            out["similarError"] = refused_from(exc, "SimilarItems").message
        return out

    def events(self, after: int) -> dict[str, Any]:
        if self.feed is None:
            return {"events": [], "last": 0, "perSecond": 0.0, "error": "no event bus (demo)"}
        return self.feed.since(after)

    def send_feedback(self, headers: dict[str, str], body: Any) -> dict[str, Any]:
        """A like or dislike from the page, sent as the caller with their key."""
        key = self.keys.authorize(headers)
        if not isinstance(body, dict):
            raise Refused(400, "the body must be a JSON object")
        kind = body.get("kind")
        if kind not in KINDS:
            raise Refused(400, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        user_id = self.check_id(str(body.get("userId") or ""), "userId")
        item_id = self.check_id(str(body.get("itemId") or ""), "itemId")
        event = common_pb2.FeedbackEvent(
            user_id=user_id,
            item_id=item_id,
            kind=KINDS[kind],
            timestamp_ms=int(time.time() * 1000),
        )
        try:
            reply = self.gateway.SendFeedback(
                gateway_pb2.SendFeedbackRequest(events=[event]),
                timeout=SEND_TIMEOUT_S,
                metadata=((security.API_KEY_HEADER, key),),
            )
        except grpc.RpcError as exc:
            raise refused_from(exc, "SendFeedback") from None
        return {"eventIds": list(reply.event_ids), "userId": user_id, "itemId": item_id}
