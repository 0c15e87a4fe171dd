"""Unit tests of the skeleton's model parts: data, MF-BPR, fold-in, index, features, bundle."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp

from shortlist.bundle.files import load_bundle
from shortlist.data.synthetic import generate
from shortlist.feedback.events import Kind
from shortlist.feedback.foldin import FoldInTargets, fold_in, linear_deltas
from shortlist.models.mf_bpr import MFBPR, MFBPRConfig
from shortlist.ranking.context import RequestContext, parse_context
from shortlist.ranking.features import BASE_FEATURES, build_features, feature_names
from shortlist.ranking.item_side import (
    SEQUENCE_DECAY,
    item_neighbours,
    item_side,
    recent_popularity,
    sequence_neighbours,
)
from shortlist.ranking.user_signals import UserSignals
from shortlist.retrieval.index import build_index, search
from shortlist.training.pipeline import holdout_split, label_kind, label_mask, recent_likes


def hit_rate(user_vecs, item_vecs, train, test_items) -> float:
    scores = user_vecs @ item_vecs.T
    scores[train.nonzero()] = -np.inf
    top = np.argsort(-scores, axis=1)[:, :10]
    return float(np.mean([t in top[u] for u, t in test_items.items()]))


def test_synthetic_data_is_reproducible_with_planted_topics():
    a, b = generate(n_users=50, n_items=40, seed=1), generate(n_users=50, n_items=40, seed=1)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != generate(n_users=50, n_items=40, seed=2).fingerprint()
    assert a.negatives.multiply(a.positives).nnz == 0  # never liked and disliked at once
    assert len(a.timestamps) == a.nnz


def test_mf_bpr_learns_planted_structure_better_than_popularity():
    data = generate(n_users=400, n_items=200, n_topics=5, seed=5)
    rng = np.random.default_rng(0)
    fit, held = holdout_split(data.positives, 0.1, rng)
    test_items = {u: held[u].indices[0] for u in range(data.n_users) if held[u].nnz}
    model = MFBPR(MFBPRConfig(dim=16, epochs=20))
    model.fit(data.with_positives(fit))
    learned = hit_rate(model.user_factors, model.item_factors, fit, test_items)
    pop = np.asarray(fit.sum(axis=0)).ravel()
    popularity = hit_rate(np.ones((data.n_users, 1)), pop[:, None], fit, test_items)
    assert learned > popularity + 0.05, (learned, popularity)


def test_holdout_split_partitions_the_likes():
    data = generate(n_users=100, n_items=80, seed=2)
    fit, held = holdout_split(data.positives, 0.3, np.random.default_rng(0))
    assert fit.nnz + held.nnz == data.nnz
    assert fit.multiply(held).nnz == 0


def test_recent_likes_keeps_the_newest():
    data = generate(n_users=20, n_items=60, likes_per_user=15, seed=4)
    recent = recent_likes(data.positives, data.timestamps, 3)
    u = 0
    row = slice(data.positives.indptr[u], data.positives.indptr[u + 1])
    newest = data.positives.indices[row][np.argsort(-data.timestamps[row])[:3]]
    assert sorted(recent[u].indices) == sorted(newest)


def test_fold_in_moves_toward_likes_and_away_from_dislikes():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 8))
    cluster = np.arange(50) % 5
    items = (centers[cluster] + 0.3 * rng.normal(size=(50, 8))).astype(np.float32)
    targets = FoldInTargets(like=1.0, dislike=0.0, prior_strength=0.1)
    v = fold_in(items, [1, 6, 11], [Kind.LIKE] * 3, targets)  # all in cluster 1
    top = np.argsort(-(items @ v))[:10]
    assert np.mean(cluster[top] == 1) >= 0.8
    with_dislike = fold_in(items, [1, 2, 3, 4], [Kind.LIKE] * 3 + [Kind.DISLIKE], targets)
    assert items[4] @ with_dislike < items[4] @ fold_in(items, [1, 2, 3], [Kind.LIKE] * 3, targets)
    prior = rng.normal(size=8).astype(np.float32)
    strong = FoldInTargets(like=1.0, dislike=0.0, prior_strength=1e6)
    np.testing.assert_allclose(fold_in(items, [1], [Kind.LIKE], strong, prior), prior, atol=1e-4)
    np.testing.assert_array_equal(fold_in(items, [1], [Kind.VIEW], targets, prior), prior)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_search_excludes_and_matches_exact(kind):
    rng = np.random.default_rng(1)
    items = rng.normal(size=(500, 16)).astype(np.float32)
    query = rng.normal(size=16).astype(np.float32)
    exact = np.argsort(-(items @ query))
    idx, scores = search(build_index(items, kind), query, 10, exclude=exact[:3])
    assert list(idx) == list(exact[3:13])
    assert np.all(np.diff(scores) <= 1e-6)


def test_parse_context_validates_known_keys():
    ctx = parse_context({"hour": "21", "day_of_week": "6", "device": "iOS", "app": "x"})
    assert (ctx.hour, ctx.day_of_week, ctx.device) == (21.0, 6.0, 0.0)
    assert ctx.extra == {"app": "x"}  # free-form, a feature only where training recorded it
    assert math.isnan(parse_context({}).hour)
    with pytest.raises(ValueError, match="'hour'"):
        parse_context({"hour": "25"})
    with pytest.raises(ValueError, match="'day_of_week'"):
        parse_context({"day_of_week": "monday"})


def test_build_features_columns():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(10, 4)).astype(np.float32)
    pop = np.arange(10, dtype=np.float32)
    # 4 users x 10 items of training likes: item 5 co-occurs with 1 (users 0, 1) and 2 (user 0)
    likes = sp.csr_matrix(
        (np.ones(7, np.float32), ([0, 0, 0, 1, 1, 2, 3], [1, 2, 5, 1, 5, 6, 3])), shape=(4, 10)
    )
    attrs = np.zeros((10, 2), np.float32)
    attrs[[1, 2, 5], 0] = 1.0
    attrs[6, 1] = 1.0
    items = item_side(likes, vecs, pop, np.full(10, np.nan), attrs, ["a", "b"], ["age"])
    user = UserSignals(
        activity=3,
        recent_likes=np.array([1, 2]),
        recent_dislikes=np.array([3]),
        attributes=np.array([0.5], np.float32),
    )
    x = build_features(
        np.array([5, 6]),
        np.array([0.9, 0.5]),
        user,
        RequestContext(hour=7),
        items,
        np.array([0, 3], np.float32),  # live likes add to the training ones
    )
    col = {n: i for i, n in enumerate(feature_names(["a", "b"], ["age"]))}
    assert x.shape == (2, len(BASE_FEATURES) + 3)
    assert list(x[:, col["retrieval_rank"]]) == [0, 1]
    assert x[1, col["retrieval_score_ratio"]] == pytest.approx(0.5 / 0.9)
    assert x[0, col["item_log_popularity"]] == pytest.approx(math.log1p(5))
    assert x[1, col["item_log_popularity"]] == pytest.approx(math.log1p(pop[6] + 3))
    assert math.isnan(x[0, col["item_log_recent_popularity"]])
    # cosine co-occurrence: |users(5) & users(1)| / sqrt(2 * 2) = 1, with item 2: 1 / sqrt(2)
    assert x[0, col["cooc_max_likes"]] == pytest.approx(1.0)
    assert x[0, col["cooc_second_likes"]] == pytest.approx(1 / math.sqrt(2))
    assert x[0, col["cooc_sum_likes"]] == pytest.approx(1 + 1 / math.sqrt(2))
    assert x[1, col["cooc_sum_likes"]] == 0 and x[1, col["cooc_max_dislikes"]] == 0
    assert x[0, col["sim_recent_likes"]] == pytest.approx(vecs[5] @ vecs[[1, 2]].mean(0), rel=1e-5)
    assert x[1, col["max_sim_dislikes"]] == pytest.approx(vecs[6] @ vecs[3], rel=1e-5)
    assert x[0, col["attr_affinity"]] == pytest.approx(1.0) and x[1, col["attr_affinity"]] == 0
    assert list(x[:, col["item_a"]]) == [1, 0] and list(x[:, col["user_age"]]) == [0.5, 0.5]
    assert x[0, col["ctx_hour"]] == 7 and math.isnan(x[0, col["ctx_device"]])
    assert math.isnan(x[0, col["seq_cooc_likes"]])  # built without a like order


def test_list_relative_features_compare_each_candidate_with_the_rest_of_its_shortlist():
    likes = sp.csr_matrix(
        (np.ones(7, np.float32), ([0, 0, 0, 1, 1, 2, 3], [1, 2, 5, 1, 5, 6, 3])), shape=(4, 10)
    )
    col = {n: i for i, n in enumerate(BASE_FEATURES)}
    cand = np.array([5, 6, 0, 3])

    def features(recent_likes: list[int], cand_sims: list[float]) -> np.ndarray:
        vecs = np.zeros((10, 2), np.float32)
        vecs[[1, 2], 0] = 1.0  # the likes' centroid is (1, 0): a candidate's similarity is x
        vecs[cand, 0] = cand_sims
        items = item_side(likes, vecs, np.ones(10), np.ones(10), np.zeros((10, 0)), [])
        user = UserSignals(3, np.array(recent_likes, np.int64), np.array([], np.int64))
        return build_features(cand, np.ones(4), user, RequestContext(), items, np.zeros(4))

    x = features([1, 2], [0.5, 2.0, -1.0, 1.0])
    # cooc_sum_likes: 5 scores 1 + 1/sqrt(2), 6, 0 and 3 never share a user with 1 or 2
    np.testing.assert_allclose(x[:, col["cooc_sum_likes_list_ratio"]], [1, 0, 0, 0])
    assert list(x[:, col["cooc_sum_likes_list_rank"]]) == [0, 1, 1, 1]  # ties share a place
    np.testing.assert_allclose(x[:, col["sim_recent_likes_list_ratio"]], [0.25, 1, -0.5, 0.5])
    assert list(x[:, col["sim_recent_likes_list_rank"]]) == [2, 0, 3, 1]
    # a largest value that is not positive gives no ratio; the places still hold
    y = features([1, 2], [-0.5, -2.0, -0.25, -1.0])
    assert np.isnan(y[:, col["sim_recent_likes_list_ratio"]]).all()
    assert list(y[:, col["sim_recent_likes_list_rank"]]) == [1, 3, 0, 2]
    # no likes: the signals are missing, and so is where they stand in the list
    none = features([], [0.5, 2.0, -1.0, 1.0])
    for name in ("cooc_sum_likes", "sim_recent_likes", "cooc_max_likes", "seq_cooc_likes"):
        assert np.isnan(none[:, col[f"{name}_list_ratio"]]).all()
        assert np.isnan(none[:, col[f"{name}_list_rank"]]).all()


def test_sequence_neighbours_count_likes_near_each_other_in_a_users_order():
    # user 0 likes items 3, 0, 2 in that order (order values 5, 7, 9); user 1 likes 2 then 1
    likes = sp.csr_matrix(
        (np.ones(5, np.float32), ([0, 0, 0, 1, 1], [0, 2, 3, 1, 2])), shape=(2, 4)
    )
    order = np.array([7, 9, 5, 2, 1])  # aligned with likes.data: (0,0) (0,2) (0,3) (1,1) (1,2)
    assert sequence_neighbours(likes, None) is None
    assert sequence_neighbours(likes, order, window=0) is None
    one = sequence_neighbours(likes, order, window=1).toarray()
    # pairs one place apart: 3-0 and 0-2 (user 0), 1-2 (user 1); rows sum to 1
    want = np.zeros((4, 4))
    for a, b in ((3, 0), (0, 2), (2, 1)):
        want[a, b] = want[b, a] = 1
    np.testing.assert_allclose(one, want / want.sum(1, keepdims=True))
    two = sequence_neighbours(likes, order, window=2).toarray()
    assert two[3, 2] == pytest.approx(0.5 / 1.5)  # 3 and 2 are two places apart
    assert two[3, 0] == pytest.approx(1 / 1.5)
    # the feature: each recent like's row at the candidates, newest weighted most
    items = item_side(
        likes,
        np.eye(4, dtype=np.float32),
        np.ones(4),
        np.ones(4),
        np.zeros((4, 0)),
        [],
        sequence=sequence_neighbours(likes, order, window=2),
    )
    user = UserSignals(activity=3, recent_likes=np.array([2, 0]), recent_dislikes=np.array([]))
    x = build_features(
        np.array([1, 3]), np.array([1.0, 0.5]), user, RequestContext(), items, np.zeros(2)
    )
    seq = x[:, BASE_FEATURES.index("seq_cooc_likes")]
    np.testing.assert_allclose(seq, two[2, [1, 3]] + SEQUENCE_DECAY * two[0, [1, 3]], rtol=1e-6)


def test_recent_popularity_decays_with_age():
    likes = sp.csr_matrix((np.ones(3, np.float32), ([0, 0, 1], [0, 1, 1])), shape=(2, 2))
    day = 86400
    pop = recent_popularity(likes, np.array([0, 30 * day, 30 * day]), half_life_days=30)
    assert pop == pytest.approx([0.5, 2.0])


def test_bundle_round_trip(bundle_dir, bundle):
    again = load_bundle(bundle_dir)
    assert again.version == bundle.version
    assert again.manifest["dataset_fingerprint"] == bundle.manifest["dataset_fingerprint"]
    np.testing.assert_array_equal(again.item_vectors, bundle.item_vectors)
    assert again.index.ntotal == len(bundle.items)
    assert again.ranker is not None and again.ranker.num_trees() > 0
    metrics = bundle.manifest["metrics"]
    assert metrics["ranker_ndcg@20"] > metrics["retrieval_order_ndcg@20"]


def test_a_ranker_trained_on_other_features_is_refused(bundle_dir, tmp_path):
    import shutil

    from shortlist.bundle.files import resolve_bundle_dir
    from shortlist.bundle.integrity import write_manifest

    copy = tmp_path / "bundle"
    shutil.copytree(resolve_bundle_dir(bundle_dir), copy)
    ranker = copy / "ranker.txt"
    # as a bundle trained when the features had one more column would read
    text = ranker.read_text()
    assert "feature_names=retrieval_rank " in text
    ranker.write_text(text.replace("feature_names=retrieval_rank ", "feature_names=old_one ", 1))
    manifest = json.loads((copy / "manifest.json").read_text())
    write_manifest(copy, manifest, None)  # its digests as that bundle's own training wrote them
    with pytest.raises(ValueError, match="retrain the bundle"):
        load_bundle(copy)


def test_linear_fold_in_of_a_new_user_equals_the_trained_vector(tmp_path):
    """Spectral bundles fold users in exactly: likes alone give the trained user vector."""
    from shortlist.bundle.files import save_bundle
    from shortlist.feedback.vectors import folded_vectors
    from shortlist.models.spectral import SpectralCF, SpectralConfig
    from shortlist.training.pipeline import retrieval_bundle

    data = generate(n_users=200, n_items=120, n_topics=4, likes_per_user=10, seed=5)
    model = SpectralCF(SpectralConfig(rank=32, ideal_rank=8))
    model.fit(data)
    bundle = load_bundle(save_bundle(retrieval_bundle(data, model), tmp_path))
    assert bundle.item_encoder is not None
    liked = data.positives[3].indices
    history = [(bundle.items.id(int(i)), Kind.LIKE) for i in liked]
    vec = folded_vectors(bundle, {"someone-new": history})["someone-new"]
    np.testing.assert_allclose(vec, model.user_factors[3], rtol=1e-4, atol=1e-5)
    # A dislike pushes the vector away from that item's encoder row.
    with_dislike = folded_vectors(bundle, {"n": [*history, (bundle.items.id(0), Kind.DISLIKE)]})
    assert with_dislike["n"] @ bundle.item_vectors[0] < vec @ bundle.item_vectors[0]


def test_linear_deltas_sum_weighted_encoder_rows_per_user_in_float64():
    rng = np.random.default_rng(4)
    encoder = rng.normal(size=(50, 6)).astype(np.float32)
    rows = np.array([0, 0, 0, 2, 2])
    items = np.array([7, 31, 7, 49, 3])  # item 7 twice for user 0; user 1 has nothing
    weights = np.array([1.0, -0.5, 2.0, 1.0, 0.25])
    want = np.zeros((3, 6))
    for r, i, w in zip(rows, items, weights):
        want[r] += w * encoder[i].astype(np.float64)
    got = linear_deltas(encoder, rows, items, weights, 3)
    assert got.dtype == np.float64 and got.shape == (3, 6)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_item_neighbours_keep_each_rows_largest_exact_cosines():
    likes = sp.random(300, 40, density=0.2, format="csr", random_state=3)
    likes.data[:] = 1.0
    x = likes.toarray()
    counts = x.sum(axis=0)
    exact = (x.T @ x) / np.sqrt(np.outer(np.maximum(counts, 1), np.maximum(counts, 1)))
    full = item_neighbours(likes).toarray()
    np.testing.assert_allclose(full, exact, rtol=1e-5)
    cut = item_neighbours(likes, keep=5)
    assert (np.diff(cut.indptr) == 5).all()
    for row in range(40):
        kept = cut.indices[cut.indptr[row] : cut.indptr[row + 1]]
        np.testing.assert_allclose(np.sort(full[row, kept]), np.sort(exact[row])[-5:], rtol=1e-5)
        np.testing.assert_allclose(cut[row].toarray().ravel()[kept], exact[row, kept], rtol=1e-5)


def test_rows_kept_whole_on_small_catalogues_and_bounded_on_large_ones():
    from shortlist.ranking.item_side import COOC_ENTRIES, COOC_NEIGHBOURS, neighbours_kept

    assert neighbours_kept(1682) >= 1682  # MovieLens-100K: exact cosines
    assert neighbours_kept(40_981) == COOC_NEIGHBOURS  # Gowalla: 256 a row
    assert neighbours_kept(10_000) * 10_000 <= COOC_ENTRIES


def test_dense_and_sparse_cooccurrence_give_the_same_features():
    from dataclasses import replace

    from shortlist.ranking.item_side import COOC_DENSE_MAX_ITEMS

    rng = np.random.default_rng(4)
    likes = sp.random(200, 60, density=0.15, format="csr", random_state=4)
    likes.data[:] = 1.0
    vecs = rng.normal(size=(60, 8)).astype(np.float32)
    order = rng.permutation(likes.nnz)  # an order of each user's likes
    sequence = sequence_neighbours(likes, order, window=3)
    dense = item_side(
        likes, vecs, np.ones(60), np.ones(60), np.zeros((60, 0)), [], sequence=sequence
    )
    assert COOC_DENSE_MAX_ITEMS >= 60 and dense.cooc_dense is not None
    assert dense.sequence_dense is not None
    # the lookups larger catalogues take
    sparse = replace(dense, cooc_dense=None, sequence_dense=None)
    user = UserSignals(2, recent_likes=np.array([3, 7, 11, 40]), recent_dislikes=np.array([5, 9]))
    candidates = rng.choice(60, 30, replace=False)
    args = (candidates, np.linspace(1, 0.1, 30), user, RequestContext())
    got = build_features(*args, dense, np.zeros(30, np.float32))
    want = build_features(*args, sparse, np.zeros(30, np.float32))
    np.testing.assert_array_equal(got, want)
    for name in ("cooc_sum_likes", "seq_cooc_likes"):  # there to compare
        assert np.count_nonzero(got[:, BASE_FEATURES.index(name)]) > 5, name


def test_ranker_labels_are_each_users_latest_likes_where_likes_are_ordered():
    data = generate(n_users=80, n_items=60, seed=4)
    rng = np.random.default_rng(0)
    assert label_kind(data, "auto") == "latest"  # the built-in data has times
    held = label_mask(data, "latest", 0.2, rng)
    pos, times = data.positives, np.asarray(data.timestamps)
    checked = 0
    for u in range(data.n_users):
        lo, hi = pos.indptr[u], pos.indptr[u + 1]
        h = held[lo:hi]
        if h.any() and (~h).any():
            assert times[lo:hi][h].min() >= times[lo:hi][~h].max()
            checked += 1
    assert checked > 60
    unordered = data.with_positives(data.positives)
    unordered.timestamps, unordered.sequence = None, None
    assert label_kind(unordered, "auto") == "random"
    with pytest.raises(ValueError, match="ordered likes"):
        label_kind(unordered, "latest")
    with pytest.raises(ValueError, match="auto, latest or random"):
        label_kind(data, "newest")
    random_held = label_mask(data, "random", 0.2, rng)
    assert 0.1 < random_held.mean() < 0.3 and (random_held != held).any()
