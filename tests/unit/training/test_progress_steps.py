"""Every long step of `shortlist train` and of the evaluation and bench loops reports through
the one progress mechanism (shortlist.models.progress), not only the model fits: a sink sees
each step's bar climb to its total. A step that stops reporting fails here by name."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from shortlist.data.synthetic import generate
from shortlist.evaluation.metrics import evaluate_model
from shortlist.evaluation.two_stage import list_metrics
from shortlist.models import registry
from shortlist.models.progress import observe, track
from shortlist.training.pipeline import TrainConfig, train_bundle
from shortlist.training.tuning import Knob, tune

Run = list[tuple[int, int]]


def record(work) -> list[tuple[str, Run]]:
    """The bars `work` drew, in order, each as its (done, total) updates."""
    events: list[tuple[str, int, int]] = []
    with observe(lambda label, done, total: events.append((label, done, total))):
        work()
    runs: list[tuple[str, Run]] = []
    open_runs: dict[str, Run] = {}
    for label, done, total in events:
        run = open_runs.get(label)
        if run is None or done <= run[-1][0]:  # a new bar of the same label
            run = open_runs[label] = []
            runs.append((label, run))
        run.append((done, total))
        if done == total:
            del open_runs[label]
    return runs


def climbs_to_total(label: str, run: Run) -> None:
    done = [d for d, _ in run]
    assert len({t for _, t in run}) == 1, (label, run)
    assert done[0] >= 1 and all(b > a for a, b in zip(done, done[1:])), (label, run)
    assert done[-1] == run[-1][1], f"{label} stopped at {done[-1]} of {run[-1][1]}"


@pytest.mark.slow  # the whole pipeline, on small data
def test_train_reports_every_long_step_in_order():
    data = generate(n_users=120, n_items=80, n_topics=4, likes_per_user=12, seed=2)
    cfg = TrainConfig(dim=8, epochs=2, candidates=40, tune_budget=1.0, precomputed=32)
    runs = record(lambda: train_bundle(data, cfg))
    for label, run in runs:
        climbs_to_total(label, run)
    labels = [label for label, _ in runs]
    steps = [
        "tuning mf-bpr",  # the option search, by the budget's seconds
        "mf-bpr",  # the fit part's model
        "top-k",  # each source's shortlist of the label users
        "fusion choice",  # the weight search
        "ranking features",  # the ranker's feature rows
        "lambdarank cv",
        "lambdarank fit",
        "deepfm",
        "mf-bpr",  # the serving model on all likes
        "top-k",  # the precomputed shortlists
    ]
    it = iter(labels)
    missing = [step for step in steps if step not in it]  # an in-order subsequence
    assert not missing, f"steps without progress: {missing}; bars seen: {labels}"


def test_evaluation_and_the_benchmarks_ranked_lists_report_progress():
    data = generate(n_users=80, n_items=50, n_topics=3, likes_per_user=10, seed=4)
    model = registry.build("mf-bpr", {"dim": 8, "epochs": 1})
    model.fit(data)
    pos = data.positives.tocsr()
    runs = record(lambda: evaluate_model(model, pos, pos, pos))
    assert [label for label, _ in runs] == ["top-k", "evaluation"]
    for label, run in runs:
        climbs_to_total(label, run)
    # the two-stage bench's metrics of each user's ranked shortlist
    rng = np.random.default_rng(0)
    users = np.arange(5)
    lists = {int(u): (rng.permutation(50)[:20], rng.random((20, 3)), None) for u in users}
    test = sp.random(5, 50, density=0.2, format="csr", random_state=1)
    runs = record(lambda: list_metrics(lists, lambda x: x[:, 0], test, users))
    assert [label for label, _ in runs] == ["ranked lists", "evaluation"]
    for label, run in runs:
        climbs_to_total(label, run)


def test_tuning_bar_counts_the_budgets_seconds():
    data = generate(n_users=60, n_items=40, likes_per_user=10, seed=1)
    ticks = itertools.count()
    space = (Knob("rank", (4, 8, 16), scale="int", lo=2),)
    runs = record(
        lambda: tune(data, "spectral", 10.0, space=space, clock=lambda: float(next(ticks)))
    )
    tuning = [run for label, run in runs if label == "tuning spectral"]
    assert len(tuning) == 1
    climbs_to_total("tuning spectral", tuning[0])
    assert tuning[0][-1][1] == 10 and len(tuning[0]) > 1  # moved with the trials


def test_track_moves_every_n_items_and_completes():
    runs = record(lambda: list(track(range(10), "loop", every=4)))
    assert runs == [("loop", [(4, 10), (8, 10), (10, 10)])]
    assert record(lambda: list(track([], "empty"))) == []  # nothing to do: no bar
    assert record(lambda: list(track(range(3), "short", min_total=5))) == []

    def stop_early():
        for n in track(range(10), "stopped"):
            if n == 2:
                break

    runs = record(stop_early)
    assert runs == [("stopped", [(1, 10), (2, 10)])]  # left as it was, not completed


@pytest.mark.parametrize("every", [0, 1])
def test_track_yields_every_item(every):
    assert list(track(iter("abc"), "letters", 3, every=every)) == ["a", "b", "c"]
