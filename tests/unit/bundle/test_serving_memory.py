"""Per-user bundle data is memory-mapped, and a linear model's user vectors are computed per
request from the user's like weights and the item encoder, with the same answers as the
stored vectors (docs/decisions/0041-serving-memory.md)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from shortlist.bundle.files import load_bundle, save_bundle
from shortlist.data.ids import IdMap
from shortlist.data.mapped import (
    EncodedVectors,
    MappedIds,
    is_mapped,
    load_csr,
    save_csr,
    save_ids,
)
from shortlist.data.synthetic import generate
from shortlist.feedback.stores.base import UserState
from shortlist.models.spectral import SpectralCF, SpectralConfig
from shortlist.retrieval.index import search
from shortlist.retrieval.precomputed import PrecomputedShortlists
from shortlist.retrieval.retrieve import retrieve
from shortlist.training.pipeline import retrieval_bundle


@pytest.fixture(scope="module")
def data():
    return generate(n_users=400, n_items=300, n_topics=6, likes_per_user=20, seed=11)


def saved_and_loaded(data, model, tmp_path):
    model.fit(data)
    bundle = retrieval_bundle(data, model, index="flat")
    bundle.precomputed = PrecomputedShortlists.compute(
        model.user_factors, model.item_factors, data.positives + data.negatives, 40
    )
    return bundle, load_bundle(save_bundle(bundle, tmp_path))


@pytest.mark.parametrize("recency", [0.0, 4.0])
def test_request_time_vectors_give_the_stored_vectors_and_top_k(data, tmp_path, recency):
    model = SpectralCF(SpectralConfig(rank=24, ideal_rank=8, recency=recency))
    memory, loaded = saved_and_loaded(data, model, tmp_path)
    assert isinstance(loaded.user_vectors, EncodedVectors)
    assert not (tmp_path / loaded.version / "user_vectors.npy").exists()
    users = np.random.default_rng(0).choice(len(data.users), 60, replace=False)
    for u in users:
        np.testing.assert_allclose(
            loaded.user_vectors[int(u)], model.user_factors[u], rtol=1e-4, atol=1e-5
        )
    np.testing.assert_allclose(
        loaded.user_vectors[users], model.user_factors[users], rtol=1e-4, atol=1e-5
    )
    state = UserState()
    for u in users:
        user_id = data.users.id(int(u))
        # the search path (not the precomputed shortlist): vector, exclusions, index
        want = retrieve(memory, user_id, state, 20, precomputed=False)
        got = retrieve(loaded, user_id, state, 20, precomputed=False)
        np.testing.assert_array_equal(got.items, want.items)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4, atol=1e-5)
        assert got.user_source == "trained"
        # and the precomputed shortlist agrees with a search by the computed vector
        top, _ = search(loaded.index, loaded.user_vectors[int(u)], 20, loaded.seen_items(int(u)))
        pre = loaded.precomputed
        np.testing.assert_array_equal(pre.at(int(u), pre.pick(int(u), 20, np.array([])))[0], top)


class Factors:
    """A non-linear embedding model's output: vectors without an item encoder."""

    name = "factors"

    def __init__(self, n_users: int, n_items: int) -> None:
        rng = np.random.default_rng(1)
        self.user_factors = rng.normal(size=(n_users, 8)).astype(np.float32)
        self.item_factors = rng.normal(size=(n_items, 8)).astype(np.float32)

    def fit(self, data) -> None:
        pass


def test_per_user_arrays_are_memory_mapped_not_copied(data, tmp_path):
    memory, loaded = saved_and_loaded(data, SpectralCF(SpectralConfig(rank=16)), tmp_path)
    per_user = {
        "likes": loaded.likes,
        "dislikes": loaded.dislikes,
        "recent_likes": loaded.recent_likes,
        "user_weights": loaded.user_vectors.weights,
    }
    for name, matrix in per_user.items():
        for part in ("indptr", "indices", "data"):
            assert is_mapped(getattr(matrix, part)), f"{name}.{part} was copied"
    assert isinstance(loaded.users, MappedIds)
    assert is_mapped(loaded.users._ids) and is_mapped(loaded.users._order)
    assert is_mapped(loaded.precomputed.items) and is_mapped(loaded.precomputed.scores)
    assert is_mapped(loaded.user_features)
    assert is_mapped(loaded.item_encoder)  # read by rows, shared by the node's pods
    # plain views of the mappings: indexing them builds no np.memmap objects per request
    mapped = [loaded.users._ids, loaded.precomputed.items, loaded.item_encoder, loaded.likes.data]
    assert all(type(a) is np.ndarray for a in mapped)
    # the item side stays in memory: it does not grow with users
    assert not is_mapped(loaded.item_vectors)
    # the same rows as before saving
    for u in (0, 17, 399):
        np.testing.assert_array_equal(loaded.seen_items(u), memory.seen_items(u))
        assert loaded.activity_of(u) == memory.activity_of(u)
    # a loaded bundle saves as it came
    again = load_bundle(save_bundle(loaded, tmp_path / "again"))
    np.testing.assert_array_equal(again.user_vectors[[3, 9]], loaded.user_vectors[[3, 9]])
    other = Factors(len(data.users), len(data.items))
    _, plain = saved_and_loaded(data, other, tmp_path / "plain")
    assert isinstance(plain.user_vectors, np.ndarray) and is_mapped(plain.user_vectors)
    np.testing.assert_array_equal(plain.user_vectors[5], other.user_factors[5])


def test_mapped_csr_round_trip(tmp_path):
    m = sp.random(50, 30, density=0.1, format="csr", dtype=np.float32, random_state=2)
    m = (sp.diags((np.arange(50) != 3).astype(np.float32)) @ m).tocsr()  # row 3 empty
    m.eliminate_zeros()
    save_csr(tmp_path, "m", m)
    back = load_csr(tmp_path, "m", 30)
    assert (back != m).nnz == 0 and back.shape == m.shape
    np.testing.assert_array_equal(back[7].indices, np.sort(m[7].indices))
    assert all(is_mapped(a) for a in (back.indptr, back.indices, back.data))


def test_mapped_ids_answer_like_an_id_map(tmp_path):
    ids = ["user-0002", "a", "zz", "ünï", "user-0001", "b" * 40]
    save_ids(tmp_path, "u", ids)
    mapped, plain = MappedIds.load(tmp_path, "u"), IdMap(ids)
    asked = [*ids, "nobody", "", "b" * 41, "user-000", "a\0"]
    assert [mapped.get(i) for i in asked] == [plain.get(i) for i in asked]
    np.testing.assert_array_equal(mapped.positions(asked), plain.positions(asked))
    np.testing.assert_array_equal(mapped.indices(asked), plain.indices(asked))
    assert mapped.ids([3, 0]) == ["ünï", "user-0002"] and mapped.to_list() == ids
    assert "zz" in mapped and "nobody" not in mapped and len(mapped) == 6
    with pytest.raises(KeyError):
        mapped.index("nobody")
    with pytest.raises(ValueError, match="duplicate"):
        save_ids(tmp_path, "d", ["x", "y", "x"])
