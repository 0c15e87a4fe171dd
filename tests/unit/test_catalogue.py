"""Unit (#25): the pure parts of the catalogue between trainings: FORGET on the wire, new
items merged into a shortlist, kept at their retrieval position by ranking, and folded in
from their likers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from shortlist.data.ids import IdMap
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.foldin import FoldInTargets
from shortlist.feedback.vectors import new_item_vectors
from shortlist.ranking import rank as rank_module
from shortlist.ranking.rank import rank_positions
from shortlist.retrieval.catalogue import CatalogueView, merge_new_items
from shortlist.v1 import common_pb2


def test_forget_travels_without_an_item_and_only_forget_may():
    forget = Event("e1", "u1", "", Kind.FORGET, 5)
    assert Event.decode(forget.encode()) == forget
    with pytest.raises(ValueError, match="lacks item_id"):
        Event.decode(Event("e2", "u1", "", Kind.LIKE, 5).encode())
    with pytest.raises(ValueError, match="item_id with kind FORGET"):
        Event.decode(Event("e3", "u1", "i", Kind.FORGET, 5).encode())
    assert Kind.FORGET == common_pb2.FEEDBACK_KIND_FORGET


def view_of(vectors: dict[str, list[float]]) -> CatalogueView:
    ids = tuple(vectors)
    return CatalogueView(
        generation=1, new_ids=ids, new_vectors=np.array([vectors[i] for i in ids], np.float32)
    )


def test_new_items_are_merged_by_score_and_exclusions_hold():
    items, scores = np.array([4, 2, 9]), np.array([3.0, 2.0, 1.0], np.float32)
    view = view_of({"x": [2.5, 0.0], "y": [0.5, 0.0], "seen": [9.0, 0.0]})
    idx, out = merge_new_items(items, scores, np.array([1.0, 0.0]), view, 4, 10, {"seen"})
    assert idx.tolist() == [4, 10, 2, 9]  # x (new item 0) is index 10 + 0
    np.testing.assert_allclose(out, [3.0, 2.5, 2.0, 1.0])
    same = merge_new_items(items, scores, np.ones(2), CatalogueView(), 4, 10)
    assert same[0] is items


def test_ranking_keeps_new_items_at_their_retrieval_position(monkeypatch):
    # features: the candidate's index; the scorer prefers higher indices
    monkeypatch.setattr(rank_module, "user_signals", lambda *a: None)
    monkeypatch.setattr(
        rank_module, "build_features", lambda c, *a: np.asarray(c, np.float32)[:, None]
    )
    items = IdMap([str(i) for i in range(10)])
    bundle = SimpleNamespace(items=items, item_side=None, scorer=lambda f: f[:, 0])
    candidates = np.array([1, 12, 5, 3, -1, 7])  # 12 (in process) and -1 (over gRPC): new
    live = SimpleNamespace(live_likes=np.zeros(6), history=[])
    order, scores = rank_positions(bundle, "u", candidates, np.zeros(6), live, None, 6)
    assert candidates[order].tolist() == [7, 12, 5, 3, -1, 1]
    assert scores.tolist() == [7, 7, 5, 3, 3, 1]  # a new item takes the score before it
    order, _ = rank_positions(bundle, "u", candidates, np.zeros(6), live, None, 3)
    assert candidates[order].tolist() == [7, 12, 5]
    # all new: retrieval order
    order, _ = rank_positions(bundle, "u", np.array([-1, 11]), np.zeros(2), live, None, 2)
    assert order.tolist() == [0, 1]


def test_new_item_vector_scores_its_likers_high_and_its_dislikers_low():
    rng = np.random.default_rng(0)
    user_vectors = rng.normal(size=(6, 4)).astype(np.float32)
    bundle = SimpleNamespace(
        users=IdMap([f"u{i}" for i in range(6)]),
        user_vectors=user_vectors,
        item_vectors=np.zeros((3, 4), np.float32),
        foldin=FoldInTargets(like=2.0, dislike=-1.0, prior_strength=0.1),
    )
    folded = np.array([0.0, 0.0, 0.0, 3.0], np.float32)
    feedback = {
        "new": {
            "u0": (int(Kind.LIKE), None),  # trained vector
            "u1": (int(Kind.LIKE), folded),  # folded-in vector wins
            "u2": (int(Kind.DISLIKE), None),
            "stranger": (int(Kind.LIKE), None),  # no vector at all: left out
        },
        "only-disliked": {"u3": (int(Kind.DISLIKE), None)},
    }
    out = new_item_vectors(bundle, feedback)
    assert set(out) == {"new"}  # no liker: no vector
    v = out["new"]
    assert v @ user_vectors[0] > v @ user_vectors[2]
    assert folded @ v > 1.0
