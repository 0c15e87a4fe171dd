"""`shortlist bench stages`: where a running stack's time went, from its stage histograms.

Scrapes every service process's /metrics (gateway workers included), adds up
`shortlist_stage_latency_seconds` per (service, stage) over arms and processes, and gives
the count, the exact mean (sum / count) and p50 / p99 interpolated within the histogram's
buckets as Prometheus' histogram_quantile does (so only as fine as the buckets).
"""

from __future__ import annotations

import math
from collections import defaultdict
from urllib.error import URLError
from urllib.request import urlopen

from prometheus_client.parser import text_string_to_metric_families

from shortlist.config import Settings
from shortlist.tools.stack import worker_metrics_ports

STAGE_METRIC = "shortlist_stage_latency_seconds"


def metrics_urls(settings: Settings) -> list[str]:
    """The /metrics of each process a `shortlist up` with these settings runs."""
    ports = worker_metrics_ports(settings)
    ports.append(settings.feedback_metrics_port)
    if not settings.colocate:
        ports += [settings.retrieval_metrics_port, settings.ranking_metrics_port]
    return [f"http://{settings.metrics_host}:{port}/metrics" for port in ports]


def scrape(urls: list[str]) -> tuple[dict[tuple[str, str], dict], list[str]]:
    """(service, stage) -> {"buckets": {le: cumulative count}, "sum", "count"}, summed over
    arms and processes; and the urls that did not answer."""
    stages: dict[tuple[str, str], dict] = defaultdict(
        lambda: {"buckets": defaultdict(float), "sum": 0.0, "count": 0.0}
    )
    missing = []
    for url in urls:
        try:
            with urlopen(url, timeout=5) as reply:
                text = reply.read().decode()
        except (URLError, OSError):
            missing.append(url)
            continue
        for family in text_string_to_metric_families(text):
            if family.name != STAGE_METRIC:
                continue
            for sample in family.samples:
                key = (sample.labels["service"], sample.labels["stage"])
                if sample.name.endswith("_bucket"):
                    stages[key]["buckets"][float(sample.labels["le"])] += sample.value
                elif sample.name.endswith("_sum"):
                    stages[key]["sum"] += sample.value
                elif sample.name.endswith("_count"):
                    stages[key]["count"] += sample.value
    return dict(stages), missing


def bucket_quantile(q: float, buckets: dict[float, float]) -> float:
    """histogram_quantile: linear within the bucket holding rank q * count (seconds)."""
    bounds = sorted(buckets)
    total = buckets.get(math.inf, 0.0)
    if total == 0:
        return math.nan
    rank, lower, below = q * total, 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower  # past the last finite bound: its value is all that is known
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def summary(stages: dict[tuple[str, str], dict]) -> list[dict]:
    rows = []
    for (service, stage), h in sorted(stages.items()):
        if not h["count"]:
            continue
        rows.append(
            {
                "service": service,
                "stage": stage,
                "count": int(h["count"]),
                "mean_ms": round(1000 * h["sum"] / h["count"], 3),
                "p50_ms": round(1000 * bucket_quantile(0.5, h["buckets"]), 3),
                "p99_ms": round(1000 * bucket_quantile(0.99, h["buckets"]), 3),
            }
        )
    return rows
