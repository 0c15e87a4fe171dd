"""The feedback benchmark itself, at a small scale, over tansu and the real Redis."""

from __future__ import annotations

import pytest

from shortlist.tools.bench.feedback import FeedbackBenchConfig, run
from tests.progress import climbs_to_total, record

pytestmark = pytest.mark.integration


def test_feedback_bench_measures_freshness_and_audits_exactly_once(redis_url, bundle):
    cfg = FeedbackBenchConfig(trials=10, events=2000, batch=500, redis_url=redis_url)
    results = []
    bars = record(lambda: results.append(run(cfg, progress=lambda _msg: None, bundle=bundle)))
    result = results[0]
    fresh, thr = result["freshness"], result["throughput"]
    assert fresh["trials"] == 10 and 0 < fresh["p50_ms"] <= fresh["p99_ms"] <= fresh["max_ms"]
    assert thr["applied"] == 2000 and thr["duplicates_skipped"] == thr["replayed"] == 100
    assert thr["redis_dedup_marks"] == 2000
    assert thr["redis_user_like_counters"] == thr["expected_likes"]
    assert thr["exactly_once"] and thr["events_per_s"] > 0
    # every timed loop shows a bar with ETA: a loop that loses it fails here by name
    steps = ["freshness trials", "events published", "events applied"]
    assert [label for label, _ in bars] == steps, f"steps without progress: {bars}"
    for label, run_ in bars:
        climbs_to_total(label, run_)
    assert [run_[-1][1] for _, run_ in bars] == [10, 3, 2100]  # trials, batches, events
