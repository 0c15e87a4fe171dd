"""The tuner: within its budget, deterministic, training data only, and it finds a clearly
better option when there is one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from shortlist.data.splits import latest_share_holdout
from shortlist.data.synthetic import generate
from shortlist.models import registry
from shortlist.tools.cli import app
from shortlist.training import tuning
from shortlist.training.pipeline import TrainConfig, chosen_options
from shortlist.training.tuning import Knob, holdout, tune


@pytest.fixture(scope="module")
def data():
    return generate(n_users=150, n_items=90, likes_per_user=20, seed=3)


SMALL = (Knob("rank", (8, 32), scale="int", lo=4), Knob("power", (1.0, 2.0), lo=0.25))


def test_a_tiny_budget_scores_only_the_defaults(data):
    result = tune(data, "spectral", budget_s=1e-6, base={"rank": 16})
    assert len(result.trials) == 1 and result.stopped == "budget"
    default = registry.build("spectral").config
    assert result.trials[0].options["rank"] == 16  # the base, else the model's defaults
    assert result.trials[0].options["power"] == default.power
    assert result.options["rank"] == 16 and result.options["power"] == default.power


def test_the_budget_stops_new_trials_and_is_kept(data):
    ticks = iter(np.arange(0.0, 1000.0, 1.0))  # every clock read: one more second
    result = tune(data, "spectral", 12.0, space=SMALL, clock=lambda: float(next(ticks)))
    # each trial reads the clock twice (1 s) and the budget check once: the estimate (1 s
    # per trial) keeps the total within the budget plus one trial
    assert 1 < len(result.trials) < len(SMALL) * 4
    assert result.stopped == "budget" and result.seconds <= 12.0 + 2.0


def test_the_same_seed_gives_the_same_search(data):
    a = tune(data, "spectral", 60.0, space=SMALL, seed=1).report()
    b = tune(data, "spectral", 60.0, space=SMALL, seed=1).report()
    assert a["stopped"] == "plan done"
    drop = lambda r: [{k: v for k, v in t.items() if k != "seconds"} for t in r["trials"]]  # noqa: E731
    assert drop(a) == drop(b) and a["chosen"] == b["chosen"]


def test_it_picks_the_clearly_better_option(data):
    # rank 1 (the starting point) cannot separate users' topics; rank 24 can
    space = (Knob("rank", (1, 24), scale="int", lo=1),)
    result = tune(data, "spectral", 60.0, base={"rank": 1}, space=space)
    scores = {t.options["rank"]: t.ndcg for t in result.trials}
    assert scores[24] > scores[1] + 0.05
    chosen = result.options["rank"]
    assert chosen != 1 and scores[chosen] == max(scores.values())  # the fine step may refine


def test_mf_bpr_is_searched_over_epochs_dim_and_l2(data):
    names = [k.name for k in tuning.search_space("mf-bpr", data)]
    assert {"epochs", "dim", "l2"} <= set(names)
    result = tune(data, "mf-bpr", 1e-6, base={"dim": 8, "epochs": 2})
    assert result.options["dim"] == 8 and len(result.trials) == 1


def test_the_tuner_only_ever_fits_and_scores_the_training_likes(data, monkeypatch):
    """Handed the training part of a split, every fit sees a subset of its likes and the
    scored slice is its own latest likes: test likes never reach it."""
    split = latest_share_holdout(data, 0.2)
    train, test = split.train, split.test.positives
    fitted, scored = [], []
    build = registry.build

    def spy_build(name, options=None):
        model = build(name, options)
        fit = model.fit
        model.fit = lambda d: (fitted.append(d.positives.copy()), fit(d))[1]
        return model

    real_ndcg = tuning.ndcg_at

    def spy_ndcg(u, i, fitted_likes, held):
        scored.append(held.copy())
        return real_ndcg(u, i, fitted_likes, held)

    monkeypatch.setattr(tuning.registry, "build", spy_build)
    monkeypatch.setattr(tuning, "ndcg_at", spy_ndcg)
    tune(train, "spectral", 60.0, space=SMALL)
    known = train.positives > 0
    assert fitted and scored
    for likes in fitted + scored:
        assert (likes > 0).multiply(known).nnz == likes.nnz  # inside the training likes
        assert (likes > 0).multiply(test > 0).nnz == 0  # none of the test likes
    _, held, how = holdout(train, 0.2)
    assert "latest" in how and all((s != held).nnz == 0 for s in scored)


def test_unordered_likes_get_a_seeded_random_slice(data):
    plain = data.with_positives(data.positives)  # no timestamps: no order
    assert plain.recency() is None
    a, b = holdout(plain, 0.2, seed=4)[1], holdout(plain, 0.2, seed=4)[1]
    assert (a != b).nnz == 0 and a.nnz > 0 and "random" in holdout(plain, 0.2, seed=4)[2]
    assert all(
        k.name not in ("recency", "recency_power") for k in tuning.search_space("spectral", plain)
    )


def test_the_pipeline_tunes_only_without_options_and_with_a_budget(data):
    say = lambda _m: None  # noqa: E731
    options, report = chosen_options(data, TrainConfig(model="spectral"), say)
    assert options == {} and report["stopped"].startswith("no budget")
    cfg = TrainConfig(model="spectral", model_options={"rank": 12}, tune_budget=30.0)
    options, report = chosen_options(data, cfg, say)
    assert options == {"rank": 12} and report["stopped"] == "options given"
    cfg = TrainConfig(model="lightgcn", tune_budget=30.0)
    assert chosen_options(data, cfg, say)[1]["stopped"] == "no search space for lightgcn"
    cfg = TrainConfig(model="mf-bpr", dim=8, epochs=2, tune_budget=1e-6)
    options, report = chosen_options(data, cfg, say)
    assert options["dim"] == 8 and options["seed"] == 0 and len(report["trials"]) == 1
    assert report["chosen"] == options


# The whole pipeline (ranker included) runs in these: tens of seconds each on a slow host.
@pytest.mark.slow
def test_train_writes_the_tuning_report_into_the_manifest(tmp_path):
    budget = "3"  # no budget is covered above, without the whole pipeline
    args = ["train", "--out", str(tmp_path), "--model", "spectral", "--n-users", "120"]
    args += ["--n-items", "80", "--precomputed", "0", "--tune-budget", budget]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    latest = (tmp_path / "LATEST").read_text().strip()
    manifest = json.loads((tmp_path / latest / "manifest.json").read_text())
    report = manifest["tuning"]
    assert report["budget_s"] == float(budget)
    assert manifest["model_options"] == report["chosen"]
    assert report["trials"] and report["seconds"] <= 3 + max(t["seconds"] for t in report["trials"])
    assert report["chosen_ndcg@20"] >= report["default_ndcg@20"]


@pytest.mark.slow
def test_explicit_options_win_over_tuning(tmp_path):
    args = ["train", "--out", str(tmp_path), "--model", "spectral", "--n-users", "120"]
    args += ["--n-items", "80", "--precomputed", "0", "--options", '{"rank": 12}']
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    latest = (tmp_path / "LATEST").read_text().strip()
    manifest = json.loads((tmp_path / latest / "manifest.json").read_text())
    assert manifest["model_options"] == {"rank": 12}
    assert manifest["tuning"]["stopped"] == "options given" and not manifest["tuning"]["trials"]


def test_the_default_budget_scales_with_the_default_trials_cost():
    # a small dataset keeps the floor; a large one gets BUDGET_TRIALS default trials, capped
    assert tuning.scaled_budget(120.0, 13.8) == 120.0
    assert tuning.scaled_budget(120.0, 100.0) == tuning.BUDGET_TRIALS * 100.0
    assert tuning.scaled_budget(120.0, 1e5) == tuning.BUDGET_CAP
    assert tuning.scaled_budget(5000.0, 100.0) == 5000.0  # never below the budget given


def _priced(monkeypatch, fresh: float, reused: float) -> list[float]:
    """A clock whose seconds pass only in fits: `fresh` per fit that computes its SVD,
    `reused` per fit that finds it in the tuner's cache."""
    now = [0.0]
    build = registry.build

    def priced_build(name, options=None):
        model = build(name, options)
        fit = model.fit

        def timed(d):
            now[0] += reused if model.reuses_cache() else fresh
            return fit(d)

        model.fit = timed
        return model

    monkeypatch.setattr(tuning.registry, "build", priced_build)
    return now


def test_a_large_dataset_gets_past_the_defaults_to_recency(data, monkeypatch):
    """The Gowalla case: the default trial takes 100 of 120 CPU s. The fixed budget runs it
    alone; the scaled one (8 default trials) reaches the cheap knobs, recency included,
    because trials that reuse the SVD are estimated at their own (measured) rate."""
    now = _priced(monkeypatch, fresh=100.0, reused=5.0)
    fixed = tune(data, "spectral", 120.0, clock=lambda: now[0])
    assert len(fixed.trials) == 1 and fixed.stopped == "budget"
    now[0] = 0.0
    scaled = tune(data, "spectral", 120.0, clock=lambda: now[0], scale=True)
    report = scaled.report()
    assert report["budget_s"] == tuning.BUDGET_TRIALS * 100.0
    assert scaled.seconds <= report["budget_s"]
    assert len(scaled.trials) > 10
    assert any(t.options["recency"] > 0 for t in scaled.trials)
    # fresh SVDs (item_exp, user_exp, rank) are tried too, fewer than the cheap trials
    fresh = [t for t in scaled.trials if t.seconds >= 100.0]
    assert 1 < len(fresh) < len(scaled.trials) - len(fresh)


def test_a_budget_given_explicitly_is_not_scaled(data, monkeypatch):
    now = _priced(monkeypatch, fresh=100.0, reused=5.0)
    result = tune(data, "spectral", 150.0, clock=lambda: now[0])
    assert result.report()["budget_s"] == 150.0 and result.report()["budget_rule"] == "fixed"


def test_trials_score_a_fixed_seeded_sample_of_users():
    rng = np.random.default_rng(0)
    held = tuning.sp.random(50, 30, density=0.3, format="csr", random_state=rng)
    assert tuning.scored_users(held, most=100) is not None
    assert (tuning.scored_users(held, most=100) != held).nnz == 0  # all where fewer
    a, b = tuning.scored_users(held, most=10, seed=2), tuning.scored_users(held, most=10, seed=2)
    kept = np.flatnonzero(np.diff(a.indptr) > 0)
    assert len(kept) == 10 and (a != b).nnz == 0
    assert (a[kept] != held[kept]).nnz == 0  # the kept users keep all their held-out likes
