"""Retrieval service: FAISS top-N for a user, minus what they have seen or disliked."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from shortlist import serving
from shortlist.artifacts import Bundle
from shortlist.bundle_set import BundleSet
from shortlist.config import Settings
from shortlist.search_memo import SearchMemo
from shortlist.stores.base import StateStore, StoreUnavailable, UserState
from shortlist.telemetry import CANDIDATES, RETRIEVAL_ANSWERS, STAGE_LATENCY, set_arm
from shortlist.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from shortlist.validation import InvalidInput, abort_invalid, require_id, require_ids, require_range

SERVICE = "retrieval"
log = logging.getLogger(__name__)


@dataclass
class LocalShortlist:
    """A shortlist handed over in process (co-located gateway): item indices of `bundle`,
    no reply message; `candidates` builds the messages only for a fallback that needs them."""

    bundle: Bundle
    item_ids: list[str]  # the bundle's ids by item index
    items: np.ndarray
    scores: np.ndarray
    user_source: str
    degraded: bool
    state: UserState  # the user's state as read for this shortlist; ranking reuses it

    @property
    def model_version(self) -> str:
        return self.bundle.version

    @property
    def candidates(self) -> list[common_pb2.ScoredItem]:
        return scored_items(self.item_ids, self.items, self.scores)


def scored_items(ids: list[str], items: np.ndarray, scores: np.ndarray) -> list:
    item = common_pb2.ScoredItem
    return [item(item_id=ids[i], score=v) for i, v in zip(items.tolist(), scores.tolist())]


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServicer):
    """Serves the default bundle, and any other loaded bundle a request names by version
    (A/B: arm "a" is the default bundle, arm "b" the first other one)."""

    def __init__(
        self,
        bundle: Bundle,
        store: StateStore,
        settings: Settings,
        others: Sequence[Bundle] = (),
    ) -> None:
        self.store = store
        self.settings = settings
        self.memos: dict[str, SearchMemo] = {}  # by bundle version
        self.bundles = BundleSet(bundle, others, prepare=self._prepare)

    def _prepare(self, bundle: Bundle) -> None:
        serving.prepare_for_retrieval(bundle)
        recall = getattr(bundle.index, "recall", None)
        log.info(
            "bundle %s: serving %s %s", bundle.version, type(bundle.index).__name__, recall or ""
        )
        entries = self.settings.retrieval_memo_entries
        if entries > 0:
            self.memos[bundle.version] = SearchMemo(bundle.index, entries)

    @property
    def bundle(self) -> Bundle:
        return self.bundles.default

    def use_bundle(self, bundle: Bundle) -> None:
        self.bundles.use(bundle)

    def _bundle(self, version: str, context: grpc.ServicerContext) -> tuple[Bundle, str]:
        found = self.bundles.find(version, context)
        set_arm(found[1])
        return found

    def Retrieve(self, request, context):  # noqa: N802 (gRPC method name)
        found = self.shortlist(request, context)
        return retrieval_pb2.RetrieveResponse(
            candidates=found.candidates,
            model_version=found.model_version,
            user_source=found.user_source,
            degraded=found.degraded,
        )

    def shortlist(self, request, context) -> LocalShortlist:
        """What Retrieve answers, before it becomes a reply message."""
        s = self.settings
        try:
            require_id(request.user_id, "user_id", s.max_id_length)
            require_range(request.n, "n", 1, s.max_candidates)
            require_ids(request.exclude_item_ids, "exclude_item_ids", s.max_events, s.max_id_length)
        except InvalidInput as exc:
            abort_invalid(context, exc)
        bundle, arm = self._bundle(request.model_version, context)
        degraded = False
        start = time.perf_counter()
        try:
            state = self.store.user_state(request.user_id, bundle.version)
        except StoreUnavailable:
            state, degraded = UserState(), True
        STAGE_LATENCY.labels(SERVICE, "state", arm).observe(time.perf_counter() - start)
        start = time.perf_counter()
        memo = self.memos.get(bundle.version)
        result = serving.retrieve(
            bundle,
            request.user_id,
            state,
            request.n,
            request.exclude_item_ids,
            memo,
            precomputed=bool(s.retrieval_precomputed),
        )
        STAGE_LATENCY.labels(SERVICE, "ann", arm).observe(time.perf_counter() - start)
        RETRIEVAL_ANSWERS.labels(SERVICE, result.answer, arm).inc()
        CANDIDATES.labels(SERVICE, arm).observe(len(result.items))
        return LocalShortlist(
            bundle,
            self.bundles.item_ids[bundle.version],
            result.items,
            result.scores,
            result.user_source,
            degraded,
            state,
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
