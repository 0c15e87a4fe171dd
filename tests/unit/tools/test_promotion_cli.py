"""`shortlist train` gates a second bundle against the serving one; promote and rollback move
LATEST by hand; bad requests exit 2 with a message."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from shortlist.bundle.promotion import history, latest_version, versions
from shortlist.tools.cli import app

pytestmark = pytest.mark.slow  # trains bundles

SMALL = ["--n-users", "200", "--n-items", "120", "--model", "mf-bpr", "--epochs", "5"]
SMALL += ["--tune-budget", "0"]


def _run(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_train_gates_the_second_bundle_then_promote_and_rollback(tmp_path):
    out = str(tmp_path)
    first = _run("train", "--out", out, *SMALL)
    assert first.exit_code == 0, first.output
    v1 = latest_version(tmp_path)
    assert "gate: candidate" not in first.output  # nothing served yet: nothing to gate against

    second = _run("train", "--out", out, *SMALL, "--seed", "1", "--no-refit")
    assert second.exit_code == 0, second.output
    assert "gate: candidate ndcg@20" in second.output
    v2 = versions(tmp_path)[-1]
    manifest = json.loads((tmp_path / v2 / "manifest.json").read_text())
    assert manifest["gate"]["serving_version"] == v1
    promoted = manifest["gate"]["promoted"]
    assert latest_version(tmp_path) == (v2 if promoted else v1)
    prom = (tmp_path / "gate.prom").read_text()
    assert 'shortlist_gate_metric{bundle="serving",metric="ndcg@20"}' in prom
    assert f"shortlist_gate_promoted {float(promoted)}" in prom

    assert _run("promote", v2, "--out", out).exit_code == 0
    assert latest_version(tmp_path) == v2
    back = _run("rollback", "--out", out)
    assert back.exit_code == 0, back.output
    assert latest_version(tmp_path) == v1
    assert [e["reason"] for e in history(tmp_path)][-1] == "rollback"


def test_promote_and_rollback_refuse_what_cannot_be_done(tmp_path):
    missing = _run("promote", "v-none", "--out", str(tmp_path))
    assert missing.exit_code == 2
    assert "no bundle 'v-none'" in missing.output
    nothing = _run("rollback", "--out", str(tmp_path))
    assert nothing.exit_code == 2
    assert "nothing to roll back" in nothing.output


@pytest.mark.parametrize(
    "option, value", [("--gate-margin", "1.5"), ("--keep", "0"), ("--options", "{bad")]
)
def test_train_refuses_bad_options_before_reading_anything(tmp_path, option, value):
    bad = _run("train", "--out", str(tmp_path), option, value)
    assert bad.exit_code == 2
    assert option in bad.output
    assert not list(tmp_path.iterdir())  # nothing written
