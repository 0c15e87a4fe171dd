"""The retrieval and ranking stages in this process: what their gRPC servicers serve, and
what a co-located gateway calls directly (no messages, the shortlist as item indices).

Each holds the bundles it serves (`BundleSet`: the default, plus arm "b" under A/B) and the
live state store. Errors are `grpc.RpcError`s with a status code (`shortlist.rpc.inprocess`),
as from a remote stage; a reply later than the caller's timeout is dropped as
DEADLINE_EXCEEDED (the work cannot be interrupted, but the caller falls back as it would).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import grpc
import numpy as np

from shortlist.bundle.bundle import Bundle
from shortlist.bundle.bundle_set import BundleSet
from shortlist.config import Settings
from shortlist.feedback.stores.base import RankingSignals, StateStore, StoreUnavailable, UserState
from shortlist.ranking.attributes import ItemAttributes, LiveCatalogueItems
from shortlist.ranking.context import RequestContext
from shortlist.ranking.item_likes import LiveItemLikes
from shortlist.ranking.rank import RankedList, ranked_list, user_signals
from shortlist.ranking.reasons import because_liked, reasons_message, top_contributions
from shortlist.ranking.rules import Served, apply_rules, check_against, parse_rules
from shortlist.retrieval.catalogue import LiveCatalogue
from shortlist.retrieval.memo import SearchMemo
from shortlist.retrieval.retrieve import prepare_for_retrieval, retrieve, similar_to
from shortlist.rpc.inprocess import in_process
from shortlist.rpc.telemetry import CANDIDATES, RETRIEVAL_ANSWERS, STAGE_LATENCY, set_arm
from shortlist.rpc.validation import InvalidInput
from shortlist.services.stages import NO_OPTIONS, Candidates, Ranked, RankOptions
from shortlist.v1 import common_pb2

log = logging.getLogger(__name__)


class _BundleStage:
    """What both stages share: the bundles they serve, the default one swapped on reload."""

    bundles: BundleSet

    @property
    def bundle(self) -> Bundle:
        return self.bundles.default

    def use_bundle(self, bundle: Bundle) -> None:
        for version in self.bundles.use(bundle):
            self.release(version)

    def release(self, version: str) -> None:
        """Drop what this stage keeps per bundle version besides the bundle set."""


def candidate_source(bundle: Bundle, answer: str) -> str:
    """The name a shortlist's items carry in Reasons.sources, from how it was found."""
    if answer in ("precomputed", "popularity"):
        return answer
    return str(bundle.manifest.get("model", "retrieval"))


class LocalRetriever(_BundleStage):
    """The retrieval stage: state read, precomputed shortlist / memo / ANN search, the live
    catalogue (hidden items out, new items in: `shortlist.retrieval.catalogue`)."""

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
        self.catalogue = LiveCatalogue(store)
        self.bundles = BundleSet(bundle, others, prepare=self._prepare)

    def _prepare(self, bundle: Bundle) -> None:
        prepare_for_retrieval(bundle)
        recall = getattr(bundle.index, "recall", None)
        log.info(
            "bundle %s: serving %s %s", bundle.version, type(bundle.index).__name__, recall or ""
        )
        entries = self.settings.retrieval_memo_entries
        if entries > 0:
            self.memos[bundle.version] = SearchMemo(bundle.index, entries)

    def release(self, version: str) -> None:
        self.memos.pop(version, None)
        self.catalogue.release(version)

    def retrieve(
        self,
        user_id: str,
        n: int,
        exclude: Sequence[str],
        model_version: str,
        timeout: float | None,
    ) -> Candidates:
        return in_process("Retrieve", timeout, self._retrieve, user_id, n, exclude, model_version)

    def _retrieve(
        self, user_id: str, n: int, exclude: Sequence[str], model_version: str
    ) -> Candidates:
        bundle, arm = self.bundles.find(model_version)
        set_arm(arm)
        degraded = False
        start = time.perf_counter()
        try:
            state = self.store.user_state(user_id, bundle.version)
        except StoreUnavailable:
            state, degraded = UserState(), True
        # degraded: the last catalogue read, without trying the store again
        generation = -1 if degraded else state.catalogue_generation
        view = self.catalogue.view(bundle.version, bundle.items, generation)
        STAGE_LATENCY.labels("retrieval", "state", arm).observe(time.perf_counter() - start)
        start = time.perf_counter()
        found = retrieve(
            bundle,
            user_id,
            state,
            n,
            exclude,
            self.memos.get(bundle.version),
            precomputed=bool(self.settings.retrieval_precomputed),
            view=view,
        )
        STAGE_LATENCY.labels("retrieval", "ann", arm).observe(time.perf_counter() - start)
        RETRIEVAL_ANSWERS.labels("retrieval", found.answer, arm).inc()
        CANDIDATES.labels("retrieval", arm).observe(len(found.items))
        return Candidates(
            model_version=bundle.version,
            user_source=found.user_source,
            degraded=degraded,
            items=found.items,
            scores=found.scores,
            catalogue=self.bundles.item_ids[bundle.version],
            new_ids=view.new_ids,
            state=state,
            source=candidate_source(bundle, found.answer),
            sources=found.sources,
        )

    def similar_items(
        self, item_id: str, k: int, timeout: float | None
    ) -> common_pb2.SimilarItemsResponse:
        return in_process("SimilarItems", timeout, self._similar_items, item_id, k)

    def _similar_items(self, item_id: str, k: int) -> common_pb2.SimilarItemsResponse:
        bundle = self.bundle  # one bundle for the whole call (hot reload swaps the attribute)
        found = similar_to(bundle, item_id, k, self.catalogue.view(bundle.version, bundle.items))
        if found is None:
            raise InvalidInput(
                f"item_id {item_id!r} is not in the catalogue", grpc.StatusCode.NOT_FOUND
            )
        ids, scores = found
        return common_pb2.SimilarItemsResponse(
            items=[common_pb2.ScoredItem(item_id=i, score=float(v)) for i, v in zip(ids, scores)],
            model_version=bundle.version,
        )


class LocalRanker(_BundleStage):
    """The ranking stage: live signals, features, the bundle's scorer, top-k."""

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
        self.live_items = LiveCatalogueItems(store)  # attributes for request rules

    def release(self, version: str) -> None:
        self.item_likes.release(version)

    def rank(
        self,
        user_id: str,
        candidates: Candidates,
        context: RequestContext,
        raw_context: Mapping[str, str],
        k: int,
        timeout: float | None,
        options: RankOptions = NO_OPTIONS,
    ) -> Ranked:
        return in_process("Rank", timeout, self._rank, user_id, candidates, context, k, options)

    def _rank(
        self,
        user_id: str,
        candidates: Candidates,
        context: RequestContext,
        k: int,
        options: RankOptions = NO_OPTIONS,
    ) -> Ranked:
        bundle, arm = self.bundles.find(candidates.model_version)
        set_arm(arm)
        rules = parse_rules(options.rules, k, self.settings.max_id_length)
        if not 1 <= len(candidates) <= self.settings.max_candidates:
            raise InvalidInput(
                f"candidates (count) must be in 1..{self.settings.max_candidates}, "
                f"got {len(candidates)}"
            )
        idx = self._indices(bundle, candidates)
        start = time.perf_counter()
        state, generation = candidates.state, None
        if state is None:
            try:
                state = self.store.user_state(user_id, bundle.version)
            except StoreUnavailable:
                state, generation = UserState(), -1
        if generation is None:
            generation = state.catalogue_generation
        known = (idx >= 0) & (idx < len(bundle.items))  # new items have no live likes here
        live_likes = self.item_likes.counts(bundle.version, bundle.items)[np.where(known, idx, 0)]
        live = RankingSignals(state.history, np.where(known, live_likes, 0), state.likes)
        STAGE_LATENCY.labels("ranking", "features", arm).observe(time.perf_counter() - start)
        start = time.perf_counter()
        scores = candidates.item_scores()
        ranked = ranked_list(bundle, user_id, idx, scores, live, context, options.keep_order)
        STAGE_LATENCY.labels("ranking", "scoring", arm).observe(time.perf_counter() - start)
        if rules is None and not options.with_reasons:
            top, top_scores = ranked.order[:k], ranked.scores[:k]
            if known.all():
                names = self.bundles.item_ids[bundle.version]
                ids = [names[i] for i in idx[top].tolist()]
            else:
                every = candidates.item_ids()
                ids = [every[p] for p in top.tolist()]
            item = common_pb2.ScoredItem
            return Ranked(
                [item(item_id=i, score=v) for i, v in zip(ids, top_scores.tolist())],
                bundle.version,
            )
        start = time.perf_counter()
        every = candidates.item_ids()
        if rules is None:
            served = [
                Served(every[p], s, p)
                for p, s in zip(ranked.order[:k].tolist(), ranked.scores[:k].tolist())
            ]
        else:
            items = ItemAttributes(
                self.bundles.item_index[bundle.version],
                bundle.item_attribute_values,
                self.live_items.get(generation),
            )
            check_against(rules, items)
            ids = [every[p] for p in ranked.order.tolist()]
            now_ms = int(time.time() * 1000)
            served = apply_rules(ids, ranked.order, ranked.scores, rules, k, items, now_ms)
        STAGE_LATENCY.labels("ranking", "rules", arm).observe(time.perf_counter() - start)
        if not options.with_reasons:
            item = common_pb2.ScoredItem
            return Ranked([item(item_id=s.item_id, score=s.score) for s in served], bundle.version)
        start = time.perf_counter()
        out = self._with_reasons(bundle, user_id, candidates, idx, known, live, ranked, served)
        STAGE_LATENCY.labels("ranking", "reasons", arm).observe(time.perf_counter() - start)
        return Ranked(out, bundle.version)

    def _with_reasons(
        self,
        bundle: Bundle,
        user_id: str,
        candidates: Candidates,
        idx: np.ndarray,
        known: np.ndarray,
        live: RankingSignals,
        ranked: RankedList,
        served: list[Served],
    ) -> list[common_pb2.ScoredItem]:
        """The served items with their reasons (`shortlist.ranking.reasons`)."""
        signals = ranked.signals or user_signals(bundle, user_id, live)
        names = self.bundles.item_ids[bundle.version]
        contributions: dict[int, list[tuple]] = {}
        if ranked.features is not None and bundle.ranker is not None:
            row_of = {int(p): r for r, p in enumerate(ranked.where.tolist())}
            positions = [s.position for s in served if s.position in row_of]
            rows = ranked.features[[row_of[p] for p in positions]]
            contributions = dict(zip(positions, top_contributions(bundle.ranker, rows)))
        out = []
        for s in served:
            p = s.position
            sources = [] if p < 0 else candidates.sources_of(p, bool(known[p]))
            if "pinned" in s.rules:
                sources.append("pinned")
            liked = []
            if p >= 0 and known[p]:
                liked = because_liked(bundle.item_side, int(idx[p]), signals.recent_likes, names)
            reasons = reasons_message(sources, liked, contributions.get(p, ()), s.rules)
            out.append(common_pb2.ScoredItem(item_id=s.item_id, score=s.score, reasons=reasons))
        return out

    def _indices(self, bundle: Bundle, candidates: Candidates) -> np.ndarray:
        """The candidates as item indices of `bundle`; -1 (received over gRPC) or an index
        past the bundle's items (in process) for an item added since training, which the
        ranker keeps at its retrieval position (`shortlist.ranking.rank.ranked_list`)."""
        if candidates.items is not None:
            return candidates.items
        ids = candidates.item_ids()
        get = self.bundles.item_index[bundle.version].get
        return np.array([get(i, -1) for i in ids], np.int64)
