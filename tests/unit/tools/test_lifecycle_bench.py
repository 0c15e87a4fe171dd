"""The lifecycle bench cuts MovieLens-100K in time into history, replay and test, and the
history reads back, with item and user attributes, through the event-log path training uses."""

from __future__ import annotations

from pathlib import Path

import pyarrow.csv as pacsv
import pytest

from shortlist.data.events import load_events
from shortlist.tools.bench.lifecycle import movielens_events

ML100K = Path(__file__).parents[3] / ".." / "shared" / "data" / "ml-100k"
pytestmark = pytest.mark.skipif(not (ML100K / "u.data").exists(), reason="no MovieLens-100K")


def test_history_replay_and_test_are_cut_in_time(tmp_path):
    slices = movielens_events(ML100K, tmp_path)
    history = pacsv.read_csv(slices.history)
    replay_times = slices.replay.column("timestamp").to_numpy()
    assert history.column("timestamp").to_numpy().max() < replay_times.min()
    assert (replay_times[1:] >= replay_times[:-1]).all()  # replayed in time order
    assert set(slices.replay.column("kind").to_pylist()) == {"like", "dislike", "view"}
    total = history.num_rows + slices.replay.num_rows + sum(len(v) for v in slices.test.values())
    assert 85_000 < total < 100_000  # test holds the likes of the last tenth only
    for user, items in slices.test.items():
        assert not items & slices.before_test.get(user, set())  # a rerating is not new


def test_the_history_trains_through_the_event_log_path(tmp_path):
    slices = movielens_events(ML100K, tmp_path)
    data = load_events([slices.history], slices.items, users=slices.users)
    assert data.positives.nnz > 40_000 and data.negatives.nnz > 10_000
    assert set(data.item_features) == {"year", "genre"}  # the title is free text: left out
    assert set(data.user_features) == {"age", "gender", "occupation"}  # so is the zip code
    assert data.user_features["gender"].shape == (data.n_users, 2)
