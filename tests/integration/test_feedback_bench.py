"""The feedback benchmark itself, at a small scale, over tansu and the real Redis."""

from __future__ import annotations

import pytest

from shortlist.tools.bench.feedback import FeedbackBenchConfig, run

pytestmark = pytest.mark.integration


def test_feedback_bench_measures_freshness_and_audits_exactly_once(redis_url, bundle):
    cfg = FeedbackBenchConfig(trials=10, events=2000, batch=500, redis_url=redis_url)
    result = run(cfg, progress=lambda _msg: None, bundle=bundle)
    fresh, thr = result["freshness"], result["throughput"]
    assert fresh["trials"] == 10 and 0 < fresh["p50_ms"] <= fresh["p99_ms"] <= fresh["max_ms"]
    assert thr["applied"] == 2000 and thr["duplicates_skipped"] == thr["replayed"] == 100
    assert thr["redis_dedup_marks"] == 2000
    assert thr["redis_user_like_counters"] == thr["expected_likes"]
    assert thr["exactly_once"] and thr["events_per_s"] > 0
