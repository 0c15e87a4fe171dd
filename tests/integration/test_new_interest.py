"""The very next Recommend reflects what a user just liked (issue 26, decision 0030).

Planted topics: a user likes four items of a topic new to them; the likes go through the
feedback worker (fold-in) into the real store, then the real retrieve and rank give their
top 10. At least 3 of the 10 come from the new topic, while a user whose four new likes
stay in their topics keeps a top 10 from their topics."""

from __future__ import annotations

import numpy as np
import pytest

from shortlist.config import Settings
from shortlist.data.synthetic import generate
from shortlist.feedback.bus import InMemoryBus
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores.base import RankingSignals
from shortlist.feedback.vectors import NO_SHORT_TERM, SHORT_TERM
from shortlist.feedback.worker import FeedbackWorker
from shortlist.ranking.context import RequestContext
from shortlist.ranking.rank import rank
from shortlist.retrieval.retrieve import retrieve
from shortlist.training.pipeline import TrainConfig, train_bundle
from tests.conftest import unique

# the bundle's ranker is trained in the first test (LightGBM, DeepFM): minutes on a busy host
pytestmark = pytest.mark.timeout(600)
USERS = range(0, 300, 30)  # ten users


@pytest.fixture(scope="module")
def planted():
    data = generate(n_users=300, n_items=240, n_topics=6, likes_per_user=30, seed=5)
    bundle = train_bundle(data, TrainConfig(model="spectral", candidates=100))
    return data, bundle


def topics_of(data, items) -> np.ndarray:
    return data.item_features["topic"][np.asarray(items, np.int64)].astype(np.int64)


def top10_after_likes(data, bundle, store, user: int, topic_of_likes, short_term=SHORT_TERM):
    """Like the 4 most popular unseen items of a topic through the feedback worker, then
    the user's top 10 from retrieve + rank; returns (the top 10's topics, the liked items)."""
    user_id = bundle.users.id(user)
    seen = set(data.positives[user].indices) | set(data.negatives[user].indices)
    popular = bundle.popular_items(len(bundle.items))
    liked = [i for i in popular if topics_of(data, [i])[0] == topic_of_likes and i not in seen][:4]
    bus = InMemoryBus()
    worker = FeedbackWorker(bundle, store, bus.consumer(), Settings.from_env({}, backend="memory"))
    tag = unique("ev")
    events = [
        Event(f"{tag}-{n}", user_id, bundle.items.id(i), Kind.LIKE, 1_700_000_000_000 + n)
        for n, i in enumerate(liked)
    ]
    for event in events:  # one by one, as a user likes them
        bus.publisher().publish([event], 1.0)
        assert worker.run_once(1000) == 1
    state = store.user_state(user_id, bundle.version)
    assert state.vector is not None  # folded in
    found = retrieve(bundle, user_id, state, 100, short_term=short_term)
    signals = RankingSignals(state.history, np.zeros(len(found.items)), state.likes)
    top, _ = rank(
        bundle, user_id, found.items, found.scores, signals, RequestContext(), 10, short_term
    )
    assert not set(top) & set(liked)
    return topics_of(data, top), liked


def user_topics(data, user: int) -> tuple[int, np.ndarray]:
    counts = np.bincount(topics_of(data, data.positives[user].indices), minlength=6)
    return int(np.argmin(counts)), np.argsort(-counts)[:2]


def test_four_likes_in_a_new_topic_bring_it_into_the_top_10(planted, store):
    data, bundle = planted
    for user in USERS:
        new_topic, own = user_topics(data, user)
        assert new_topic not in own
        topics, _ = top10_after_likes(data, bundle, store, user, new_topic)
        assert (topics == new_topic).sum() >= 3, (user, new_topic, topics)


def test_without_the_short_term_part_the_new_topic_stays_out(planted, store):
    """What fold-in alone gave (the issue's report): the new likes diluted in the history."""
    data, bundle = planted
    shown = []
    for user in USERS:
        new_topic, _ = user_topics(data, user)
        topics, _ = top10_after_likes(data, bundle, store, user, new_topic, NO_SHORT_TERM)
        shown.append((topics == new_topic).sum())
    assert np.mean(shown) < 3


def test_likes_within_the_users_topics_keep_them(planted, store):
    data, bundle = planted
    for user in USERS:
        _, own = user_topics(data, user)
        topics, _ = top10_after_likes(data, bundle, store, user, own[0])
        assert np.isin(topics, own).sum() >= 8, (user, own, topics)
        assert (topics == own[0]).sum() >= 5, (user, own, topics)
