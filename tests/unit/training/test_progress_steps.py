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
from shortlist.models.progress import track
from shortlist.training.pipeline import TrainConfig, train_bundle
from shortlist.training.tuning import Knob, tune
from tests.progress import climbs_to_total, record


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


def test_the_state_benchs_timed_loops_report_progress():
    """`shortlist bench state`'s write and read loops (on each store it measures), here on
    the in-memory store: the loops are the bench's own, only the store differs."""
    from shortlist.feedback.stores import InMemoryStateStore
    from shortlist.tools.bench.state_bench import StateBenchConfig, _events, _read, _write

    cfg = StateBenchConfig(users=40, events_per_user=5, items=30, dim=4, reads=250, chunk=50)
    events = _events(cfg)
    users = sorted({e.user_id for e in events})
    store = InMemoryStateStore()
    runs = record(lambda: (_write(store, events, cfg), _read(store, users, cfg)))
    steps = ["state writes", "state reads"]
    assert [label for label, _ in runs] == steps, f"steps without progress: {runs}"
    for label, run in runs:
        climbs_to_total(label, run)
    assert runs[0][1][-1][1] == 4 and runs[1][1][-1][1] == 250  # chunks, reads


def test_the_pod_memory_benchs_generated_bundles_report_progress(tmp_path, monkeypatch):
    """`shortlist bench pod-memory` writes bundles of millions of users in chunks: the likes
    and the precomputed shortlists each move a bar a chunk."""
    from shortlist.tools.bench import pod_memory

    monkeypatch.setattr(pod_memory, "CHUNK", 100)
    cfg = pod_memory.PodMemoryConfig(items=50, width=5)
    rng = np.random.default_rng(0)
    runs = record(
        lambda: (
            pod_memory._likes(250, cfg, rng),
            pod_memory._precomputed(tmp_path, 250, cfg, rng),
        )
    )
    assert [label for label, _ in runs] == ["likes generated", "precomputed written"], runs
    for label, run in runs:
        climbs_to_total(label, run)
        assert run[-1][1] == 3  # chunks of 100 users


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
