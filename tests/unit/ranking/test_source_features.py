"""The ranker's per-source features: the same values offline (the ranker's lists) and served
(retrieval's fused shortlist, through the messages a remote ranker gets), and a sentinel
where a source did not propose the item."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import scipy.sparse as sp

from shortlist.data.synthetic import generate
from shortlist.ranking.context import RequestContext
from shortlist.ranking.features import (
    SOURCE_FEATURES,
    SOURCE_RANK_MISSING,
    build_features,
    feature_names,
)
from shortlist.ranking.user_signals import UserSignals
from shortlist.retrieval.fusion import FusionConfig, fuse, item_item_scores
from shortlist.retrieval.precomputed import PrecomputedShortlists, pack_ranks
from shortlist.retrieval.retrieve import Shortlist, fused_shortlist
from shortlist.services.stages import Candidates, decode_ranks
from shortlist.training.pipeline import TrainConfig, fit_item_side, fused_triple, ranking_lists
from shortlist.v1 import ranking_pb2

COLUMNS = [feature_names([], []).index(n) for n in [*SOURCE_FEATURES, "src_count"]]
DEPTH, N = 12, 16


def _popular(popularity: np.ndarray, n: int, exclude: np.ndarray) -> np.ndarray:
    order = np.lexsort((np.arange(len(popularity)), -popularity))
    return order[~np.isin(order, exclude)][:n]


def test_offline_and_served_source_features_are_equal_for_the_same_candidates():
    data = generate(n_users=40, n_items=60, n_topics=3, likes_per_user=8, seed=5)
    rng = np.random.default_rng(1)
    table = sp.random(60, 60, density=0.2, random_state=2, dtype=np.float32).tocsr()
    vectors = rng.normal(size=(60, 4)).astype(np.float32)
    popularity = np.asarray(data.positives.sum(axis=0)).ravel()
    cfg = FusionConfig({"spectral": 1.0, "item-item": 0.5, "popularity": 0.25}, 10.0, "spectral")
    cfg = FusionConfig(cfg.weights, cfg.k, cfg.primary, DEPTH)
    u = 3
    history = data.positives[u].indices.astype(np.int64)
    exclude = ((data.positives + data.negatives)[u] > 0).tocsr().indices.astype(np.int64)
    vector_top = rng.permutation(np.setdiff1d(np.arange(60), exclude))[:DEPTH]

    # offline: each source's list, fused, into the ranker's lists (shortlist.training)
    ii = item_item_scores(table, history, exclude, DEPTH)[0]
    lists = {
        "spectral": vector_top[None],
        "item-item": np.pad(ii, (0, DEPTH - len(ii)), constant_values=-1)[None],
        "popularity": _popular(popularity, DEPTH, exclude)[None],
    }
    triple = fused_triple(fuse(lists, cfg, N), cfg)
    labels = sp.csr_matrix((np.ones(1), ([u], [int(vector_top[0])])), shape=data.positives.shape)
    offline = ranking_lists(
        data,
        np.zeros((data.n_users, 4), np.float32),
        vectors,
        labels,
        None,
        TrainConfig(candidates=N),
        users=np.array([u]),
        keep_empty=True,
        candidates=triple,
        item_item=table,
    )
    cand, x_offline, _ = offline[u]

    # served: retrieval's fusion at request time, sent as messages, read by the ranker
    bundle = SimpleNamespace(
        fusion=cfg,
        item_item=table,
        popular_items=lambda n, ex: _popular(popularity, n, ex),
    )
    found = Shortlist(vector_top, np.linspace(1, 0, DEPTH, dtype=np.float32), "trained")
    served = fused_shortlist(bundle, found, history, exclude, N)
    names = [str(i) for i in range(60)]
    sent = Candidates("v", "trained", False, served.items, served.scores, names)
    sent.source_ranks = served.source_ranks
    wire = ranking_pb2.RankRequest(candidates=sent.scored(), source_ranks=sent.encoded_ranks())
    request = ranking_pb2.RankRequest.FromString(wire.SerializeToString())
    ranks = decode_ranks(request.source_ranks, len(request.candidates))
    items = fit_item_side(data, vectors, item_item=table)
    user = UserSignals(activity=1.0, recent_likes=history[:3], recent_dislikes=np.array([]))
    x_served = build_features(
        served.items, served.scores, user, RequestContext(), items, np.zeros(len(cand)), ranks
    )

    np.testing.assert_array_equal(cand, served.items)
    np.testing.assert_array_equal(x_offline[:, COLUMNS], x_served[:, COLUMNS])
    assert (x_served[:, COLUMNS[-1]] >= 1).all()  # every fused item came from a source
    assert (x_served[:, COLUMNS[:-1]] == SOURCE_RANK_MISSING).any()  # and some not from all
    # in process (a co-located ranker) the ranks are those sent over gRPC
    np.testing.assert_array_equal(sent.source_ranks, ranks)
    assert decode_ranks([], 3) is None and decode_ranks([1, 2], 3) is None  # none, or torn


def test_a_source_that_did_not_propose_the_item_gives_the_sentinel():
    data = generate(n_users=20, n_items=10, n_topics=2, likes_per_user=4, seed=1)
    items = fit_item_side(data, np.eye(10, 3, dtype=np.float32))
    user = UserSignals(activity=1.0, recent_likes=np.array([0]), recent_dislikes=np.array([]))
    ranks = np.array([[0, -1, -1], [4, 2, -1]], np.int16)
    x = build_features(
        np.array([1, 2]), np.ones(2), user, RequestContext(), items, np.zeros(2), ranks
    )
    vectors_rank, item_item_rank, popularity_rank, count = x[:, COLUMNS].T
    assert vectors_rank.tolist() == [0, 4]
    assert item_item_rank.tolist() == [SOURCE_RANK_MISSING, 2]
    assert popularity_rank.tolist() == [SOURCE_RANK_MISSING] * 2
    assert count.tolist() == [1, 2]
    plain = build_features(np.array([1, 2]), np.ones(2), user, RequestContext(), items, np.zeros(2))
    assert np.isnan(plain[:, COLUMNS]).all()  # not a fused shortlist: nothing known


def test_precomputed_rows_give_back_the_ranks_of_the_items_they_serve():
    ranks = np.array([[[0, -1, 3], [1, 0, -1], [-1, 1, 0]]], np.int16)
    for depth in (200, 300):  # a byte each under 255, int16 above
        packed = pack_ranks(ranks, depth)
        assert packed.dtype == (np.uint8 if depth < 255 else np.int16)
        pre = PrecomputedShortlists(
            np.array([[7, 8, 9]], np.int32), np.ones((1, 3), np.float32), source_ranks=packed
        )
        picked = pre.positions(0, 2, np.array([8]))  # item 8 excluded live
        assert pre.items[0, picked].tolist() == [7, 9]
        assert pre.ranks_at(0, picked).tolist() == [[0, -1, 3], [-1, 1, 0]]
