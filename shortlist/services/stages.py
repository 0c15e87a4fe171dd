"""The two stages as the gateway sees them: a `Retriever` and a `Ranker`.

Each has two adapters with one contract: in process (`shortlist.services.local`, the
co-located gateway) and over gRPC (`shortlist.services.remote`). Co-location is a choice of
adapter when the gateway is built, never a branch in the gateway. A stage that fails raises
`grpc.RpcError` with a status code in both adapters, so the gateway's fallbacks are one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from shortlist.feedback.stores.base import UserState
from shortlist.ranking.context import RequestContext
from shortlist.v1 import common_pb2


@dataclass
class Candidates:
    """A retrieval shortlist, best first, as the ranker takes it.

    Found in process it holds item indices of the bundle `model_version` names, their
    scores, that bundle's ids by index, and the user's state as retrieval read it (which the
    ranker reuses). Received over gRPC it holds the messages as they came: a remote ranker
    sends them on without decoding and encoding them again."""

    model_version: str
    user_source: str  # "trained", "folded_in" or "popularity"
    degraded: bool  # the user's live state could not be read
    items: np.ndarray | None = None  # item indices, in process
    scores: np.ndarray | None = None  # their scores, in process
    catalogue: Sequence[str] | None = None  # the bundle's item ids by index, in process
    # in process: ids of new items (not in the bundle), index len(catalogue) + j
    new_ids: Sequence[str] = ()
    messages: Sequence[common_pb2.ScoredItem] | None = None  # as received over gRPC
    state: UserState | None = None
    # the candidate source of the whole list (Reasons.sources): the retrieval model's name,
    # "precomputed" or "popularity"; per candidate, `sources` (in process, fused shortlists:
    # the sources that proposed each item) or the messages' reasons.sources win when set
    source: str = ""
    sources: Sequence[Sequence[str]] = ()

    def __len__(self) -> int:
        return len(self.messages) if self.messages is not None else len(self.items)

    def item_ids(self) -> list[str]:
        if self.messages is not None:
            return [m.item_id for m in self.messages]
        names = self.catalogue
        if self.new_ids:
            n, new = len(names), self.new_ids
            return [names[i] if i < n else new[i - n] for i in self.items.tolist()]
        return [names[i] for i in self.items.tolist()]

    def item_scores(self) -> np.ndarray:
        if self.messages is not None:
            return np.fromiter((m.score for m in self.messages), np.float32, len(self.messages))
        return np.asarray(self.scores, np.float32)

    def sources_of(self, position: int, known: bool) -> list[str]:
        """The sources that proposed the candidate at `position`; `known`: in the bundle
        (an item that is not was added since training: "new-item")."""
        if self.messages is not None and self.messages[position].reasons.sources:
            return list(self.messages[position].reasons.sources)
        if self.sources and self.sources[position]:
            return list(self.sources[position])
        if not known:
            return ["new-item"]
        return [self.source or "retrieval"]

    def scored(self, k: int | None = None) -> Sequence[common_pb2.ScoredItem]:
        """The first `k` (all by default) as reply messages."""
        if self.messages is not None:
            return self.messages[:k]
        item = common_pb2.ScoredItem
        ids = self.item_ids()[:k]
        return [item(item_id=i, score=v) for i, v in zip(ids, self.scores[:k].tolist())]


@dataclass(frozen=True)
class RankOptions:
    """What a request asks of ranking beyond the top k: reasons per item, rules (as the
    client sent them: a remote ranker forwards the message), and `keep_order` (a popularity
    list: rules and reasons only, no rescoring)."""

    with_reasons: bool = False
    rules: common_pb2.Rules | None = None
    keep_order: bool = False


NO_OPTIONS = RankOptions()


@dataclass
class Ranked:
    items: Sequence[common_pb2.ScoredItem]  # best first
    model_version: str


class Retriever(Protocol):
    def retrieve(
        self,
        user_id: str,
        n: int,
        exclude: Sequence[str],
        model_version: str,
        timeout: float | None,
    ) -> Candidates:
        """The user's top-`n` from the bundle `model_version` names ("" = the default)."""
        ...

    def similar_items(
        self, item_id: str, k: int, timeout: float | None
    ) -> common_pb2.SimilarItemsResponse: ...

    def use_bundle(self, bundle: object) -> None:
        """Hot swap (a no-op for a remote stage: its own process swaps)."""
        ...


class Ranker(Protocol):
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
        """The best `k` of `candidates` by the ranker of the bundle they came from, under
        `options`; `raw_context` is `context` as the client sent it (what a remote ranker
        parses)."""
        ...

    def use_bundle(self, bundle: object) -> None: ...
