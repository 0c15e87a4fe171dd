"""Feedback events: the domain form of `shortlist.v1.FeedbackEvent` and its wire encoding."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from shortlist.v1 import common_pb2


class Kind(enum.IntEnum):
    """Feedback kinds; values equal the proto enum's."""

    LIKE = common_pb2.FEEDBACK_KIND_LIKE
    DISLIKE = common_pb2.FEEDBACK_KIND_DISLIKE
    VIEW = common_pb2.FEEDBACK_KIND_VIEW
    SKIP = common_pb2.FEEDBACK_KIND_SKIP
    # internal only: the user's data deleted (FeedbackAdmin.DeleteUser); item_id is empty
    FORGET = common_pb2.FEEDBACK_KIND_FORGET


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: str
    item_id: str
    kind: Kind
    timestamp_ms: int

    def encode(self) -> bytes:
        """The record value written to the feedback topic (protobuf)."""
        return common_pb2.FeedbackEvent(
            event_id=self.event_id,
            user_id=self.user_id,
            item_id=self.item_id,
            kind=int(self.kind),
            timestamp_ms=self.timestamp_ms,
        ).SerializeToString()

    @classmethod
    def decode(cls, payload: bytes) -> Event:
        """Parse a topic record; ValueError when it is not a valid event."""
        msg = common_pb2.FeedbackEvent()
        try:
            msg.ParseFromString(payload)
        except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
            raise ValueError(f"undecodable feedback record: {exc}") from exc
        if not (msg.event_id and msg.user_id):
            raise ValueError("feedback record lacks event_id or user_id")
        try:
            kind = Kind(msg.kind)
        except ValueError as exc:
            raise ValueError(f"feedback record has unknown kind {msg.kind}") from exc
        # FORGET names a user, not an item; every other kind names an item
        if (kind == Kind.FORGET) == bool(msg.item_id):
            raise ValueError(
                "feedback record has an item_id with kind FORGET"
                if msg.item_id
                else "feedback record lacks item_id"
            )
        return cls(msg.event_id, msg.user_id, msg.item_id, kind, msg.timestamp_ms)


def scoped_event_id(key_id: str, client_event_id: str) -> str:
    """The id the worker dedups on: the client's id in the caller's namespace, so one client
    cannot pre-mark (and so drop) another's ids. `key_id` is a short non-secret caller id."""
    return f"{key_id}:{client_event_id}"


def derived_event_id(key_id: str, user_id: str, item_id: str, kind: int, timestamp_ms: int) -> str:
    """A deterministic id for an event the client sent without one: a retried batch with the
    same timestamps gets the same ids and is applied once. Fields are length-prefixed so
    that no two different tuples encode alike."""
    parts = (key_id, user_id, item_id, str(int(kind)), str(int(timestamp_ms)))
    text = "".join(f"{len(x)}:{x}" for x in parts)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()
