"""FeedbackAdmin servicer: the consumer worker's counters, and the catalogue and users
between trainings (docs/decisions/0023-catalogue-between-trainings.md).

Internal like the other non-gateway services: `start_server` puts the internal-token
interceptor (`shortlist.rpc.security.server_interceptors`) in front of every method here.
Catalogue changes are written to the state store at once (retrieval serves them from the
next request); DeleteUser goes through the feedback topic as a FORGET event, so the worker
applies it in order with the user's other events, exactly once, and the archive keeps it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import grpc

from shortlist.config import Settings
from shortlist.feedback.bus.base import BusUnavailable, EventPublisher
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores.base import StoreUnavailable
from shortlist.feedback.worker import FeedbackWorker
from shortlist.rpc.validation import InvalidInput, abort_invalid, require_id, require_ids
from shortlist.v1 import feedback_pb2, feedback_pb2_grpc

log = logging.getLogger(__name__)


class FeedbackAdminServicer(feedback_pb2_grpc.FeedbackAdminServicer):
    def __init__(
        self, worker: FeedbackWorker, publisher: EventPublisher, settings: Settings
    ) -> None:
        """`publisher`: the feedback topic, for DeleteUser's FORGET event."""
        self.worker = worker
        self.store = worker.store
        self.publisher = publisher
        self.settings = settings

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

    def _ids(self, request, context) -> list[str]:
        s = self.settings
        try:
            if not request.item_ids:
                raise InvalidInput("item_ids must not be empty")
            return require_ids(request.item_ids, "item_ids", s.max_events, s.max_id_length)
        except InvalidInput as exc:
            abort_invalid(context, exc)

    def _changed(self, change, items, context) -> feedback_pb2.CatalogueChangeResponse:
        try:
            n = change(items)
        except StoreUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"catalogue not changed: {exc}")
        return feedback_pb2.CatalogueChangeResponse(changed=n)

    def UpsertItems(self, request, context):  # noqa: N802
        s = self.settings
        items: dict[str, dict[str, str]] = {}
        try:
            count = len(request.items)
            if not 1 <= count <= s.max_events:
                raise InvalidInput(f"items (count) must be in 1..{s.max_events}, got {count}")
            for n, item in enumerate(request.items):
                field = f"items[{n}]"
                require_id(item.item_id, f"{field}.item_id", s.max_id_length)
                if len(item.attributes) > s.max_context_entries:
                    raise InvalidInput(
                        f"{field}.attributes has {len(item.attributes)} entries, "
                        f"at most {s.max_context_entries} allowed"
                    )
                for key, value in item.attributes.items():
                    if not key or len(key) > s.max_id_length or len(value) > s.max_id_length:
                        raise InvalidInput(
                            f"{field}.attributes key/value {key[:32]!r} is empty or longer "
                            f"than {s.max_id_length} characters"
                        )
                items[item.item_id] = dict(item.attributes)  # the last of a repeated id wins
        except InvalidInput as exc:
            abort_invalid(context, exc)
        return self._changed(self.store.upsert_items, items, context)

    def HideItems(self, request, context):  # noqa: N802
        return self._changed(self.store.hide_items, self._ids(request, context), context)

    def ShowItems(self, request, context):  # noqa: N802
        return self._changed(self.store.show_items, self._ids(request, context), context)

    def RemoveItems(self, request, context):  # noqa: N802
        return self._changed(self.store.remove_items, self._ids(request, context), context)

    def DeleteUser(self, request, context):  # noqa: N802
        """Acknowledged only once the broker has the FORGET event (acks like SendFeedback);
        the worker then deletes the user's live state."""
        s = self.settings
        try:
            require_id(request.user_id, "user_id", s.max_id_length)
        except InvalidInput as exc:
            abort_invalid(context, exc)
        event = Event(uuid.uuid4().hex, request.user_id, "", Kind.FORGET, int(time.time() * 1000))
        remaining = context.time_remaining()
        timeout = s.publish_timeout_ms / 1000
        if remaining is not None:
            timeout = max(0.001, min(timeout, remaining - 0.002))
        try:
            self.publisher.publish([event], timeout)
        except BusUnavailable as exc:
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"user not deleted, the event bus is unavailable: {exc}",
            )
        return feedback_pb2.DeleteUserResponse(event_id=event.event_id)


class ConsumerReadiness:
    """The feedback service's readiness follows its consumer: its services report
    NOT_SERVING while the worker has held records for more than `stuck_s` without
    committing them (the store away, a fault of the worker), SERVING again once it moves.
    The server as a whole ("", the liveness probe's) stays SERVING: a restart would not
    bring the store back. Checked every `interval_s` on a thread of its own."""

    def __init__(self, worker: FeedbackWorker, server, stuck_s: float, interval_s: float = 1.0):
        self.worker = worker
        self.server = server
        self.stuck_s = stuck_s
        self.interval_s = interval_s
        self.ready = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="consumer-readiness", daemon=True)

    def start(self) -> ConsumerReadiness:
        self._thread.start()
        return self

    def check(self) -> bool:
        stuck = self.worker.stuck_for()
        ready = stuck <= self.stuck_s
        if ready != self.ready:
            self.ready = ready
            self.server.set_serving(ready, self.server.service_names)
            if ready:
                log.info("feedback consumer moving again: ready")
            else:
                log.error("feedback consumer stuck for %.0f s: not ready", stuck)
        return ready

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def register(servicer: FeedbackAdminServicer):
    def _register(server: grpc.Server) -> None:
        feedback_pb2_grpc.add_FeedbackAdminServicer_to_server(servicer, server)

    return _register


SERVICE_NAMES = (feedback_pb2.DESCRIPTOR.services_by_name["FeedbackAdmin"].full_name,)
