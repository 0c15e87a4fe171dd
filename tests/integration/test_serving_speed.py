"""Read-path speedups: the served (compressed, re-scored) index and per-call CPU accounting."""

from __future__ import annotations

import os

import numpy as np

from shortlist.retrieval.index import RefinedIndex, build_index, search, served_index
from shortlist.tools.loadtest import cpu_per_request, load_average, process_cpu_seconds


def test_served_index_keeps_the_recall_of_ivf_flat_and_returns_exact_scores():
    rng = np.random.default_rng(0)
    # Clustered item vectors: what IVF is for.
    centers = rng.normal(size=(64, 64)).astype(np.float32)
    items = centers[rng.integers(0, 64, 25_000)] + 0.4 * rng.normal(size=(25_000, 64))
    items = items.astype(np.float32)
    ivf = build_index(items, kind="ivf", nprobe=48)
    served = served_index(ivf, items, nprobe=48, refine=10)
    assert isinstance(served, RefinedIndex) and served.ntotal == len(items)
    recalls, ivf_recalls = [], []
    for _ in range(40):
        # A user-like query: the sum of a few liked items.
        query = items[rng.choice(len(items), 5, replace=False)].sum(axis=0)
        exclude = rng.choice(len(items), 20, replace=False)
        idx, scores = search(served, query, 100, exclude)
        exact = items @ query
        exact[exclude] = -np.inf
        truth = set(np.argsort(-exact)[:100].tolist())
        recalls.append(len(truth & set(idx.tolist())) / 100)
        ivf_idx, _ = search(ivf, query, 100, exclude)
        ivf_recalls.append(len(truth & set(ivf_idx.tolist())) / 100)
        assert not set(idx.tolist()) & set(exclude.tolist())
        np.testing.assert_allclose(scores, items[idx] @ query, rtol=1e-5, atol=1e-5)
        assert (np.diff(scores) <= 1e-6).all()  # best first
    # Same lists probed, 10x re-scored: the 4-bit codes lose little here.
    assert np.mean(recalls) >= np.mean(ivf_recalls) - 0.05, (recalls, ivf_recalls)


def test_served_index_skips_a_long_exclusion_list_of_the_best_items():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(64, 64)).astype(np.float32)
    items = centers[rng.integers(0, 64, 25_000)] + 0.4 * rng.normal(size=(25_000, 64))
    items = items.astype(np.float32)
    served = served_index(build_index(items, kind="ivf", nprobe=48), items, nprobe=48, refine=10)
    query = items[rng.choice(len(items), 5, replace=False)].sum(axis=0)
    exact = items @ query
    exclude = np.argsort(-exact)[:800]  # a heavy user: the 800 best items already seen
    idx, scores = search(served, query, 200, exclude)
    assert len(idx) == 200 and not set(idx.tolist()) & set(exclude.tolist())
    np.testing.assert_allclose(scores, exact[idx], rtol=1e-5, atol=1e-5)
    rest = exact.copy()
    rest[exclude] = -np.inf
    truth = set(np.argsort(-rest)[:200].tolist())
    assert len(truth & set(idx.tolist())) / 200 >= 0.8


def test_compressed_index_is_only_served_when_it_keeps_recall():
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(64, 64)).astype(np.float32)
    items = centers[rng.integers(0, 64, 25_000)] + 0.4 * rng.normal(size=(25_000, 64))
    items = items.astype(np.float32)
    ivf = build_index(items, kind="ivf", nprobe=48)
    queries = np.stack([items[rng.choice(len(items), 5)].sum(axis=0) for _ in range(50)])
    # Near-ties inside clusters: 2x re-scoring of 4-bit codes loses recall, so IVF-Flat stays.
    assert served_index(ivf, items, queries=queries, nprobe=48, refine=2) is ivf
    kept = served_index(ivf, items, queries=queries, nprobe=48, refine=50, tolerance=0.05)
    assert isinstance(kept, RefinedIndex)
    assert kept.recall["served"] >= kept.recall["ivf_flat"] - 0.05


def test_served_index_outlives_the_ivf_flat_index_and_shares_its_vectors():
    """The served form keeps its own quantizer, so the IVF-Flat index (and its float lists)
    can be freed; its re-scoring copy stands for the caller's item vectors."""
    import gc

    rng = np.random.default_rng(4)
    centers = rng.normal(size=(32, 32)).astype(np.float32)
    items = (centers[rng.integers(0, 32, 22_000)] + 0.4 * rng.normal(size=(22_000, 32))).astype(
        np.float32
    )
    ivf = build_index(items, kind="ivf", nprobe=24)
    served = served_index(ivf, items, nprobe=24, refine=10)
    query = items[:5].sum(axis=0)
    before = search(served, query, 50, np.arange(3))
    del ivf
    gc.collect()
    after = search(served, query, 50, np.arange(3))
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    view = served.vectors
    np.testing.assert_array_equal(view, items)
    assert not view.flags.writeable


def test_prepared_bundle_reads_item_vectors_from_the_served_index():
    from types import SimpleNamespace

    from shortlist.retrieval.retrieve import prepare_for_retrieval

    rng = np.random.default_rng(5)
    centers = rng.normal(size=(32, 32)).astype(np.float32)
    items = (centers[rng.integers(0, 32, 22_000)] + 0.4 * rng.normal(size=(22_000, 32))).astype(
        np.float32
    )
    users = np.stack([items[rng.choice(len(items), 5)].sum(axis=0) for _ in range(100)])
    bundle = SimpleNamespace(
        index=build_index(items, kind="ivf", nprobe=24), item_vectors=items, user_vectors=users
    )
    prepare_for_retrieval(bundle)
    assert isinstance(bundle.index, RefinedIndex)
    assert bundle.item_vectors is not items
    assert np.shares_memory(bundle.item_vectors, bundle.index.vectors)
    np.testing.assert_array_equal(bundle.item_vectors, items)


def test_small_or_exact_indexes_are_served_as_they_are():
    items = np.random.default_rng(1).normal(size=(500, 16)).astype(np.float32)
    flat = build_index(items, kind="flat")
    assert served_index(flat, items) is flat


def test_cpu_accounting_per_call():
    own = process_cpu_seconds(os.getpid())
    assert own is not None and own > 0
    assert process_cpu_seconds(2**22 + 12345) is None  # no such process
    out = cpu_per_request({"a": 1.0, "b": 2.0, "gone": None}, {"a": 1.5, "b": 2.1}, 100)
    assert out == {"a": 5.0, "b": 1.0, "total": 6.0}
    assert load_average() is None or len(load_average()) == 3
