"""The services' Prometheus metrics, summed over processes, for the overview.

Each service serves `/metrics` (shortlist.rpc.telemetry); the console scrapes them when the
overview is asked for, with prometheus_client's own parser, and turns counters into rates
against its previous scrape.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from shortlist.config import Settings

SCRAPE_TIMEOUT_S = 1.0


def default_targets(settings: Settings) -> list[str]:
    """HOST:PORT of each service's /metrics under `make up` (ports of the settings)."""
    ports = (
        settings.gateway_metrics_port,
        settings.retrieval_metrics_port,
        settings.ranking_metrics_port,
        settings.feedback_metrics_port,
        settings.archiver_metrics_port,
    )
    return [f"{settings.metrics_host}:{p}" for p in ports if p]


def scrape(target: str) -> list[Any] | None:
    """The metric families of one target, None when it does not answer."""
    url = target if target.startswith("http") else f"http://{target}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return list(text_string_to_metric_families(text))


class MetricsSummary:
    """Totals an operator watches, summed over the targets; rates since the last call."""

    def __init__(self, targets: list[str]) -> None:
        self.targets = list(targets)
        self._last: tuple[float, dict[str, float]] | None = None
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        up: list[str] = []
        down: list[str] = []
        totals: dict[str, float] = defaultdict(float)
        requests: dict[tuple[str, str, str], float] = defaultdict(float)
        fallbacks: dict[tuple[str, str], float] = defaultdict(float)
        published: dict[tuple[str, str], float] = defaultdict(float)
        models: dict[str, set[str]] = defaultdict(set)
        for target in self.targets:
            families = scrape(target)
            if families is None:
                down.append(target)
                continue
            up.append(target)
            for family in families:
                for s in family.samples:
                    name, labels, value = s.name, s.labels, s.value
                    if name == "shortlist_rpc_requests_total" and labels.get("service") == (
                        "gateway"
                    ):
                        key = (labels["method"], labels["code"], labels["arm"])
                        requests[key] += value
                        totals["gateway_requests"] += value
                        if labels["code"] != "OK":
                            totals["gateway_errors"] += value
                    elif name == "shortlist_fallbacks_total":
                        fallbacks[(labels["reason"], labels["arm"])] += value
                        totals["fallbacks"] += value
                    elif name == "shortlist_feedback_events_published_total":
                        published[(labels["arm"], labels["kind"])] += value
                        totals["events_published"] += value
                    elif name == "shortlist_feedback_events_applied_total":
                        totals["events_applied"] += value
                    elif name == "shortlist_feedback_events_malformed_total":
                        totals["events_malformed"] += value
                    elif name == "shortlist_feedback_consumer_lag":
                        totals["consumer_lag"] += value
                    elif name == "shortlist_model_info":
                        models[labels.get("arm", "a")].add(labels.get("version", "?"))
        rates = self._rates(dict(totals))
        return {
            "targets_up": up,
            "targets_down": down,
            "totals": {k: int(v) for k, v in sorted(totals.items())},
            "rates": rates,
            "requests": [
                {"method": m, "code": c, "arm": a, "count": int(v)}
                for (m, c, a), v in sorted(requests.items())
            ],
            "fallbacks": [
                {"reason": r, "arm": a, "count": int(v)} for (r, a), v in sorted(fallbacks.items())
            ],
            "published": [
                {"arm": a, "kind": k, "count": int(v)} for (a, k), v in sorted(published.items())
            ],
            "serving_versions": {arm: sorted(v) for arm, v in sorted(models.items())},
        }

    def _rates(self, totals: dict[str, float]) -> dict[str, float | None]:
        """Per-second change of each total since the previous read (None on the first)."""
        now = time.monotonic()
        with self._lock:
            last, self._last = self._last, (now, totals)
        if last is None or now - last[0] < 0.2:
            return {}
        dt = now - last[0]
        return {
            f"{name}_per_s": round(max(0.0, value - last[1].get(name, 0.0)) / dt, 2)
            for name, value in totals.items()
            if name in ("gateway_requests", "fallbacks", "events_published", "events_applied")
        }
