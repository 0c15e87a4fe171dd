"""`shortlist bench dislikes` on a tiny MovieLens-format file: every arm's figures, and bad
arms refused with a message."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from shortlist.tools.bench import dislikes
from shortlist.tools.cli import app


@pytest.fixture(scope="module")
def tiny_ml(tmp_path_factory):
    """120 users x 80 items: users of group g rate group g's items 4-5, the other's 1-2."""
    rng = np.random.default_rng(0)
    lines = []
    for u in range(1, 121):
        g = u % 2
        for i in rng.choice(80, 25, replace=False) + 1:
            rating = rng.integers(4, 6) if i % 2 == g else rng.integers(1, 3)
            lines.append(f"{u}\t{i}\t{rating}\t{1_700_000_000 + int(i)}")
    directory = tmp_path_factory.mktemp("ml")
    (directory / "u.data").write_text("\n".join(lines) + "\n")
    return directory


def test_dislikes_bench_reports_each_arm(tiny_ml):
    fast = {"dim": 16, "epochs": 2, "neg_epochs": 2, "batch_size": 512, "negatives": 32}
    out = dislikes.run(tiny_ml, seeds=[0], options=fast, arms=["lightgcn-neg", "spectral"])
    assert out["dislikes"] > 0 and out["test_excludes"] == "train"
    for arm in ("lightgcn-neg", "spectral"):
        assert 0 < out[f"{arm}_recall@20"] <= 1
        assert out[f"{arm}_disliked_items@20"] == pytest.approx(
            20 * out[f"{arm}_disliked@20"], abs=1e-3
        )
    assert out["lightgcn-neg_beta"] in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
    assert "lightgcn_recall@20" not in out


def test_dislikes_bench_refuses_unknown_arms(tiny_ml):
    result = CliRunner().invoke(
        app, ["bench", "dislikes", "--data", str(tiny_ml), "--arms", "lightgcn,nope"]
    )
    assert result.exit_code != 0
    assert "--arms must name some of" in result.output
