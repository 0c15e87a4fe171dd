"""Every user's precomputed fused shortlist, computed in parts of users (bounded memory; on
Dask the parts are the tasks), is the list the whole user set gives in one part."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from shortlist.bundle.files import load_bundle
from shortlist.data.synthetic import generate
from shortlist.models import registry
from shortlist.retrieval.fusion import FusionConfig
from shortlist.retrieval.precomputed import precompute_users
from shortlist.tools.cli import app
from shortlist.training import pipeline
from shortlist.training.sources import fit_sources


def fitted(seed: int = 2):
    data = generate(n_users=300, n_items=120, likes_per_user=12, dislikes_per_user=3, seed=seed)
    primary = registry.build("spectral", {"rank": 16, "ideal_rank": 8})
    primary.fit(data)
    sources = fit_sources(data, "spectral", primary, {}, {"factors": 8, "regularization": 1.0})
    return data, sources, (data.positives + data.negatives).tocsr()


def test_parts_of_users_give_the_one_part_lists(monkeypatch):
    data, sources, seen = fitted()
    fusion = FusionConfig(
        weights={"spectral": 1.0, "item-item": 0.5, "ials": 0.5}, primary="spectral", depth=40
    )
    whole = pipeline.fused_precomputed(sources, fusion, data.positives, seen, 32)
    monkeypatch.setattr(pipeline, "PRECOMPUTE_USERS", 70)  # 5 parts, the last one short
    parts = pipeline.fused_precomputed(sources, fusion, data.positives, seen, 32)
    assert whole.items.shape == parts.items.shape == (300, 32)
    assert (whole.items >= 0).all()  # a full list for everyone
    np.testing.assert_array_equal(parts.items, whole.items)
    np.testing.assert_array_equal(parts.scores, whole.scores)
    np.testing.assert_array_equal(parts.sources, whole.sources)
    assert parts.source_names == whole.source_names == ("spectral", "item-item", "ials")
    # the seen items are never listed
    for u in range(0, 300, 37):
        assert not set(parts.items[u]) & set(seen[u].indices)


def test_only_the_fusions_used_sources_are_listed_and_the_lists_are_the_same(monkeypatch):
    data, sources, seen = fitted()
    fusion = FusionConfig(
        weights={"spectral": 1.0, "item-item": 0.0, "ials": 0.0, "popularity": 0.5},
        primary="spectral",
        depth=40,
    )
    listed: list[str] = []
    real = pipeline.source_lists

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        listed.extend(out)
        return out

    monkeypatch.setattr(pipeline, "source_lists", counting)
    used = pipeline.fused_precomputed(sources, fusion, data.positives, seen, 32)
    assert sorted(listed) == ["popularity", "spectral"]  # iALS and item-item not searched
    # the same lists as fusing every source's lists
    every = real(sources, data.positives, np.arange(300), 40, seen)
    assert sorted(every) == ["ials", "item-item", "popularity", "spectral"]
    fused = pipeline.fused_lists(every, fusion, 32)
    np.testing.assert_array_equal(used.items, fused.items)
    np.testing.assert_array_equal(used.scores, fused.scores)
    assert used.source_names == ("spectral", "popularity")


def test_a_pair_budget_precomputes_the_most_active_users_and_the_rest_have_no_row():
    data, sources, seen = fitted()
    fusion = FusionConfig(weights={"spectral": 1.0, "ials": 0.5}, primary="spectral", depth=40)
    counts = np.diff(data.positives.indptr)
    users = precompute_users(data.positives, 50.5 * data.n_items)
    assert len(users) == 50 and (np.diff(users) > 0).all()
    # no user left out has more likes than one kept
    assert counts[np.setdiff1d(np.arange(300), users)].max() <= counts[users].min()
    assert len(precompute_users(data.positives, 300 * data.n_items)) == 300
    some = pipeline.fused_precomputed(sources, fusion, data.positives, seen, 32, users)
    every = pipeline.fused_precomputed(sources, fusion, data.positives, seen, 32)
    assert some.items.shape == (50, 32) and every.rows is None
    none = np.array([], np.int64)
    for u in range(300):
        row = some.row(u)
        picked = some.pick(row, 20, none)
        if u not in users:
            assert row == -1 and picked is None  # searched at request time
            continue
        assert every.row(u) == u and row == np.searchsorted(users, u)
        np.testing.assert_array_equal(some.at(row, picked)[0], every.at(u, picked)[0])
        assert some.sources_at(row, picked) == every.sources_at(u, picked)


@pytest.mark.slow
def test_train_takes_the_pair_budget_and_refuses_a_negative_one(tmp_path):
    args = ["train", "--out", str(tmp_path), "--model", "spectral", "--n-users", "120"]
    args += ["--n-items", "80", "--precomputed-pairs", str(40 * 80)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path)
    likes = np.diff(bundle.likes.indptr)
    rows = np.flatnonzero(np.asarray(bundle.precomputed.rows) >= 0)
    assert len(rows) == bundle.precomputed.items.shape[0] == 40
    assert likes[np.setdiff1d(np.arange(120), rows)].max() <= likes[rows].min()
    manifest = json.loads((tmp_path / bundle.version / "manifest.json").read_text())
    assert manifest["metrics"]["precomputed_users"] == 40
    args[2] = str(tmp_path / "none")
    result = CliRunner().invoke(app, [*args[:-1], "0"])
    assert result.exit_code == 0, result.output
    assert load_bundle(tmp_path / "none").precomputed is None  # every user searched
    bad = CliRunner().invoke(app, [*args[:-1], "-1"])
    assert bad.exit_code == 2 and "--precomputed-pairs" in bad.output
