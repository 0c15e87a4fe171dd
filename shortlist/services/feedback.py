"""FeedbackAdmin servicer: the consumer worker's counters over gRPC."""

from __future__ import annotations

import grpc

from shortlist.feedback.worker import FeedbackWorker
from shortlist.v1 import feedback_pb2, feedback_pb2_grpc


class FeedbackAdminServicer(feedback_pb2_grpc.FeedbackAdminServicer):
    def __init__(self, worker: FeedbackWorker) -> None:
        self.worker = worker

    def Status(self, request, context):  # noqa: N802 (gRPC method name)
        w = self.worker
        return feedback_pb2.FeedbackStatusResponse(
            events_applied=w.applied,
            duplicates_skipped=w.duplicates,
            batches_committed=w.batches,
            malformed_records=w.malformed,
            topic=w.settings.feedback_topic,
            group_id=w.settings.feedback_group,
        )


def register(servicer: FeedbackAdminServicer):
    def _register(server: grpc.Server) -> None:
        feedback_pb2_grpc.add_FeedbackAdminServicer_to_server(servicer, server)

    return _register


SERVICE_NAMES = (feedback_pb2.DESCRIPTOR.services_by_name["FeedbackAdmin"].full_name,)
