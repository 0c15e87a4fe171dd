"""Gateway: the public API. Orchestrates retrieval and ranking with deadlines and fallbacks,
and hands feedback to the bus, acknowledging only what the broker acknowledged."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import grpc
import numpy as np

from shortlist.bundle.ab import ARM_A, ARM_B, arm_for
from shortlist.bundle.bundle import Bundle
from shortlist.config import Settings
from shortlist.feedback.bus.base import BusUnavailable, EventPublisher
from shortlist.feedback.events import Event, Kind, derived_event_id, scoped_event_id
from shortlist.ranking.attributes import ItemAttributes
from shortlist.ranking.rules import Rules, apply_rules, parse_rules
from shortlist.rpc.security import current_caller
from shortlist.rpc.telemetry import EVENTS_PUBLISHED, FALLBACKS, STAGE_LATENCY, set_arm
from shortlist.rpc.validation import (
    InvalidInput,
    abort_invalid,
    require_id,
    require_ids,
    require_range,
)
from shortlist.services.inputs import parsed_context
from shortlist.services.stages import Ranker, RankOptions, Retriever
from shortlist.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

SERVICE = "gateway"
WIDEN_FACTOR = 4  # candidates asked for again when rules left fewer than k
PASS_THROUGH = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
KIND_NAMES = {k.value: k.name.lower() for k in Kind}
# what clients may send: FORGET is internal (FeedbackAdmin.DeleteUser writes it)
CLIENT_KINDS = frozenset(k.value for k in (Kind.LIKE, Kind.DISLIKE, Kind.VIEW, Kind.SKIP))


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(
        self,
        bundle: Bundle,
        retriever: Retriever,
        ranker: Ranker,
        publisher: EventPublisher,
        settings: Settings,
        bundle_b: Bundle | None = None,
    ) -> None:
        """`retriever` and `ranker`: the stages in this process or in their own services
        (`shortlist.services.local` or `.remote`); the gateway calls both alike."""
        self.bundle = bundle  # for the popularity fallback
        self.retriever = retriever
        self.ranker = ranker
        self.publisher = publisher
        self.settings = settings
        # A/B: with a second bundle, each request names its arm's bundle version to
        # retrieval and ranking (which load both); without one, they serve their default.
        self.arms = {ARM_A: bundle} if bundle_b is None else {ARM_A: bundle, ARM_B: bundle_b}
        self.share_b = settings.ab_share_b if bundle_b is not None else 0.0

    def use_bundle(self, bundle: Bundle) -> None:
        """Hot swap: `bundle` replaces arm a's; calls in flight keep the one they started with.
        Stages in this process swap first, so arm a never names a bundle they lack."""
        self.retriever.use_bundle(bundle)
        self.ranker.use_bundle(bundle)
        self.arms[ARM_A] = bundle
        self.bundle = bundle

    def arm(self, user_id: str) -> str:
        return arm_for(user_id, self.share_b, self.settings.ab_salt)

    def _timeout(self, context: grpc.ServicerContext, budget_ms: int) -> float:
        """The stage budget, never beyond what is left of the caller's deadline."""
        remaining = context.time_remaining()
        budget = budget_ms / 1000
        return budget if remaining is None else max(0.001, min(budget, remaining - 0.002))

    def Recommend(self, request, context):  # noqa: N802 (gRPC method name)
        s = self.settings
        arm = self.arm(request.user_id)
        set_arm(arm)
        bundle = self.arms[arm]
        version = bundle.version if len(self.arms) > 1 else ""
        try:
            require_id(request.user_id, "user_id", s.max_id_length)
            require_range(request.k, "k", 1, s.max_k)
            require_ids(request.exclude_item_ids, "exclude_item_ids", s.max_events, s.max_id_length)
            request_context = parsed_context(request.context, s)
            rules_message = request.rules if request.HasField("rules") else None
            rules = parse_rules(rules_message, request.k, s.max_id_length)
            if rules is not None:
                excluded = set(request.exclude_item_ids)
                for n, (item, _) in enumerate(rules.pinned):
                    if item in excluded:
                        raise InvalidInput(
                            f"rules.pinned[{n}].item_id {item!r} is also in exclude_item_ids"
                        )
        except InvalidInput as exc:
            abort_invalid(context, exc)
        options = RankOptions(request.with_reasons, rules_message)
        # filters and caps may leave fewer than k: ask retrieval for more, up to the cap
        n = max(s.candidates, request.k)
        while True:
            answer = self._recommend(
                request, request_context, arm, version, n, options, rules, context
            )
            if answer is not None:  # None: widen
                return answer
            n = min(s.max_candidates, n * WIDEN_FACTOR)

    def _recommend(self, request, request_context, arm, version, n, options, rules, context):
        """One retrieval and ranking of `n` candidates: the response, or None when the
        rules left fewer than k items of a full shortlist and retrieval could give more."""
        s = self.settings
        start = time.perf_counter()
        try:
            candidates = self.retriever.retrieve(
                request.user_id,
                n,
                request.exclude_item_ids,
                version,
                self._timeout(context, s.retrieval_timeout_ms),
            )
        except grpc.RpcError as exc:
            STAGE_LATENCY.labels(SERVICE, "retrieval", arm).observe(time.perf_counter() - start)
            return self._popular(request, arm, f"retrieval_unavailable:{exc.code().name}", rules)
        STAGE_LATENCY.labels(SERVICE, "retrieval", arm).observe(time.perf_counter() - start)

        unknown = candidates.user_source == "popularity"
        active = options.with_reasons or options.rules is not None
        if unknown and (not active or not len(candidates)):
            items = _plain(candidates.scored(request.k))
            return self._respond(items, candidates.model_version, arm, "unknown_user")
        if unknown:  # rules and reasons over the popularity list, its order kept
            options = replace(options, keep_order=True)
        reason = "unknown_user" if unknown else "state_unavailable" if candidates.degraded else ""
        start = time.perf_counter()
        try:
            ranked = self.ranker.rank(
                request.user_id,
                candidates,
                request_context,
                request.context,
                request.k,
                self._timeout(context, s.ranking_timeout_ms),
                options,
            )
        except grpc.RpcError as exc:
            STAGE_LATENCY.labels(SERVICE, "ranking", arm).observe(time.perf_counter() - start)
            if options.rules is not None and exc.details().startswith("rules."):
                context.abort(exc.code(), exc.details())  # a rule the catalogue refutes
            if rules is None:
                items = candidates.scored(request.k)
                items = items if options.with_reasons else _plain(items)
            else:
                ids, scores = candidates.item_ids(), candidates.item_scores()
                items = self._under_rules(arm, ids, scores, rules, request.k)
            # a degradation already taken (unknown user, no live state) stays marked beside it
            failed = ",".join(filter(None, (reason, f"ranking_unavailable:{exc.code().name}")))
            return self._respond(items, candidates.model_version, arm, failed)
        STAGE_LATENCY.labels(SERVICE, "ranking", arm).observe(time.perf_counter() - start)
        if (
            options.rules is not None
            and len(ranked.items) < request.k
            and len(candidates) >= n
            and n < s.max_candidates
        ):
            return None
        return self._respond(ranked.items, ranked.model_version, arm, reason)

    def _respond(self, items, version: str, arm: str, reason: str) -> gateway_pb2.RecommendResponse:
        for part in filter(None, reason.split(",")):
            FALLBACKS.labels(part.split(":")[0], arm).inc()
        return gateway_pb2.RecommendResponse(
            items=items,
            model_version=version,
            fallback_used=bool(reason),
            fallback_reason=reason,
            arm=arm,
        )

    def _popular(
        self, request, arm: str, reason: str, rules: Rules | None = None
    ) -> gateway_pb2.RecommendResponse:
        bundle = self.arms[arm]
        exclude = bundle.items.indices(request.exclude_item_ids)
        n = request.k if rules is None else self.settings.max_candidates
        top = bundle.popular_items(n, exclude)
        ids, scores = bundle.items.ids(top), bundle.popularity[top]
        if rules is None:
            items = [
                common_pb2.ScoredItem(item_id=i, score=float(s))
                for i, s in zip(ids, scores.tolist())
            ]
        else:
            items = self._under_rules(arm, ids, scores, rules, request.k)
        return self._respond(items, bundle.version, arm, reason)

    def _under_rules(self, arm: str, ids, scores, rules: Rules, k: int):
        """A fallback list (retrieval or popularity order) under the request's rules, with
        the bundle's item attributes: the live ones are read by the ranking stage, which is
        not in this answer."""
        bundle = self.arms[arm]
        attributes = ItemAttributes(bundle.items, bundle.item_attribute_values)
        positions = np.arange(len(ids))
        now_ms = int(time.time() * 1000)
        served = apply_rules(list(ids), positions, scores, rules, k, attributes, now_ms)
        return [common_pb2.ScoredItem(item_id=s.item_id, score=s.score) for s in served]

    def SendFeedback(self, request, context):  # noqa: N802
        s = self.settings
        if request.events:
            set_arm(self.arm(request.events[0].user_id))
        try:
            client_ids, events = self._validated_events(request, current_caller().key_id)
        except InvalidInput as exc:
            abort_invalid(context, exc)
        start = time.perf_counter()
        try:
            self.publisher.publish(events, self._timeout(context, s.publish_timeout_ms))
        except BusUnavailable as exc:
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"feedback not accepted, the event bus is unavailable: {exc}",
            )
        # A batch of several users is timed under its first user's arm; events count per arm.
        STAGE_LATENCY.labels(SERVICE, "publish", self.arm(events[0].user_id)).observe(
            time.perf_counter() - start
        )
        for e in events:
            EVENTS_PUBLISHED.labels(self.arm(e.user_id), KIND_NAMES[e.kind]).inc()
        return gateway_pb2.SendFeedbackResponse(event_ids=client_ids)

    def _validated_events(self, request, key_id: str) -> tuple[list[str], list[Event]]:
        """The ids to answer (the client's, or assigned ones) and the events to publish, whose
        ids are scoped to the caller (`key_id`). Without a client id, one is derived from the
        event when it has a timestamp (a retry dedups); with neither it is random."""
        s = self.settings
        require_range(len(request.events), "events (count)", 1, s.max_events)
        now_ms = int(time.time() * 1000)
        client_ids: list[str] = []
        events = []
        for n, e in enumerate(request.events):
            field = f"events[{n}]"
            require_id(e.user_id, f"{field}.user_id", s.max_id_length)
            require_id(e.item_id, f"{field}.item_id", s.max_id_length)
            if e.event_id:
                require_id(e.event_id, f"{field}.event_id", s.max_id_length)
            # An item the bundles do not know is accepted: it may have been added since
            # training (FeedbackAdmin.UpsertItems), and its likes fold its vector in.
            if e.kind not in CLIENT_KINDS:
                raise InvalidInput(
                    f"{field}.kind must be one of LIKE, DISLIKE, VIEW, SKIP, got {e.kind}"
                )
            if e.timestamp_ms < 0:
                raise InvalidInput(f"{field}.timestamp_ms must not be negative")
            if e.event_id:
                client_id = e.event_id
            elif e.timestamp_ms:
                client_id = derived_event_id(key_id, e.user_id, e.item_id, e.kind, e.timestamp_ms)
            else:  # nothing stable to derive from: a retry of this event is a new event
                client_id = uuid.uuid4().hex
            client_ids.append(client_id)
            events.append(
                Event(
                    event_id=scoped_event_id(key_id, client_id),
                    user_id=e.user_id,
                    item_id=e.item_id,
                    kind=Kind(e.kind),
                    timestamp_ms=e.timestamp_ms or now_ms,
                )
            )
        return client_ids, events

    def SimilarItems(self, request, context):  # noqa: N802
        s = self.settings
        try:
            require_id(request.item_id, "item_id", s.max_id_length)
            require_range(request.k, "k", 1, s.max_k)
        except InvalidInput as exc:
            abort_invalid(context, exc)
        try:
            return self.retriever.similar_items(
                request.item_id, request.k, self._timeout(context, s.retrieval_timeout_ms)
            )
        except grpc.RpcError as exc:
            code = exc.code() if exc.code() in PASS_THROUGH else grpc.StatusCode.UNAVAILABLE
            context.abort(code, f"similar items: {exc.details()}")


def register(servicer: GatewayServicer):
    def _register(server: grpc.Server) -> None:
        gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server)

    return _register


SERVICE_NAMES = (gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name,)


def _plain(items) -> list[common_pb2.ScoredItem]:
    """Items and scores only: a retrieval list's fused sources stay out of a reply that
    asked for no reasons."""
    return [common_pb2.ScoredItem(item_id=m.item_id, score=m.score) for m in items]
