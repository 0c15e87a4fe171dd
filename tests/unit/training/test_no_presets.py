"""Options are chosen on the data, the same code for every dataset: no code path reads a
dataset's name, the bench's defaults choose what `shortlist train` chooses, and the choice
is the same on every run."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import shortlist
from shortlist.data.splits import temporal_leave_last_out
from shortlist.data.synthetic import generate
from shortlist.models import registry
from shortlist.tools.bench.quality import bench_options
from shortlist.training.pipeline import TrainConfig, chosen_options
from shortlist.training.tuning import DEFAULT_BUDGET

PACKAGE = Path(shortlist.__file__).parent
# The benchmark folders' names: options keyed by one of them would not carry to new data.
NAMES = ("lastfm", "gowalla", "ml-100k", "ml100k", "movielens", "yelp", "amazon")
# Where options are chosen and models, sources, fusion and ranker are built and scored.
OPTION_PARTS = ("models", "training", "retrieval", "ranking", "evaluation", "feedback")


def _code_strings(path: Path) -> list[str]:
    """The string constants of a module that are not docstrings nor comments."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_no_option_code_names_a_dataset():
    found = []
    for part in OPTION_PARTS:
        for path in (PACKAGE / part).rglob("*.py"):
            for text in _code_strings(path):
                if any(name in text.lower() for name in NAMES):
                    found.append(f"{path.relative_to(PACKAGE)}: {text[:60]!r}")
    assert not found, found
    assert not hasattr(registry, "PRESETS") and not hasattr(registry, "preset")


@pytest.fixture(scope="module")
def split():
    data = generate(n_users=150, n_items=90, likes_per_user=20, seed=3)
    return temporal_leave_last_out(data, n_test=3, n_valid=3, min_train=5, name="planted")


# each runs the whole search plan on small data (tens of seconds on a loaded host)
@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["A", "B"])
def test_the_bench_options_do_not_depend_on_the_dataset_name_and_repeat(split, protocol):
    budget = 60.0  # the whole plan fits: the choice does not depend on the host's speed
    first, report = bench_options(split, protocol, "spectral", None, budget)
    renamed = dataclasses.replace(split, name="lastfm")
    again, again_report = bench_options(renamed, protocol, "spectral", None, budget)
    assert report["stopped"] == "plan done" and len(report["trials"]) > 3
    assert first == again and report["chosen"] == again_report["chosen"]
    # B chooses on valid, A on a held-out slice of train+valid (what `shortlist train` does)
    assert report["slice"] == ("valid split" if protocol == "B" else again_report["slice"])
    assert (report["slice"] == "valid split") == (protocol == "B")


@pytest.mark.slow
def test_the_bench_defaults_choose_what_shortlist_train_chooses(split):
    budget = 60.0
    bench, _ = bench_options(split, "A", "spectral", None, budget)
    cfg = TrainConfig(model="spectral", tune_budget=budget)
    served, report = chosen_options(split.train_valid(), cfg, lambda _m: None)
    assert bench == served and report["stopped"] == "plan done"


def test_the_bench_tunes_by_default_with_the_train_budget(split, monkeypatch):
    from shortlist.tools.bench import quality

    seen = {}

    def fake_tune(train, model, budget, base, **kw):
        seen["budget"] = budget
        raise RuntimeError("stop here")

    monkeypatch.setattr("shortlist.training.tuning.tune", fake_tune)
    with pytest.raises(RuntimeError, match="stop here"):
        quality.bench_options(split, "B", "spectral", None)
    assert seen["budget"] == DEFAULT_BUDGET
    # a budget of 0: the model's defaults, whatever the dataset is called
    assert quality.bench_options(split, "B", "spectral", {"rank": 8}, 0.0) == ({"rank": 8}, None)
