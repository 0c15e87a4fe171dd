"""Ranking service: LightGBM LambdaRank over the shortlist with user, item and context features."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from shortlist import serving
from shortlist.artifacts import Bundle
from shortlist.bundle_set import BundleSet
from shortlist.config import Settings
from shortlist.features import RequestContext, parse_context
from shortlist.item_likes import LiveItemLikes
from shortlist.stores.base import RankingSignals, StateStore, StoreUnavailable, UserState
from shortlist.telemetry import STAGE_LATENCY, set_arm
from shortlist.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc
from shortlist.validation import (
    InvalidInput,
    abort_invalid,
    require_context,
    require_id,
    require_range,
)

SERVICE = "ranking"


@dataclass
class LocalRankRequest:
    """Rank's request handed over in process (co-located gateway): the retrieval shortlist
    as item indices of the bundle it names, instead of 200 candidate messages."""

    user_id: str
    shortlist: object  # services.retrieval.server.LocalShortlist
    context: Mapping[str, str]
    k: int


class RankingServicer(ranking_pb2_grpc.RankingServicer):
    """Ranks with the default bundle, or another loaded bundle the request names by version
    (A/B: arm "a" is the default bundle, arm "b" the first other one)."""

    def __init__(
        self,
        bundle: Bundle,
        store: StateStore,
        settings: Settings,
        others: Sequence[Bundle] = (),
    ) -> None:
        # The item-side feature data is built, and the ranker compiled, before a bundle
        # becomes reachable.
        self.bundles = BundleSet(bundle, others, prepare=lambda b: (b.item_side, b.scorer))
        self.store = store
        self.settings = settings
        self.item_likes = LiveItemLikes(store, settings.item_likes_refresh_ms / 1000)
        self.item_likes.refresh()

    @property
    def bundle(self) -> Bundle:
        return self.bundles.default

    def use_bundle(self, bundle: Bundle) -> None:
        self.bundles.use(bundle)

    def Rank(self, request, context):  # noqa: N802 (gRPC method name)
        s = self.settings
        bundle, arm = self.bundles.find(request.model_version, context)
        set_arm(arm)
        try:
            require_id(request.user_id, "user_id", s.max_id_length)
            require_range(request.k, "k", 1, s.max_k)
            require_range(len(request.candidates), "candidates (count)", 1, s.max_candidates)
            require_context(request.context, s.max_context_entries, s.max_id_length)
            ctx = parse_context(request.context)
        except InvalidInput as exc:
            abort_invalid(context, exc)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        ids = [c.item_id for c in request.candidates]
        get = self.bundles.item_index[bundle.version].get
        idx = np.array([get(i, -1) for i in ids], np.int64)
        if (idx < 0).any():
            bad = ids[int(np.flatnonzero(idx < 0)[0])]
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"candidates: item_id {bad!r} is not in bundle {bundle.version}",
            )
        scores = np.fromiter((c.score for c in request.candidates), np.float32, len(ids))
        return self._ranked(bundle, arm, request.user_id, idx, scores, ctx, request.k, None)

    def rank_shortlist(self, request: LocalRankRequest, context) -> ranking_pb2.RankResponse:
        """Rank over a shortlist handed over in process, with the user's state retrieval
        read (no second round trip); the gateway has validated the request's user, k and
        context."""
        found = request.shortlist
        bundle, arm = self.bundles.find(found.model_version, context)
        set_arm(arm)
        try:
            # as Rank checks it, so that both paths answer an empty shortlist alike
            require_range(len(found.items), "candidates (count)", 1, self.settings.max_candidates)
            ctx = parse_context(request.context)
        except InvalidInput as exc:
            abort_invalid(context, exc)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        scores = np.asarray(found.scores, np.float32)
        return self._ranked(
            bundle, arm, request.user_id, found.items, scores, ctx, request.k, found.state
        )

    def _ranked(
        self,
        bundle: Bundle,
        arm: str,
        user_id: str,
        idx: np.ndarray,
        scores: np.ndarray,
        ctx: RequestContext,
        k: int,
        state: UserState | None,
    ) -> ranking_pb2.RankResponse:
        """Live signals (the user's state from the store in one round trip unless given; the
        items' live likes from the in-process counts), features, ranker, the reply."""
        start = time.perf_counter()
        if state is None:
            try:
                state = self.store.user_state(user_id, bundle.version)
            except StoreUnavailable:
                state = UserState()
        live = RankingSignals(state.history, self.item_likes.counts(bundle)[idx], state.likes)
        STAGE_LATENCY.labels(SERVICE, "features", arm).observe(time.perf_counter() - start)
        start = time.perf_counter()
        top, top_scores = serving.rank(bundle, user_id, idx, scores, live, ctx, k)
        STAGE_LATENCY.labels(SERVICE, "scoring", arm).observe(time.perf_counter() - start)
        names = self.bundles.item_ids[bundle.version]
        item = common_pb2.ScoredItem
        return ranking_pb2.RankResponse(
            items=[
                item(item_id=names[i], score=v) for i, v in zip(top.tolist(), top_scores.tolist())
            ],
            model_version=bundle.version,
        )


def register(servicer: RankingServicer):
    def _register(server: grpc.Server) -> None:
        ranking_pb2_grpc.add_RankingServicer_to_server(servicer, server)

    return _register


SERVICE_NAMES = (ranking_pb2.DESCRIPTOR.services_by_name["Ranking"].full_name,)
