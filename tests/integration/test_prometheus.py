"""A real Prometheus server scrapes the stack under traffic: every Grafana panel query and
dashboard variable returns data through Prometheus's HTTP API, and the alert rules load.

The in-process A/B stack (both arms, share 0.5) exports /metrics on one port; Prometheus
scrapes it every second under the job name the dashboard and alerts expect (`shortlist`),
while `shortlist loadtest` sends Recommend and SendFeedback calls.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from shortlist.tools import loadtest
from shortlist.tools.stack import free_port, port_open, wait_for

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "shortlist-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SCRAPE_S = 1
# Grafana's $__rate_interval is max(4 x scrape interval, $__interval + scrape interval).
GRAFANA_VARS = {
    "$__rate_interval": f"{5 * SCRAPE_S}s",
    "$__interval": f"{SCRAPE_S}s",
    "$service": ".*",
    "$arm": ".*",
}


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail(
            "`prometheus` is not on PATH: install the Debian package `prometheus` "
            "(.ci/install-tools.sh does)"
        )
    return path


@pytest.fixture(scope="module")
def prometheus(ab_stack, tmp_path_factory):
    """Prometheus on a free port scraping the stack's /metrics every second."""
    binary = prometheus_binary()
    root = tmp_path_factory.mktemp("prometheus")
    shutil.copy(ALERTS, root / "alerts.yml")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {
                "job_name": "shortlist",
                "static_configs": [
                    {"targets": [ab_stack.metrics_target], "labels": {"app": "inprocess"}}
                ],
            }
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(root / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: port_open("127.0.0.1", port) and ready(url), 30, "prometheus")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def ready(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200
    except OSError:
        return False


def api(url: str, path: str, **params: str) -> dict:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{query}", timeout=5) as reply:
        body = json.loads(reply.read())
    assert body["status"] == "success", body
    return body["data"]


def substitute(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (f"{p['title']} [{t['refId']}]", substitute(t["expr"]))
        for p in dashboard["panels"]
        for t in p.get("targets", [])
    ]


def variable_queries() -> list[tuple[str, str, str]]:
    """(variable, label, metric) of each `label_values(metric, label)` variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        text = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", text).groups()
        out.append((var["name"], label, metric))
    return out


def has_data(result: dict) -> bool:
    """A non-empty vector with at least one finite value (NaN is what no traffic gives)."""
    values = [float(s["value"][1]) for s in result["result"]]
    return any(math.isfinite(v) for v in values)


@pytest.fixture(scope="module")
def traffic(ab_stack, bundle):
    """Recommend (10% unknown users) and SendFeedback (20%) at 40/s in the background.

    The subject is what Prometheus scrapes, not capacity (`make bench-serving` measures that):
    the rate leaves room for this process to share a slow 2-core host with the other test
    process (`make test`), which may be training the whole-stack tests' bundles meanwhile."""
    config = loadtest.LoadConfig(
        target=ab_stack.gateway_target,
        rate=40,
        duration_s=15,
        warmup_s=0,
        users=bundle.users.to_list(),
        unknown_share=0.1,
        feedback_share=0.2,
        timeout_s=5,
    )
    results = []
    thread = threading.Thread(target=lambda: results.append(loadtest.run(config)), daemon=True)
    thread.start()
    yield config
    thread.join(60)
    assert results, "the load generator did not finish"
    summary = results[0].summary
    # on failure: the whole summary (latency, feedback errors, load) and the per-second series
    assert summary["errors"] == {}, (summary, loadtest.per_second(results[0]))


def test_every_dashboard_panel_query_returns_data_under_traffic(prometheus, traffic):
    queries = panel_queries()
    assert len(queries) >= 20
    pending = dict(queries)
    deadline = time.monotonic() + 30
    last: dict[str, dict] = {}
    while pending and time.monotonic() < deadline:
        for title, expr in list(pending.items()):
            last[title] = api(prometheus, "query", query=expr)
            if has_data(last[title]):
                del pending[title]
        if pending:
            time.sleep(SCRAPE_S)
    assert not pending, "panels without data: " + "; ".join(
        f"{t}: {pending[t]} -> {last.get(t)}" for t in pending
    )


def test_dashboard_variables_list_both_arms_and_all_services(prometheus, traffic):
    values = {}
    for name, label, metric in variable_queries():
        values[name] = set(api(prometheus, f"label/{label}/values", **{"match[]": metric}))
    assert {"a", "b"} <= values["arm"], values
    assert {"gateway", "retrieval", "ranking"} <= values["service"], values


def test_alert_rules_load_and_none_fires(prometheus, traffic):
    groups = api(prometheus, "rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 5
    assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
    firing = [a for a in api(prometheus, "alerts")["alerts"] if a["state"] == "firing"]
    assert not firing, firing
    target = api(prometheus, "targets")["activeTargets"][0]
    assert target["health"] == "up" and target["labels"]["job"] == "shortlist"
