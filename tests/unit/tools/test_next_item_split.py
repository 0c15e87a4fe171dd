"""The next-item bench's cut of each user's likes in time: training part, replayed likes
(oldest first), then the scored next likes; `valid` cuts before the test's next likes."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from shortlist.data.ids import IdMap
from shortlist.data.interactions import Interactions
from shortlist.tools.bench.next_item import split_next_items


def data() -> Interactions:
    # user 0 liked items 0..7 at times 80, 70, ..., 10 (item 7 first); user 1 two items
    rows = [0] * 8 + [1, 1]
    cols = list(range(8)) + [0, 1]
    times = [80 - 10 * i for i in range(8)] + [5, 6]
    pos = sp.csr_matrix((np.ones(10, np.float32), (rows, cols)), shape=(2, 8))
    t = sp.csr_matrix((np.asarray(times, np.float64), (rows, cols)), shape=(2, 8))
    return Interactions(
        users=IdMap(["u0", "u1"]),
        items=IdMap([f"i{i}" for i in range(8)]),
        positives=pos,
        timestamps=t.data.astype(np.int64),
    )


def test_test_split_replays_then_scores_the_latest_likes():
    train, users, replayed, nexts = split_next_items(data(), 2, 2, min_likes=5)
    assert users.tolist() == [0]  # user 1 has too few likes
    assert sorted(nexts[0].tolist()) == [0, 1]  # the two newest (times 80, 70)
    assert replayed[0].tolist() == [3, 2]  # then times 50, 60, oldest first
    assert sorted(train.positives[0].indices.tolist()) == [4, 5, 6, 7]
    assert train.positives[1].nnz == 2  # other users keep all their likes


def test_valid_split_drops_the_test_likes_and_cuts_before_them():
    train, users, replayed, nexts = split_next_items(data(), 2, 2, min_likes=4, split="valid")
    assert users.tolist() == [0]
    assert sorted(nexts[0].tolist()) == [2, 3]
    assert replayed[0].tolist() == [5, 4]
    assert sorted(train.positives[0].indices.tolist()) == [6, 7]
