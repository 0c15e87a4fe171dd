"""The soak bench's figures: per-minute percentiles and the memory bound (a full run is
`make bench-soak`)."""

from __future__ import annotations

import os

import pytest

from shortlist.tools import loadtest as lt
from shortlist.tools.bench import soak


def test_memory_report_measures_growth_after_the_warm_up():
    sampler = soak.MemorySampler({"me": os.getpid()}, interval_s=1)
    sampler.t = [0.0, 30.0, 60.0, 90.0, 120.0, 150.0]
    sampler.rss = {
        "flat": [50.0, 100.0, 100.0, 101.0, 100.0, 102.0],  # warm-up growth is not counted
        "leaky": [100.0, 100.0, 105.0, 110.0, 115.0, 120.0],
        "gone": [100.0, 100.0, 100.0, float("nan"), float("nan"), float("nan")],
    }
    rows = {r["process"]: r for r in soak.memory_report(sampler, warmup_s=60, bound=0.10)}
    assert rows["flat"]["rss_start_mib"] == 100.0 and rows["flat"]["within_bound"]
    assert rows["flat"]["growth"] == pytest.approx(0.02)
    assert rows["leaky"]["growth"] == pytest.approx(15 / 105, abs=1e-4)
    assert not rows["leaky"]["within_bound"]
    assert rows["leaky"]["slope_mib_per_min"] == pytest.approx(10.0)
    assert not rows["gone"]["within_bound"]
    # the last sample of each minute (0-59 s, 60-119 s, 120-150 s)
    assert rows["leaky"]["rss_by_minute_mib"] == [100.0, 110.0, 120.0]


def test_sampler_reads_this_process():
    sampler = soak.MemorySampler({"me": os.getpid()}, interval_s=0.05).start()
    sampler.stop()
    assert len(sampler.t) >= 2 and all(v > 1 for v in sampler.rss["me"])


def test_per_minute_splits_after_the_generator_warm_up():
    config = lt.LoadConfig(target="x", rate=10, duration_s=120, warmup_s=5)
    samples = lt.Samples()
    for i in range(1250):
        t = i / 10
        kind = lt.FEEDBACK if i % 5 == 0 else lt.RECOMMEND
        code = "UNAVAILABLE" if i == 700 else "OK"
        samples.add(t, t, 0.001 * (1 + i % 10), kind, code)
    rows = soak.per_minute(lt.LoadResult(config, samples, {}))
    assert [r["minute"] for r in rows] == [1, 2]
    assert [r["calls"] for r in rows] == [600, 600]
    assert [r["errors"] for r in rows] == [0, 1]
    assert rows[0]["recommend_p99_ms"] == pytest.approx(10.0, abs=0.1)
