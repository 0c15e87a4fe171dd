"""Ranking servicer: the ranking stage (`LocalRanker`) over gRPC."""

from __future__ import annotations

import grpc

from shortlist.config import Settings
from shortlist.rpc.inprocess import status_on_error
from shortlist.rpc.validation import require_id, require_range
from shortlist.services.inputs import parsed_context
from shortlist.services.local import LocalRanker
from shortlist.services.stages import Candidates, RankOptions
from shortlist.v1 import ranking_pb2, ranking_pb2_grpc


class RankingServicer(ranking_pb2_grpc.RankingServicer):
    def __init__(self, ranker: LocalRanker, settings: Settings) -> None:
        self.ranker = ranker
        self.settings = settings

    def Rank(self, request, context):  # noqa: N802 (gRPC method name)
        s = self.settings
        with status_on_error(context):
            require_id(request.user_id, "user_id", s.max_id_length)
            require_range(request.k, "k", 1, s.max_k)
            ctx = parsed_context(request.context, s)
            found = Candidates(
                request.model_version, user_source="", degraded=False, messages=request.candidates
            )
            options = RankOptions(
                with_reasons=request.with_reasons,
                rules=request.rules if request.HasField("rules") else None,
                keep_order=request.keep_order,
            )
            ranked = self.ranker.rank(
                request.user_id, found, ctx, request.context, request.k, None, options
            )
        return ranking_pb2.RankResponse(items=ranked.items, model_version=ranked.model_version)


def register(servicer: RankingServicer):
    def _register(server: grpc.Server) -> None:
        ranking_pb2_grpc.add_RankingServicer_to_server(servicer, server)

    return _register


SERVICE_NAMES = (ranking_pb2.DESCRIPTOR.services_by_name["Ranking"].full_name,)
