"""Free-form request context: recorded with training likes, a ranking feature online and
offline, carried through splits and bundles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from shortlist.bundle.files import load_bundle
from shortlist.data.splits import select_likes, temporal_leave_last_out
from shortlist.data.synthetic import generate
from shortlist.evaluation.two_stage import run_two_stage
from shortlist.ranking.context import CONTEXT_PRIOR, context_counts, context_lift, parse_context
from shortlist.ranking.features import build_features, feature_names
from shortlist.ranking.item_side import item_side
from shortlist.ranking.user_signals import UserSignals
from shortlist.training.pipeline import TrainConfig, holdout_mask


def _likes_with_moment():
    # 3 users x 4 items; item 0 liked at "commute" 3 times, item 1 at "home" twice, item 2
    # once at "commute" and once with no moment recorded, item 3 never liked.
    rows, cols = [0, 0, 1, 1, 2, 2, 0], [0, 1, 0, 1, 0, 2, 2]
    likes = sp.csr_matrix((np.ones(7, np.float32), (rows, cols)), shape=(3, 4))
    likes.sort_indices()
    moment_of = {(0, 0): "commute", (0, 1): "home", (1, 0): "commute", (1, 1): "home"}
    moment_of |= {(2, 0): "commute", (2, 2): "commute", (0, 2): ""}
    coo = likes.tocoo()
    values = np.array([moment_of[(r, c)] for r, c in zip(coo.row, coo.col)])
    return likes, values


def test_context_counts_and_lift_per_item_value():
    likes, values = _likes_with_moment()
    counts = context_counts(likes, {"moment": values})
    names, table = counts["moment"]
    assert names == ["commute", "home"]  # most frequent first
    commute, home = 0, 1
    assert table[commute].tolist() == [3, 0, 1, 0] and table[home].tolist() == [0, 2, 0, 0]
    lift = context_lift(table)
    overall = 4 / 6
    expected = math.log((3 + CONTEXT_PRIOR * overall) / (3 + CONTEXT_PRIOR)) - math.log(overall)
    assert lift[commute, 0] == pytest.approx(expected)
    assert lift[commute, 0] > 0 > lift[commute, 1] and lift[home, 1] > 0 > lift[home, 0]
    assert lift[:, 3] == pytest.approx([0.0, 0.0], abs=1e-6)  # no likes: no lean either way


@pytest.mark.parametrize("key", ["hour", "bad key", ""])
def test_context_keys_must_be_plain_and_not_a_known_one(key):
    likes, values = _likes_with_moment()
    with pytest.raises(ValueError, match="context key"):
        context_counts(likes, {key: values})


def test_request_value_selects_the_lift_row_and_unknown_values_carry_none():
    likes, values = _likes_with_moment()
    vecs = np.eye(4, dtype=np.float32)
    items = item_side(
        likes,
        vecs,
        np.ones(4),
        np.full(4, np.nan),
        np.zeros((4, 0)),
        [],
        counts=context_counts(likes, {"moment": values}),
    )
    user = UserSignals(activity=1, recent_likes=np.array([2]), recent_dislikes=np.array([]))
    col = feature_names([], [], ["moment"]).index("ctx_moment_item_lift")
    cand = np.array([0, 1])

    def lift_column(context: dict[str, str]) -> np.ndarray:
        return build_features(cand, np.ones(2), user, parse_context(context), items, np.zeros(2))[
            :, col
        ]

    at_commute = lift_column({"moment": "commute", "hour": "8"})
    assert at_commute[0] > 0 > at_commute[1]
    assert lift_column({"moment": "home"})[1] > 0
    assert np.isnan(lift_column({"moment": "gym"})).all()  # never recorded in training
    assert np.isnan(lift_column({})).all()
    assert parse_context({"moment": "home", "hour": "3"}).extra == {"moment": "home"}


def test_splits_and_holdouts_keep_each_likes_context():
    data = generate(n_users=200, n_items=150, seed=3)
    coo = data.positives.tocoo()
    truth = {(r, c): m for r, c, m in zip(coo.row, coo.col, data.context["moment"])}

    def check(part):
        pc = part.positives.tocsr().tocoo()
        got = part.context["moment"]
        assert len(got) == part.positives.nnz
        assert all(truth[(r, c)] == m for r, c, m in zip(pc.row, pc.col, got))

    split = temporal_leave_last_out(data, n_test=2, n_valid=2, min_train=3)
    for part in (split.train, split.valid, split.test, split.train_valid()):
        check(part)
    held = holdout_mask(data.positives, 0.3, np.random.default_rng(0))
    for part in (select_likes(data, ~held), select_likes(data, held)):
        check(part)
        assert part.timestamps is not None and len(part.timestamps) == part.positives.nnz


def test_bundle_keeps_the_context_tables(bundle_dir):
    bundle = load_bundle(bundle_dir)
    data = generate(n_users=300, n_items=200, n_topics=5, likes_per_user=20, seed=3)  # conftest
    names, table = bundle.context_counts["moment"]
    expected_names, expected = context_counts(data.positives, data.context)["moment"]
    assert names == expected_names and sorted(names) == ["commute", "home"]
    np.testing.assert_array_equal(table, expected)
    assert table.sum() == data.positives.nnz  # the built-in data records a moment per like
    assert "ctx_moment_item_lift" in bundle.ranker.feature_name()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_ranker_uses_the_moment_and_ranks_better_with_it():
    def two_stage(with_context: bool):
        data = generate(n_users=600, n_items=400, seed=5)
        if not with_context:
            data.context = {}
        split = temporal_leave_last_out(data, n_test=3, n_valid=3, min_train=5, name="planted")
        # without the like-order co-occurrence feature: on this data it carries much of what
        # the moment does (likes in a row share their moment); this is a test of the context,
        # so the weighted-MF source (seconds of fits per run, under a 120 s bound) stays out
        cfg = TrainConfig(candidates=100, sequence_window=0, ials=False)
        options = {"dim": 16, "epochs": 15, "seed": 0}
        return run_two_stage(split, "A", "mf-bpr", options, cfg, ranker_labels="valid")

    with_ctx, without = two_stage(True), two_stage(False)
    assert with_ctx.importance.get("ctx_moment_item_lift", 0) > 0.01
    assert "ctx_moment_item_lift" not in without.importance
    assert with_ctx.retrieval == without.retrieval  # same shortlists, only the ranker differs
    assert with_ctx.two_stage["ndcg@20"] > without.two_stage["ndcg@20"]
