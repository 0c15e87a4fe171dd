"""`shortlist demo` runs end to end on the embedded default and tells the feedback story."""

from __future__ import annotations

from typer.testing import CliRunner

from shortlist.tools.cli import app


def test_demo_runs_and_feedback_changes_recommendations():
    result = CliRunner().invoke(app, ["demo"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "before feedback" in out and "after feedback" in out
    assert "liked/disliked items still recommended: none" in out
    assert "fallback: unknown_user" in out  # the newcomer starts on popularity
    assert "INVALID_ARGUMENT" in out
    assert "demo finished" in out
