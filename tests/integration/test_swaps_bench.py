"""`shortlist bench swaps`: the co-located stages over repeated hot swaps hold two bundles
and print a JSON line with the memory per swap."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from shortlist.tools.cli import app


def test_swaps_bench_holds_two_bundles_and_reports_memory(bundle_dir, redis_url):
    args = ["bench", "swaps", "--bundle", str(bundle_dir), "--swaps", "4"]
    result = CliRunner().invoke(app, [*args, "--redis-url", redis_url])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["bundles_held"] == 2 and report["swaps"] == 4
    assert len(report["rss_mb_by_swap"]) == 5 and min(report["rss_mb_by_swap"]) > 0
    assert isinstance(report["rss_growth_20_swaps"], float)
