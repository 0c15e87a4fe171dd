"""The popularity list with exclusions: the first n of the whole order without the excluded
items, though only the head of the order is scanned."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shortlist.bundle.bundle import Bundle


def _bundle(popularity: np.ndarray) -> Bundle:
    bundle = Bundle.__new__(Bundle)  # only the popularity fields: no model needed
    bundle.popularity, bundle.recent_popularity = popularity, None
    bundle.__post_init__()
    return bundle


@settings(max_examples=200, deadline=None)
@given(
    likes=st.lists(st.integers(0, 5), min_size=1, max_size=40),
    data=st.data(),
)
def test_popular_items_equal_the_whole_order_without_the_excluded(likes, data):
    popularity = np.array(likes, np.float32)
    n_items = len(popularity)
    exclude = np.array(
        data.draw(st.lists(st.integers(0, n_items - 1), max_size=n_items, unique=True)), np.int64
    )
    n = data.draw(st.integers(1, n_items))
    order = np.argsort(-popularity, kind="stable")
    expected = [i for i in order.tolist() if i not in set(exclude.tolist())][:n]
    assert _bundle(popularity).popular_items(n, exclude).tolist() == expected
