"""`shortlist bench ranking`: the ranking service alone over gRPC, in its own process."""

from __future__ import annotations

import pytest

from shortlist.tools.bench import ranking_bench


@pytest.mark.parametrize("in_process", [False, True])
def test_ranking_bench_times_real_rank_calls(bundle_dir, redis_url, in_process):
    result = ranking_bench.run(
        bundle_dir, requests=40, candidates=50, redis_url=redis_url, in_process=in_process
    )
    assert result["server"] == ("in_process" if in_process else "process")
    assert result["requests"] == 40 and result["candidates"] == 50
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"]
