"""Retrieval servicer: the retrieval stage (`LocalRetriever`) over gRPC."""

from __future__ import annotations

import grpc

from shortlist.config import Settings
from shortlist.rpc.inprocess import status_on_error
from shortlist.rpc.validation import require_id, require_ids, require_range
from shortlist.services.local import LocalRetriever
from shortlist.v1 import retrieval_pb2, retrieval_pb2_grpc


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServicer):
    def __init__(self, retriever: LocalRetriever, settings: Settings) -> None:
        self.retriever = retriever
        self.settings = settings

    def Retrieve(self, request, context):  # noqa: N802 (gRPC method name)
        s = self.settings
        with status_on_error(context):
            require_id(request.user_id, "user_id", s.max_id_length)
            require_range(request.n, "n", 1, s.max_candidates)
            require_ids(request.exclude_item_ids, "exclude_item_ids", s.max_events, s.max_id_length)
            found = self.retriever.retrieve(
                request.user_id, request.n, request.exclude_item_ids, request.model_version, None
            )
        candidates = found.scored()
        for m, sources in zip(candidates, found.sources):  # fused: each item's sources
            m.reasons.sources.extend(sources)
        return retrieval_pb2.RetrieveResponse(
            candidates=candidates,
            model_version=found.model_version,
            user_source=found.user_source,
            degraded=found.degraded,
            source=found.source,
        )

    def SimilarItems(self, request, context):  # noqa: N802
        s = self.settings
        with status_on_error(context):
            require_id(request.item_id, "item_id", s.max_id_length)
            require_range(request.k, "k", 1, s.max_k)
            return self.retriever.similar_items(request.item_id, request.k, None)


def register(servicer: RetrievalServicer):
    def _register(server: grpc.Server) -> None:
        retrieval_pb2_grpc.add_RetrievalServicer_to_server(servicer, server)

    return _register


SERVICE_NAMES = (retrieval_pb2.DESCRIPTOR.services_by_name["Retrieval"].full_name,)
