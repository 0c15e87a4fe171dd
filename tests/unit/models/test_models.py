"""Models beat random vectors on planted structure; protocols A/B and the bench CLI run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from shortlist.data.loaders import load_lightgcn_dir, write_lightgcn_dir
from shortlist.data.splits import random_holdout
from shortlist.data.synthetic import generate
from shortlist.evaluation.metrics import evaluate
from shortlist.evaluation.protocols import random_scores_baseline, run_protocol, validator
from shortlist.models import registry
from shortlist.models.lightgcn import LightGCN, LightGCNConfig
from shortlist.models.spectral import (
    SpectralCF,
    SpectralConfig,
    exact_svd,
    randomized_svd,
    right_singular,
)
from shortlist.tools.cli import app
from shortlist.training.pipeline import TrainConfig

FAST = {
    "lightgcn": dict(dim=32, epochs=8, batch_size=1024, negatives=128, lr=0.01, progress=False),
    "two-tower": dict(dim=32, hidden=64, epochs=8, batch_size=512, progress=False),
    "mf-bpr": dict(dim=32, epochs=15, batch_size=1024),
    "spectral": dict(rank=48, ideal_rank=24),
    "popularity": {},
}


@pytest.fixture(scope="module")
def planted():
    data = generate(
        n_users=200, n_items=150, n_topics=5, likes_per_user=15, dislikes_per_user=8, seed=3
    )
    return data, random_holdout(data, test_fraction=0.2, valid_fraction=0.1, seed=0)


@pytest.fixture(scope="module")
def floor(planted):
    _, split = planted
    runs = [random_scores_baseline(split, seed=s) for s in range(3)]
    return {m: float(np.mean([r[m] for r in runs])) for m in ("recall@20", "ndcg@20")}


def _fit_eval(name: str, config: dict, split) -> tuple[object, dict[str, float]]:
    model = registry.build(name, config)
    train = split.train_valid()
    model.fit(train)
    m = evaluate(model.user_factors, model.item_factors, train.positives, split.test.positives)
    return model, m


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("lightgcn", {"use_dislikes": True}),
        ("lightgcn", {"use_dislikes": False}),
        ("two-tower", {}),
        ("mf-bpr", {}),
        ("spectral", {}),
    ],
    ids=["lightgcn-dislikes", "lightgcn-likes-only", "two-tower", "mf-bpr", "spectral"],
)
def test_model_beats_random_on_planted_structure(planted, floor, name, extra):
    data, split = planted
    model, m = _fit_eval(name, {**FAST[name], **extra}, split)
    assert model.user_factors.shape[0] == data.n_users
    assert model.item_factors.shape[0] == data.n_items
    assert model.user_factors.shape[1] == model.item_factors.shape[1]
    assert np.isfinite(model.user_factors).all() and np.isfinite(model.item_factors).all()
    assert m["recall@20"] > 1.6 * floor["recall@20"], (m, floor)
    assert m["ndcg@20"] > 1.6 * floor["ndcg@20"], (m, floor)


def test_lightgcn_dislikes_rank_below_likes(planted):
    data, split = planted
    model, _ = _fit_eval("lightgcn", FAST["lightgcn"], split)
    scores = model.user_factors @ model.item_factors.T
    neg = data.negatives.tocoo()
    test = split.test.positives.tocoo()
    disliked = scores[neg.row, neg.col].mean()
    held_out_likes = scores[test.row, test.col].mean()
    assert disliked < held_out_likes


def test_lightgcn_early_stopping_history_and_checkpoint(planted, tmp_path):
    _, split = planted
    cfg = LightGCNConfig(**{**FAST["lightgcn"], "epochs": 6, "eval_every": 1, "patience": 100})
    cfg.checkpoint_dir = str(tmp_path / "ckpt")
    model = LightGCN(cfg)
    report = model.fit(split.train, validate=validator(split.train, split.valid))
    assert report.epochs == 6
    curve = [row["ndcg@20"] for row in report.history]
    assert len(curve) == 6
    assert model.best_epoch == 1 + int(np.argmax(curve))
    assert (tmp_path / "ckpt" / "lightgcn.pt").exists()
    # exported vectors are those of the best validation epoch
    m = evaluate(
        model.user_factors, model.item_factors, split.train.positives, split.valid.positives
    )
    assert m["ndcg@20"] == pytest.approx(max(curve), abs=1e-6)


def test_lightgcn_is_reproducible(planted):
    _, split = planted
    cfg = {**FAST["lightgcn"], "epochs": 2, "threads": 1, "seed": 11}
    a = registry.build("lightgcn", cfg)
    b = registry.build("lightgcn", cfg)
    a.fit(split.train)
    b.fit(split.train)
    np.testing.assert_allclose(a.item_factors, b.item_factors, atol=1e-5)


def test_spectral_fold_in_matches_training(planted):
    _, split = planted
    model = SpectralCF(SpectralConfig(rank=32, ideal_rank=16))
    model.fit(split.train)
    liked = split.train.positives[7].indices
    np.testing.assert_allclose(model.fold_in(liked), model.user_factors[7], rtol=1e-4, atol=1e-5)


def test_spectral_recency_weights_newer_likes_and_folds_in_alike(planted):
    _, split = planted
    pos = split.train.positives
    order = np.random.default_rng(3).permutation(pos.nnz)  # any per-user order
    data = dataclasses.replace(split.train, timestamps=None, sequence=order)
    plain = SpectralCF(SpectralConfig(rank=32, ideal_rank=16))
    recent = SpectralCF(SpectralConfig(rank=32, ideal_rank=16, recency=4.0, recency_power=2.0))
    plain.fit(data)
    recent.fit(data)
    np.testing.assert_allclose(recent.item_factors, plain.item_factors)
    u = 7
    lo, hi = pos.indptr[u], pos.indptr[u + 1]
    oldest_first = pos.indices[lo:hi][np.argsort(data.sequence[lo:hi])]
    np.testing.assert_allclose(
        recent.fold_in(oldest_first), recent.user_factors[u], rtol=1e-4, atol=1e-5
    )
    # the newest like weighs 1 + 4 = 5 times a like of its own in the plain model, the
    # oldest about 1 time; feedback folds likes in with the newest weight
    weights = np.linalg.lstsq(
        plain.item_encoder[oldest_first].T, recent.user_factors[u], rcond=None
    )[0]
    assert weights[-1] == pytest.approx(5.0, rel=1e-3)
    assert weights[0] == pytest.approx(1.0 + 4.0 / len(oldest_first) ** 2, rel=1e-3)
    np.testing.assert_allclose(recent.item_encoder, 5.0 * plain.item_encoder, rtol=1e-6)
    unordered = SpectralCF(SpectralConfig(rank=32, ideal_rank=16, recency=4.0))
    unordered.fit(dataclasses.replace(data, sequence=None))  # no order: no change
    np.testing.assert_allclose(unordered.user_factors, plain.user_factors, rtol=1e-5)
    assert unordered.item_encoder is not None
    np.testing.assert_allclose(unordered.item_encoder, plain.item_encoder)


def test_spectral_popularity_prior_scales_each_items_scores_only(planted):
    _, split = planted
    plain = SpectralCF(SpectralConfig(rank=32, ideal_rank=16))
    prior = SpectralCF(SpectralConfig(rank=32, ideal_rank=16, pop_exp=0.3))
    plain.fit(split.train)
    prior.fit(split.train)
    likes = np.maximum(np.asarray(split.train.positives.sum(axis=0)).ravel(), 1.0)
    scores = plain.user_factors @ plain.item_factors.T
    np.testing.assert_allclose(
        prior.user_factors @ prior.item_factors.T, scores * likes**0.3, rtol=1e-3, atol=1e-4
    )
    # user vectors (and so fold-in) do not change: the prior sits on the item side
    np.testing.assert_allclose(prior.user_factors, plain.user_factors, rtol=1e-5)
    top_plain = np.argsort(-scores, axis=1)[:, :5]
    assert (np.argsort(-(scores * likes**0.3), axis=1)[:, :5] != top_plain).any()


def test_the_randomized_svd_finds_the_top_singular_pairs():
    # large enough for the randomized path (rank + oversample under half the smaller side),
    # with a decaying spectrum as like matrices have (a flat one is the method's worst case)
    rng = np.random.default_rng(1)
    left, _ = np.linalg.qr(rng.standard_normal((500, 40)))
    right, _ = np.linalg.qr(rng.standard_normal((300, 40)))
    dense = (left * 0.8 ** np.arange(40)) @ right.T + 1e-3 * rng.standard_normal((500, 300))
    a = sp.csr_matrix(dense.astype(np.float32))
    _, truth_s, truth_vt = np.linalg.svd(dense, full_matrices=False)
    s, v = randomized_svd(a, 8, power_iters=4, oversample=24)
    np.testing.assert_allclose(s, truth_s[:8], rtol=1e-3)
    # each right vector is the true one up to its sign
    np.testing.assert_allclose(np.abs((v.T @ truth_vt[:8].T).diagonal()), 1.0, atol=1e-2)


def test_right_singular_vectors_from_the_gram_match_lapack_in_any_block_size():
    rng = np.random.default_rng(2)
    bt = rng.standard_normal((1000, 12)).astype(np.float32)  # items x width
    _, truth_s, truth_vt = np.linalg.svd(bt.T.astype(np.float64), full_matrices=False)
    for block_rows in (None, 7, 1000):
        s, v = right_singular(bt, 5, block_rows=block_rows)
        np.testing.assert_allclose(s, truth_s[:5], rtol=1e-5)
        np.testing.assert_allclose(np.abs(v.T @ truth_vt[:5].T), np.eye(5), atol=1e-4)


@pytest.mark.parametrize("shape", [(40, 120), (120, 40)])
def test_exact_and_randomized_svd_agree(shape):
    a = sp.random(*shape, density=0.15, random_state=0, format="csr", dtype=np.float32)
    truth = np.linalg.svd(a.toarray(), compute_uv=False)[:8]
    s_exact, v_exact = exact_svd(a, 8)
    s_rand, _ = randomized_svd(a, 8, power_iters=4, oversample=40)
    np.testing.assert_allclose(s_exact, truth, rtol=1e-4)
    np.testing.assert_allclose(s_rand, truth, rtol=1e-3)
    # right singular vectors: orthonormal and A^T A v = s^2 v
    np.testing.assert_allclose(v_exact.T @ v_exact, np.eye(8), atol=1e-4)
    ata = (a.T @ a).toarray()
    np.testing.assert_allclose(ata @ v_exact, v_exact * s_exact**2, atol=1e-3)


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(KeyError):
        registry.build("nope")
    with pytest.raises(ValueError, match="unknown lightgcn options"):
        registry.build("lightgcn", {"epoch": 3})
    assert {"lightgcn", "two-tower", "mf-bpr", "spectral", "popularity"} <= set(
        registry.model_names()
    )


# ----------------------------------------------------------------------- protocols, bench


@pytest.fixture(scope="module")
def tiny_dir(planted, tmp_path_factory):
    _, split = planted
    return write_lightgcn_dir(split, tmp_path_factory.mktemp("data") / "tiny")


def test_written_dir_round_trips(planted, tiny_dir):
    _, split = planted
    loaded = load_lightgcn_dir(tiny_dir)
    assert loaded.train.nnz == split.train.nnz
    assert loaded.valid.nnz == split.valid.nnz
    assert loaded.test.nnz == split.test.nnz


@pytest.mark.parametrize("protocol", ["A", "B"])
def test_protocols_end_to_end(tiny_dir, protocol):
    split = load_lightgcn_dir(tiny_dir)
    result = run_protocol(split, protocol, "lightgcn", {**FAST["lightgcn"], "epochs": 4})
    s = result.summary()
    assert s["dataset"] == "tiny" and s["protocol"] == protocol and s["model"] == "lightgcn"
    assert s["users"] == int((np.diff(split.test.positives.indptr) > 0).sum())
    for key in ("recall@20", "ndcg@20", "precision@20", "hitrate@20", "coverage@20"):
        assert 0.0 <= s[key] <= 1.0
    assert s["fingerprint"] == split.fingerprint()
    validated = [row for row in result.history if "ndcg@20" in row]
    if protocol == "B":
        assert validated and "valid_ndcg@20" in s
    else:
        assert not validated and not result.valid_metrics


def test_protocol_b_excludes_train_items_only_from_test_ranking(tiny_dir):
    split = load_lightgcn_dir(tiny_dir)
    result = run_protocol(split, "B", "popularity", {})
    # popularity ranks every user the same; recompute with train alone excluded by hand
    model = result.fitted
    expected = evaluate(
        model.user_factors, model.item_factors, split.train.positives, split.test.positives
    )
    assert result.metrics["recall@20"] == pytest.approx(expected["recall@20"])
    variant = run_protocol(split, "B-valid-excluded", "popularity", {})
    known = (split.train.positives + split.valid.positives).tocsr()
    expected = evaluate(model.user_factors, model.item_factors, known, split.test.positives)
    assert variant.metrics["recall@20"] == pytest.approx(expected["recall@20"])


def _last_json(output: str) -> dict:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return json.loads(lines[-1])


@pytest.mark.slow
def test_bench_quality_two_stage_cli(tiny_dir):
    """Retrieval-only and two-stage figures on the same users, as one JSON line."""
    args = ["bench", "quality", "--data", str(tiny_dir), "--protocol", "A", "--tune-budget", "0"]
    args += ["--pipeline", "two-stage", "--config", '{"rank": 32}']
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = _last_json(result.stdout)
    assert summary["pipeline"] == "two-stage" and summary["users"] > 0
    for key in ("recall@20", "ndcg@20", "retrieval_recall@20", "retrieval_ndcg@20"):
        assert 0 <= summary[key] <= 1
    assert summary["total_seconds"] >= summary["ranker_fit_seconds"] > 0
    assert "retrieval @20" in result.stdout and "two-stage @20" in result.stdout
    assert "ndcg@20_lift_by_seed" not in summary
    assert summary["ranker_max_lists"] == TrainConfig().ranker_max_lists


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["A", "B"])
def test_bench_quality_two_stage_on_the_latest_likes_as_labels(tiny_dir, protocol):
    args = [
        "bench",
        "quality",
        "--data",
        str(tiny_dir),
        "--protocol",
        protocol,
        "--tune-budget",
        "0",
    ]
    args += ["--pipeline", "two-stage", "--config", '{"rank": 32}', "--ranker-lists", "150"]
    args += ["--ranker-labels", "latest"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = _last_json(result.stdout)
    assert summary["ranker_labels"] == "latest" and summary["users"] > 0
    assert summary["ranker_max_lists"] == 150
    assert 0 < summary["ranker_valid_ranker_ndcg@20"] <= 1
    assert "ranker on its latest lists" in result.stdout
    bad = CliRunner().invoke(app, args[:-1] + ["newest"])
    assert bad.exit_code == 2 and "--ranker-labels must be one of served" in bad.output


@pytest.mark.slow
def test_bench_quality_two_stage_cli_over_ranker_seeds(tiny_dir):
    args = ["bench", "quality", "--data", str(tiny_dir), "--protocol", "A", "--tune-budget", "0"]
    args += ["--pipeline", "two-stage", "--config", '{"rank": 32}', "--ranker-seeds", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = _last_json(result.stdout)
    lifts = summary["ndcg@20_lift_by_seed"]
    assert len(lifts) == 2 and lifts[0] == summary["ndcg@20_lift"]
    assert "seed 1: ndcg@20" in result.stdout and "lift over 2 seeds" in result.stdout


def test_bench_recency_cli_searches_on_the_latest_likes(tiny_dir):
    args = ["bench", "recency", "--data", str(tiny_dir), "--config", '{"rank": 32}']
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = _last_json(result.stdout)
    tried = summary["tried"]
    assert 3 <= len(tried) <= 3 + 4 + 3 + 3
    assert summary["chosen"] in tried
    assert summary["chosen"]["ndcg@20"] == max(row["ndcg@20"] for row in tried)
    assert {"pop_exp", "recency", "recency_power"} == set(summary["chosen"]["options"])
    split = load_lightgcn_dir(tiny_dir)
    assert 0 < summary["held_out_likes"] < split.train_valid().nnz
    bad = CliRunner().invoke(app, ["bench", "recency", "--data", str(tiny_dir / "nope")])
    assert bad.exit_code == 2 and "not found" in bad.output


def test_bench_quality_cli(tiny_dir, tmp_path):
    config = json.dumps({**FAST["lightgcn"], "epochs": 4, "eval_every": 1})
    report = tmp_path / "report"
    args = ["bench", "quality", "--data", str(tiny_dir), "--protocol", "B", "--tune-budget", "0"]
    args += ["--model", "lightgcn", "--config", config, "--report", str(report)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = _last_json(result.stdout)
    for key in ("dataset", "protocol", "model", "recall@20", "ndcg@20", "precision@20"):
        assert key in summary
    assert summary["dataset"] == "tiny" and summary["protocol"] == "B"
    assert summary["model"] == "lightgcn" and summary["pipeline"] == "retrieval"
    assert summary["users"] > 0 and summary["train_seconds"] >= 0
    text = (report / "quality.md").read_text()
    assert "| tiny | B | lightgcn | retrieval |" in text
    assert ("![validation curve]" in text) or ("matplotlib is not installed" in text)
    # a second run (another model) joins the same report
    args = ["bench", "quality", "--data", str(tiny_dir), "--protocol", "A", "--tune-budget", "0"]
    args += ["--model", "spectral", "--config", '{"rank": 32}', "--report", str(report)]
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert _last_json(second.stdout)["model"] == "spectral"
    text = (report / "quality.md").read_text()
    assert "| tiny | B | lightgcn |" in text and "| tiny | A | spectral |" in text


@pytest.mark.parametrize("peer", ["als", "implicit-bpr"])
def test_implicit_peers_run_through_the_bench_with_the_same_json_keys(tiny_dir, peer):
    """implicit's ALS / BPR: tuned on valid, evaluated by the same protocol code as ours."""
    pytest.importorskip("implicit")
    base = ["bench", "quality", "--data", str(tiny_dir), "--protocol", "B"]
    ours = CliRunner().invoke(app, [*base, "--config", '{"rank": 32}', "--tune-budget", "0"])
    assert ours.exit_code == 0, ours.output
    theirs = CliRunner().invoke(app, [*base, "--model", peer, "--tune-budget", "3"])
    assert theirs.exit_code == 0, theirs.output
    a, b = _last_json(ours.stdout), _last_json(theirs.stdout)
    assert set(b) - {"tuning"} == set(a) and b["model"] == peer
    assert b["test_excludes"] == "train" and b["users"] == a["users"]
    tuning = b["tuning"]
    assert tuning["trials"] and tuning["chosen"] == b["options"]
    # the key the bench prints (shared with our models' tuning; a missing one crashed the
    # command without --tune-budget)
    assert tuning["budget_s"] == 3
    assert max(t["ndcg@20"] for t in tuning["trials"]) == tuning["valid_ndcg@20"]
    assert 0 < b["recall@20"] <= 1 and 0 < b["ndcg@20"] <= 1
    two_stage = CliRunner().invoke(app, [*base, "--model", peer, "--pipeline", "two-stage"])
    assert two_stage.exit_code == 2 and "retrieval-only" in two_stage.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/no/such/dir", "--protocol", "A"], "not found"),
        (["--protocol", "C"], "protocol must be one of"),
        (["--protocol", "A", "--model", "nope"], "unknown model"),
        (["--protocol", "A", "--config", "{bad"], "JSON"),
        (["--protocol", "A", "--config", '{"nope": 1}'], "unknown spectral options"),
        (["--protocol", "A", "--pipeline", "three-stage"], "unknown pipeline"),
    ],
)
def test_bench_quality_cli_errors(tiny_dir, args, message):
    if "--data" not in args:
        args = ["--data", str(tiny_dir), *args]
    result = CliRunner().invoke(app, ["bench", "quality", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_report_without_matplotlib_or_history(tmp_path, monkeypatch):
    from shortlist.tools.bench import report

    history = [{"epoch": 1.0, "loss": 1.0, "ndcg@20": 0.1}, {"epoch": 2.0, "ndcg@20": 0.2}]
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    why = report.plot_history(history, tmp_path / "curve.png", "t")
    assert why is not None and "matplotlib is not installed" in why
    assert not (tmp_path / "curve.png").exists()
    why = report.plot_history([{"epoch": 1.0, "loss": 1.0}], tmp_path / "curve.png", "t")
    assert why is not None and "no validation curve" in why
