"""Retrieval service: FAISS top-N for a user, minus what they have seen or disliked."""

from __future__ import annotations

import time

import grpc

from shortlist import serving
from shortlist.artifacts import Bundle
from shortlist.config import Settings
from shortlist.stores.base import StateStore, StoreUnavailable, UserState
from shortlist.telemetry import CANDIDATES, STAGE_LATENCY
from shortlist.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from shortlist.validation import InvalidInput, abort_invalid, require_id, require_ids, require_range

SERVICE = "retrieval"


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServicer):
    def __init__(self, bundle: Bundle, store: StateStore, settings: Settings) -> None:
        self.bundle = bundle
        self.store = store
        self.settings = settings

    def Retrieve(self, request, context):  # noqa: N802 (gRPC method name)
        s = self.settings
        try:
            require_id(request.user_id, "user_id", s.max_id_length)
            require_range(request.n, "n", 1, s.max_candidates)
            require_ids(request.exclude_item_ids, "exclude_item_ids", s.max_events, s.max_id_length)
        except InvalidInput as exc:
            abort_invalid(context, exc)
        bundle = self.bundle
        degraded = False
        start = time.perf_counter()
        try:
            state = self.store.user_state(request.user_id, bundle.version)
        except StoreUnavailable:
            state, degraded = UserState(), True
        STAGE_LATENCY.labels(SERVICE, "state").observe(time.perf_counter() - start)
        start = time.perf_counter()
        result = serving.retrieve(
            bundle, request.user_id, state, request.n, request.exclude_item_ids
        )
        STAGE_LATENCY.labels(SERVICE, "ann").observe(time.perf_counter() - start)
        CANDIDATES.labels(SERVICE).observe(len(result.items))
        ids = bundle.items.ids(result.items)
        return retrieval_pb2.RetrieveResponse(
            candidates=[
                common_pb2.ScoredItem(item_id=i, score=float(v)) for i, v in zip(ids, result.scores)
            ],
            model_version=bundle.version,
            user_source=result.user_source,
            degraded=degraded,
        )

    def SimilarItems(self, request, context):  # noqa: N802
        s = self.settings
        try:
            require_id(request.item_id, "item_id", s.max_id_length)
            require_range(request.k, "k", 1, s.max_k)
        except InvalidInput as exc:
            abort_invalid(context, exc)
        bundle = self.bundle  # one bundle for the whole call (hot reload swaps the attribute)
        item = bundle.items.get(request.item_id)
        if item is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"item_id {request.item_id!r} is not in the catalogue"
            )
        idx, scores = serving.similar_items(bundle, item, request.k)
        return common_pb2.SimilarItemsResponse(
            items=[
                common_pb2.ScoredItem(item_id=i, score=float(v))
                for i, v in zip(bundle.items.ids(idx), scores)
            ],
            model_version=bundle.version,
        )


def register(servicer: RetrievalServicer):
    def _register(server: grpc.Server) -> None:
        retrieval_pb2_grpc.add_RetrievalServicer_to_server(servicer, server)

    return _register


SERVICE_NAMES = (retrieval_pb2.DESCRIPTOR.services_by_name["Retrieval"].full_name,)
