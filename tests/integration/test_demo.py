"""`shortlist demo` runs end to end on the embedded default and tells the feedback story."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from shortlist.tools.cli import app


def test_demo_runs_and_feedback_changes_recommendations():
    result = CliRunner().invoke(app, ["demo"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "before feedback" in out and "after feedback" in out
    assert "liked/disliked items still recommended: none" in out
    # the four likes in a topic new to the user bring it into the next top 10 (decision 0030;
    # none came back before it). The planted-topics test holds the >= 3 of 10 bound.
    back = re.search(r"items now recommended \(the topic just liked\): (\d+) of 10", out)
    assert back and int(back.group(1)) >= 1, out
    assert "fallback: unknown_user" in out  # the newcomer starts on popularity
    assert "INVALID_ARGUMENT" in out
    assert "demo finished" in out
    assert "http://127.0.0.1:8080/console" in out  # where the web console is
