"""The retrieval and ranking stages in other processes, called over gRPC (the four-service
topology); the same contract as `shortlist.services.local`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from shortlist.ranking.context import RequestContext
from shortlist.services.stages import NO_OPTIONS, Candidates, Ranked, RankOptions
from shortlist.v1 import (
    common_pb2,
    ranking_pb2,
    ranking_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)


class RemoteRetriever:
    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = retrieval_pb2_grpc.RetrievalStub(channel)

    def retrieve(
        self,
        user_id: str,
        n: int,
        exclude: Sequence[str],
        model_version: str,
        timeout: float | None,
    ) -> Candidates:
        reply = self.stub.Retrieve(
            retrieval_pb2.RetrieveRequest(
                user_id=user_id, n=n, exclude_item_ids=exclude, model_version=model_version
            ),
            timeout=timeout,
        )
        return Candidates(
            model_version=reply.model_version,
            user_source=reply.user_source,
            degraded=reply.degraded,
            messages=reply.candidates,
            source=reply.source,
        )

    def similar_items(
        self, item_id: str, k: int, timeout: float | None
    ) -> common_pb2.SimilarItemsResponse:
        request = common_pb2.SimilarItemsRequest(item_id=item_id, k=k)
        return self.stub.SimilarItems(request, timeout=timeout)

    def use_bundle(self, bundle: object) -> None:
        """The retrieval service swaps its own bundle."""


class RemoteRanker:
    """`pin_version` (A/B): the request names the candidates' bundle, which the ranking
    service must hold. Without it the ranking service ranks with its default bundle, so
    that while the services hot-swap one after the other a request is still ranked."""

    def __init__(self, channel: grpc.Channel, pin_version: bool = False) -> None:
        self.stub = ranking_pb2_grpc.RankingStub(channel)
        self.pin_version = pin_version

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
        scored = candidates.scored()
        if options.with_reasons and candidates.source:
            # the list's source travels on each candidate (where retrieval set none)
            for m in scored:
                if not m.reasons.sources:
                    m.reasons.sources.append(candidates.source)
        reply = self.stub.Rank(
            ranking_pb2.RankRequest(
                user_id=user_id,
                candidates=scored,
                context=raw_context,
                k=k,
                model_version=candidates.model_version if self.pin_version else "",
                with_reasons=options.with_reasons,
                rules=options.rules,
                keep_order=options.keep_order,
            ),
            timeout=timeout,
        )
        return Ranked(reply.items, reply.model_version)

    def use_bundle(self, bundle: object) -> None:
        """The ranking service swaps its own bundle."""
