"""The loop closed over the real services: feedback acknowledged by the gateway is archived,
and a user deleted through FeedbackAdmin is absent from the next training's data, in the
archive and in the initial history alike."""

from __future__ import annotations

import dataclasses

import pytest

from shortlist.client import Client, Feedback
from shortlist.data.events import load_events
from shortlist.feedback.archive import Archiver
from shortlist.feedback.bus import KafkaEventConsumer
from shortlist.rpc.server import client_channel
from shortlist.v1 import feedback_pb2, feedback_pb2_grpc
from tests.conftest import eventually, unique


@pytest.fixture
def archiver(settings, stack, tmp_path):
    archiver = Archiver(
        KafkaEventConsumer(settings.kafka_bootstrap, settings.feedback_topic, unique("archive")),
        dataclasses.replace(settings, archive_flush_ms=200),  # a file within the test's wait
        root=tmp_path / "archive",
    )
    archiver.start()
    yield archiver
    if archiver.alive():
        archiver.stop()


def test_a_deleted_user_is_absent_from_the_next_training(stack, bundle, archiver, tmp_path):
    kept, deleted = "lifecycle-kept", "lifecycle-deleted"
    items = bundle.items.to_list()
    history = tmp_path / "history.csv"
    history.write_text(
        "user_id,item_id,kind,timestamp\n"
        + "".join(
            f"{u},{i},like,{1_600_000_000 + n}\n"
            for n, (u, i) in enumerate([(kept, items[0]), (deleted, items[1]), (deleted, items[2])])
        )
    )
    with (
        Client(stack.gateway_target, timeout_s=10) as client,
        client_channel(stack.target("feedback")) as admin_channel,
    ):
        admin = feedback_pb2_grpc.FeedbackAdminStub(admin_channel)
        sent = client.send_feedback(
            *(Feedback(u, i, "like") for u in (kept, deleted) for i in items[3:6])
        )
        tombstone = admin.DeleteUser(feedback_pb2.DeleteUserRequest(user_id=deleted), timeout=10)
    acknowledged = len(sent) + 1
    eventually(lambda: archiver.archived >= acknowledged, timeout_s=30)
    archiver.stop()

    data = load_events([tmp_path / "archive", history])
    assert kept in data.users
    assert deleted not in data.users  # gone from the archive's events and from the history
    liked = set(data.items.ids(data.positives[data.users.index(kept)].indices))
    assert liked == {items[0], *items[3:6]}
    assert tombstone.event_id not in sent
