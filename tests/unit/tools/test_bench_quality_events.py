"""`shortlist bench quality --events`: a time split of an event log, the same JSON line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from shortlist.data.events import load_events
from shortlist.data.splits import time_slice_holdout
from shortlist.tools.cli import app


def planted_log(path, n_users=80, n_items=40, per_user=12, seed=0):
    """Users like items of their own group of 4, at times spread over 100 days."""
    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id,kind,timestamp"]
    for u in range(n_users):
        group = u % 10
        for _ in range(per_user):
            item = group * 4 + int(rng.integers(0, 4)) if rng.random() < 0.8 else rng.integers(40)
            lines.append(f"u{u},i{item},like,{1767225600 + int(rng.integers(0, 100 * 86400))}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_time_slice_holdout_never_trains_on_the_future(tmp_path):
    split = time_slice_holdout(load_events([planted_log(tmp_path / "log.csv")]))
    data = load_events([tmp_path / "log.csv"])
    times = {}
    pos = data.positives.tocoo()
    for u, i, t in zip(pos.row, pos.col, data.timestamps):
        times[(u, i)] = t

    def span(part):
        m = part.positives.tocoo()
        return [times[(u, i)] for u, i in zip(m.row, m.col)]

    assert max(span(split.train)) <= min(span(split.valid)) <= max(span(split.valid))
    assert max(span(split.valid)) <= min(span(split.test))
    test_share = split.test.positives.nnz / data.positives.nnz
    assert 0.08 <= test_share <= 0.12


def test_bench_quality_on_events_prints_the_metrics_json(tmp_path):
    log = planted_log(tmp_path / "log.csv")
    args = ["bench", "quality", "--events", str(log), "--protocol", "A", "--model", "mf-bpr"]
    args += ["--tune-budget", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["dataset"] == "events" and summary["protocol"] == "A"
    assert 0.0 <= summary["recall@20"] <= 1.0 and summary["users"] > 0


@pytest.mark.parametrize(
    "args", [["--protocol", "A"], ["--data", "x", "--events", "y", "--protocol", "A"]]
)
def test_bench_quality_needs_one_source(args):
    result = CliRunner().invoke(app, ["bench", "quality", *args])
    assert result.exit_code == 2 and "--data or --events" in result.output


def test_bench_quality_names_a_bad_event_row(tmp_path):
    log = tmp_path / "bad.csv"
    log.write_text("user_id,item_id,kind,timestamp\nu,a,like,1\nu,b,like,soon\n")
    result = CliRunner().invoke(app, ["bench", "quality", "--events", str(log), "--protocol", "A"])
    assert result.exit_code == 2 and "row 2, column 'timestamp'" in result.output
