"""`shortlist bench stages`: stage histograms scraped over HTTP and summed per stage."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram, start_http_server

from shortlist.config import Settings
from shortlist.tools.bench.stages import (
    STAGE_METRIC,
    bucket_quantile,
    metrics_urls,
    scrape,
    summary,
)
from tests.conftest import free_port


def test_bucket_quantile_interpolates_within_the_bucket():
    buckets = {0.001: 50.0, 0.002: 100.0, math.inf: 100.0}
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.001)
    assert bucket_quantile(0.99, buckets) == pytest.approx(0.001 + 0.001 * 49 / 50)
    assert bucket_quantile(0.99, {0.001: 10.0, math.inf: 100.0}) == 0.001  # past the last bound
    assert math.isnan(bucket_quantile(0.5, {math.inf: 0.0}))


def test_stages_are_summed_over_processes_and_arms():
    urls = []
    for process in range(2):
        registry = CollectorRegistry()
        h = Histogram(
            STAGE_METRIC.removesuffix("_seconds"),
            "stage latency",
            ["service", "stage", "arm"],
            unit="seconds",
            registry=registry,
            buckets=(0.001, 0.002, 0.005),
        )
        for arm in ("a", "b"):
            for _ in range(10):
                h.labels("ranking", "scoring", arm).observe(0.0015 + process * 0.002)
        h.labels("retrieval", "ann", "a").observe(0.0005)
        port = free_port()
        start_http_server(port, addr="127.0.0.1", registry=registry)
        urls.append(f"http://127.0.0.1:{port}/metrics")
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    found, missing = scrape([*urls, dead])
    assert missing == [dead]
    rows = {(r["service"], r["stage"]): r for r in summary(found)}
    scoring = rows[("ranking", "scoring")]
    assert scoring["count"] == 40
    assert scoring["mean_ms"] == pytest.approx(2.5)  # half at 1.5 ms, half at 3.5 ms
    assert 1.0 <= scoring["p50_ms"] <= 2.0 and 2.0 <= scoring["p99_ms"] <= 5.0
    assert rows[("retrieval", "ann")]["count"] == 2


def test_co_located_stacks_are_scraped_at_each_gateway_worker():
    s = Settings(gateway_metrics_port=9200, colocate=1, gateway_workers=3)
    assert metrics_urls(s) == [f"http://127.0.0.1:{p}/metrics" for p in (9200, 9201, 9202, 9104)]
    assert len(metrics_urls(Settings())) == 4
