"""`shortlist loadtest` against the in-process stack over real Redis and the tansu broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shortlist.tools import loadtest
from shortlist.tools.stack import free_port
from tests.progress import climbs_to_total, record

REPO = Path(__file__).resolve().parents[2]
KEYS = ("rate", "achieved_rps", "p50_ms", "p95_ms", "p99_ms", "max_ms", "errors")
KEYS += ("duration_s", "requests", "machine")


@pytest.fixture(scope="module")
def users_file(bundle, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("loadtest") / "users.txt"
    path.write_text("# trained users\n" + "\n".join(bundle.users.to_list()) + "\n")
    return path


def shortlist_command() -> list[str]:
    script = Path(sys.executable).parent / "shortlist"
    return [str(script)] if script.exists() else [sys.executable, "-m", "shortlist.tools.cli"]


def test_python_api_holds_the_rate_with_feedback(stack, users_file):
    config = loadtest.LoadConfig(
        target=stack.gateway_target,
        rate=100,
        duration_s=3,
        warmup_s=1,
        users=loadtest.read_users(users_file),
        feedback_share=0.1,
        timeout_s=5,
    )
    result = loadtest.run(config)
    summary = result.summary
    assert set(KEYS) <= set(summary)
    assert summary["errors"] == {}, summary["errors"]
    assert abs(summary["achieved_rps"] - 100) <= 10, summary
    assert summary["requests"] == 300 and summary["ok"] == 300
    assert summary["feedback_requests"] > 0  # like/dislike of items shown before
    assert summary["recommend_requests"] + summary["feedback_requests"] == 300
    assert 0 < summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    assert summary["machine"]["cores"] >= 1 and summary["machine"]["cpu_model"]
    line = loadtest.json_line(summary)
    assert json.loads(line)["requests"] == 300


def test_cli_prints_tables_json_last_and_writes_the_plot(stack, tmp_path):
    png = tmp_path / "latency.png"
    proc = subprocess.run(
        [
            *shortlist_command(),
            "loadtest",
            "--target",
            stack.gateway_target,
            "--rate",
            "100",
            "--duration",
            "3",
            "--warmup",
            "1",
            "--n-users",
            "300",
            "--k",
            "20",
            "--connections",
            "3",
            "--plot",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(KEYS) <= set(summary)
    assert summary["rate"] == 100 and summary["duration_s"] == 3
    assert summary["connections"] == 3
    assert abs(summary["achieved_rps"] - 100) <= 10, summary
    assert summary["errors"] == {}, summary["errors"]
    assert summary["p99_ms"] > 0 and summary["max_ms"] >= summary["p99_ms"]
    assert "p99" in proc.stdout and "errors by status code" in proc.stdout
    assert "cpu_model" in proc.stdout  # the machine table
    assert png.is_file() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unreachable_target_counts_unavailable(tmp_path):
    port = free_port()  # nothing listens there
    config = loadtest.LoadConfig(
        target=f"127.0.0.1:{port}", rate=50, duration_s=1, warmup_s=0, timeout_s=2
    )
    results = []
    bars = record(lambda: results.append(loadtest.run(config)))
    result = results[0]
    assert [label for label, _ in bars] == ["load test requests"], bars  # a bar with ETA
    climbs_to_total(*bars[0])
    assert bars[0][1][-1][1] == 50 and len(bars[0][1]) >= 2  # moved before the end
    summary = result.summary
    assert summary["requests"] == 50 and summary["ok"] == 0
    assert summary["errors"] == {"UNAVAILABLE": 50}
    json.loads(loadtest.json_line(summary))
    assert loadtest.plot(result, tmp_path / "down.png").stat().st_size > 0


def test_config_is_validated():
    with pytest.raises(ValueError, match="rate"):
        loadtest.LoadConfig(target="x:1", rate=0, duration_s=1).validate()
    with pytest.raises(ValueError, match="feedback_share"):
        loadtest.LoadConfig(target="x:1", rate=1, duration_s=1, feedback_share=2).validate()
    with pytest.raises(ValueError, match="connections"):
        loadtest.LoadConfig(target="x:1", rate=1, duration_s=1, connections=0).validate()
    with pytest.raises(ValueError, match="empty address"):
        loadtest.LoadConfig(target="x:1,", rate=1, duration_s=1).validate()
    with pytest.raises(ValueError, match="one at least for each"):
        loadtest.LoadConfig(target="x:1,x:2,x:3", rate=1, duration_s=1, connections=2).validate()
    spread = loadtest.LoadConfig(target="x:1, x:2", rate=1, duration_s=1, connections=4)
    spread.validate()
    assert spread.targets == ["x:1", "x:2"]
