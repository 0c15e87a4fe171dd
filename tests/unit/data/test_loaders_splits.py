"""Importers (LightGCN text, MovieLens u.data, CSV), splits without leakage, fingerprints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from shortlist.data.loaders import (
    RatingThresholds,
    SplitData,
    load_lightgcn_dir,
    load_movielens,
)
from shortlist.data.splits import (
    check_no_leakage,
    latest_share_holdout,
    random_holdout,
    temporal_leave_last_out,
)
from shortlist.data.synthetic import generate


def _pairs(m: sp.csr_matrix, users, items) -> set[tuple[str, str]]:
    coo = m.tocoo()
    return {(users.id(u), items.id(i)) for u, i in zip(coo.row, coo.col)}


def _write_lightgcn(directory: Path, parts: dict[str, dict[int, list[int]]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in parts.items():
        text = "".join(f"{u} {' '.join(map(str, items))}\n" for u, items in rows.items())
        (directory / f"{name}.txt").write_text(text)
    return directory


# ------------------------------------------------------------------ LightGCN text format


def test_lightgcn_dir(tmp_path):
    d = _write_lightgcn(
        tmp_path / "tiny",
        {
            "train": {0: [0, 1, 2], 1: [2, 3], 2: [10]},
            "valid": {0: [3], 1: [0]},
            "test": {0: [4], 1: [1], 3: [2]},  # user 3 appears only in test
        },
    )
    (d / "train.txt").write_text((d / "train.txt").read_text() + "\n5\n")  # user, no items
    s = load_lightgcn_dir(d)
    assert s.name == "tiny"
    # numeric ids in numeric order: index == id for 0..4, then 10
    assert s.train.items.to_list() == ["0", "1", "2", "3", "4", "10"]
    assert s.train.users.to_list() == ["0", "1", "2", "3"]
    assert s.train.positives.shape == s.valid.positives.shape == s.test.positives.shape
    assert _pairs(s.train.positives, s.train.users, s.train.items) == {
        ("0", "0"),
        ("0", "1"),
        ("0", "2"),
        ("1", "2"),
        ("1", "3"),
        ("2", "10"),
    }
    assert _pairs(s.valid.positives, s.train.users, s.train.items) == {("0", "3"), ("1", "0")}
    assert _pairs(s.test.positives, s.train.users, s.train.items) == {
        ("0", "4"),
        ("1", "1"),
        ("3", "2"),
    }
    assert s.train_valid().nnz == 8
    assert s.train.negatives.nnz == 0
    check_no_leakage(s)


def test_lightgcn_dir_without_valid_and_missing_files(tmp_path):
    d = _write_lightgcn(tmp_path / "novalid", {"train": {0: [0, 1]}, "test": {0: [2]}})
    s = load_lightgcn_dir(d)
    assert s.valid is None
    assert s.train_valid().nnz == 2
    with pytest.raises(FileNotFoundError):
        load_lightgcn_dir(tmp_path / "nothing-here")


def test_lightgcn_train_lines_keep_their_order(tmp_path):
    d = _write_lightgcn(
        tmp_path / "order",
        {"train": {0: [5, 3, 9], 1: [7, 2, 2]}, "valid": {0: [1]}, "test": {0: [4]}},
    )
    s = load_lightgcn_dir(d)
    items = s.train.items
    pos = s.train.positives
    by_item = {
        (u, items.id(i)): int(p)
        for u in range(2)
        for i, p in zip(
            pos.indices[pos.indptr[u] : pos.indptr[u + 1]],
            s.train.sequence[pos.indptr[u] : pos.indptr[u + 1]],
        )
    }
    # positions in the line, aligned with the CSR data; a repeated item keeps its last one
    assert by_item == {(0, "5"): 1, (0, "3"): 2, (0, "9"): 3, (1, "7"): 1, (1, "2"): 3}
    assert s.train.recency() is s.train.sequence
    merged = s.train_valid()
    row = merged.positives[0]
    seq = dict(zip((items.id(i) for i in row.indices), merged.sequence[: row.nnz]))
    assert seq == {"1": 0, "3": 2, "5": 1, "9": 3}  # the valid like: position unknown
    assert s.valid.sequence is None and s.test.sequence is None


def test_lightgcn_duplicates_collapse(tmp_path):
    d = _write_lightgcn(tmp_path / "dup", {"train": {0: [1, 1, 2]}, "test": {0: [3]}})
    s = load_lightgcn_dir(d)
    assert s.train.nnz == 2
    assert set(s.train.positives.data) == {1.0}


# ---------------------------------------------------------------------------- MovieLens


def _write_udata(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rows = [  # user item rating time
        (1, 10, 5, 100),
        (1, 20, 1, 101),
        (1, 30, 3, 102),
        (2, 10, 4, 200),
        (2, 30, 2, 201),
        (2, 20, 5, 50),
        (2, 20, 1, 300),  # a later re-rating wins: dislike
        (3, 40, 4, 10),
    ]
    (directory / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    return directory


def test_movielens_default_thresholds(tmp_path):
    data = load_movielens(_write_udata(tmp_path / "ml"))
    users, items = data.users, data.items
    assert _pairs(data.positives, users, items) == {("1", "10"), ("2", "10"), ("3", "40")}
    assert _pairs(data.negatives, users, items) == {("1", "20"), ("2", "30"), ("2", "20")}
    # timestamps aligned with the CSR order of the likes
    pos = data.positives.tocoo()
    times = {(users.id(u), items.id(i)): t for u, i, t in zip(pos.row, pos.col, data.timestamps)}
    assert times == {("1", "10"): 100, ("2", "10"): 200, ("3", "40"): 10}
    assert data.positives.multiply(data.negatives).nnz == 0


def test_movielens_configurable_thresholds(tmp_path):
    data = load_movielens(_write_udata(tmp_path / "ml"), RatingThresholds(like=3, dislike=1))
    users, items = data.users, data.items
    assert _pairs(data.positives, users, items) == {
        ("1", "10"),
        ("1", "30"),
        ("2", "10"),
        ("3", "40"),
    }
    assert _pairs(data.negatives, users, items) == {("1", "20"), ("2", "20")}


def test_movielens_features(tmp_path):
    d = _write_udata(tmp_path / "ml")
    genre = "|".join(["0"] * 18)
    (d / "u.item").write_text(
        "".join(
            f"{i}|Film {i}|01-Jan-199{n}||url|1|{genre}\n" for n, i in enumerate([10, 20, 30, 40])
        )
    )
    (d / "u.user").write_text("1|20|F|writer|0\n2|30|M|artist|0\n3|40|M|writer|0\n")
    data = load_movielens(d)
    assert data.items.to_list() == ["10", "20", "30", "40"]
    assert data.item_features["genres"].shape == (4, 19)
    assert data.user_features["occupation"].shape == (3, 2)
    assert data.user_features["female"].tolist() == [1.0, 0.0, 0.0]
    assert not load_movielens(d, features=False).item_features


# ------------------------------------------------------------------------------- splits


@pytest.fixture(scope="module")
def synthetic():
    return generate(n_users=120, n_items=80, n_topics=4, likes_per_user=12, seed=1)


def _assert_partition(data, split: SplitData) -> None:
    check_no_leakage(split)
    parts = [p for p in (split.train, split.valid, split.test) if p is not None]
    total = parts[0].positives.copy()
    for p in parts[1:]:
        total = total + p.positives
    assert total.max() == 1.0  # no like in two parts
    assert (total != data.positives).nnz == 0  # every like in exactly one part
    for p in parts:
        assert p.positives.multiply(split.test.positives).nnz == (
            split.test.nnz if p is split.test else 0
        )


def test_temporal_leave_last_out(synthetic):
    split = temporal_leave_last_out(synthetic, n_test=1, n_valid=1)
    _assert_partition(synthetic, split)
    pos = synthetic.positives
    times = synthetic.timestamps
    for u in range(synthetic.n_users):
        lo, hi = pos.indptr[u], pos.indptr[u + 1]
        t_user = dict(zip(pos.indices[lo:hi], times[lo:hi]))
        test_items = split.test.positives[u].indices
        valid_items = split.valid.positives[u].indices
        train_items = split.train.positives[u].indices
        assert len(test_items) == 1 and len(valid_items) == 1
        latest_train = max(t_user[i] for i in train_items)
        assert t_user[valid_items[0]] >= latest_train
        assert t_user[test_items[0]] >= t_user[valid_items[0]]
    # split timestamps stay aligned with their own likes
    tr = split.train.positives
    for u in range(5):
        lo, hi = tr.indptr[u], tr.indptr[u + 1]
        for item, t in zip(tr.indices[lo:hi], split.train.timestamps[lo:hi]):
            plo = pos.indptr[u]
            where = plo + np.searchsorted(pos.indices[plo : pos.indptr[u + 1]], item)
            assert times[where] == t


def test_temporal_short_histories_stay_in_train():
    data = generate(n_users=30, n_items=40, n_topics=2, likes_per_user=3, seed=2)
    split = temporal_leave_last_out(data, n_test=1, n_valid=1, min_train=2)
    _assert_partition(data, split)
    counts = np.diff(data.positives.indptr)
    held = np.diff(split.test.positives.indptr)
    assert (held[counts < 4] == 0).all()
    assert (held[counts >= 4] == 1).all()


def test_temporal_is_deterministic(synthetic):
    a = temporal_leave_last_out(synthetic)
    b = temporal_leave_last_out(synthetic)
    assert (a.test.positives != b.test.positives).nnz == 0


def test_random_holdout_no_leakage_and_seeded(synthetic):
    a = random_holdout(synthetic, test_fraction=0.2, valid_fraction=0.1, seed=5)
    b = random_holdout(synthetic, test_fraction=0.2, valid_fraction=0.1, seed=5)
    c = random_holdout(synthetic, test_fraction=0.2, valid_fraction=0.1, seed=6)
    _assert_partition(synthetic, a)
    _assert_partition(synthetic, c)
    assert (a.test.positives != b.test.positives).nnz == 0
    assert (a.valid.positives != b.valid.positives).nnz == 0
    assert (a.test.positives != c.test.positives).nnz > 0
    share = a.test.nnz / synthetic.nnz
    assert 0.15 < share < 0.25
    assert (np.diff(a.train.positives.indptr) >= 1).all()


def test_random_holdout_keeps_min_train():
    data = generate(n_users=20, n_items=30, n_topics=2, likes_per_user=3, seed=4)
    split = random_holdout(data, test_fraction=0.5, valid_fraction=0.5, min_train=2, seed=0)
    _assert_partition(data, split)
    counts = np.diff(data.positives.indptr)
    assert (np.diff(split.train.positives.indptr) >= np.minimum(counts, 2)).all()


def test_dislikes_stay_out_of_evaluation(synthetic):
    split = random_holdout(synthetic, seed=0)
    assert split.train.negatives.nnz == synthetic.negatives.nnz
    assert split.test.positives.multiply(synthetic.negatives).nnz == 0


def test_check_no_leakage_raises():
    data = generate(n_users=10, n_items=20, n_topics=2, likes_per_user=5, seed=0)
    with pytest.raises(ValueError, match="two splits"):
        check_no_leakage(SplitData("leaky", data, None, data))


# -------------------------------------------------------------------------- fingerprint


def test_fingerprint_changes_with_the_data(synthetic, tmp_path):
    same = generate(n_users=120, n_items=80, n_topics=4, likes_per_user=12, seed=1)
    assert synthetic.fingerprint() == same.fingerprint()
    assert len(synthetic.fingerprint()) == 16
    other = generate(n_users=120, n_items=80, n_topics=4, likes_per_user=12, seed=2)
    assert other.fingerprint() != synthetic.fingerprint()
    # one like removed
    pos = synthetic.positives.tolil()
    u, i = synthetic.positives.nonzero()
    pos[u[0], i[0]] = 0
    assert synthetic.with_positives(pos.tocsr()).fingerprint() != synthetic.fingerprint()
    # a like turned into a dislike
    neg = synthetic.negatives.tolil()
    neg[u[0], i[0]] = 1
    changed = synthetic.with_positives(pos.tocsr())
    changed.negatives = neg.tocsr()
    assert changed.fingerprint() != synthetic.with_positives(pos.tocsr()).fingerprint()
    # the same files give the same fingerprint; edited files a different one
    d = _write_lightgcn(tmp_path / "fp", {"train": {0: [0, 1], 1: [1]}, "test": {0: [2]}})
    first = load_lightgcn_dir(d).fingerprint()
    assert load_lightgcn_dir(d).fingerprint() == first
    (d / "test.txt").write_text("0 3\n")
    assert load_lightgcn_dir(d).fingerprint() != first


def test_latest_share_holdout_takes_each_users_newest_likes():
    data = generate(n_users=60, n_items=80, n_topics=4, likes_per_user=12, seed=5)
    data.timestamps = None
    data.sequence = np.random.default_rng(1).permutation(data.nnz)
    split = latest_share_holdout(data, share=0.25, min_likes=5)
    check_no_leakage(split)
    assert split.valid is None
    pos = data.positives
    held, kept = split.test.positives, split.train.positives
    checked = 0
    for u in range(data.n_users):
        lo, hi = pos.indptr[u], pos.indptr[u + 1]
        seq = dict(zip(pos.indices[lo:hi], data.sequence[lo:hi]))
        test_items, train_items = held[u].indices, kept[u].indices
        assert len(test_items) + len(train_items) == hi - lo
        expected = int(round((hi - lo) * 0.25)) if hi - lo >= 5 else 0
        assert len(test_items) == expected
        if expected and len(train_items):
            assert min(seq[i] for i in test_items) > max(seq[i] for i in train_items)
            checked += 1
    assert checked > 50
    # the train part keeps its order for the model fit on it
    assert split.train.sequence is not None and len(split.train.sequence) == kept.nnz
    data.sequence = None
    with pytest.raises(ValueError, match="no order"):
        latest_share_holdout(data)
