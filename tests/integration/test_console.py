"""The web console in a real browser (headless Chromium driven by Playwright) and over real
HTTP, mounted under /console in a Starlette app on its own uvicorn server, against the
in-process stack over the real Redis and broker."""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from shortlist.evaluation.protocols import ProtocolResult
from shortlist.rpc.security import hash_key
from shortlist.rpc.telemetry import start_metrics_server
from shortlist.services.console import create_console
from shortlist.tools.bench.report import write_report
from tests.conftest import eventually, free_port

CHROMIUM = os.environ.get("SHORTLIST_CHROMIUM", "/usr/bin/chromium")
KEY = "console-admin-key-for-tests"
RECOMMEND_ONLY_KEY = "console-reader-key-for-tests"
ARM_B_VERSION = "v-arm-b"
# A folder to keep the screenshots in as well (docs/console.png is the user page's).
KEEP_SCREENSHOTS = os.environ.get("SHORTLIST_CONSOLE_SCREENSHOTS", "")


def quality_report(directory: Path) -> Path:
    """What `shortlist bench quality --report DIR` writes (its own writer): the markdown
    report and a validation-curve PNG per run."""
    history = [
        {"epoch": float(e), "ndcg@20": 0.05 + 0.01 * e, "recall@20": 0.1 + e / 50}
        for e in (1, 2, 3)
    ]
    result = ProtocolResult(
        "synthetic",
        "B",
        "mf-bpr",
        {"recall@20": 0.16, "ndcg@20": 0.08},
        1.0,
        0.5,
        "f00d",
        {},
        history,
    )
    return write_report([result], directory)


@pytest.fixture(scope="module")
def console_url(stack, settings, bundle_dir, bundle, tmp_path_factory):
    metrics_port = free_port()
    metrics = start_metrics_server(metrics_port)
    common = dict(
        gateway_target=stack.gateway_target, metrics_targets=[f"127.0.0.1:{metrics_port}"]
    )
    reports = tmp_path_factory.mktemp("reports")
    quality_report(reports / "quality")
    base = settings.replace(bundle=str(bundle_dir), reports_dir=str(reports))
    console = create_console(
        base.replace(
            console_key_hashes=f"{hash_key(KEY)}:feedback,{hash_key(RECOMMEND_ONLY_KEY)}:recommend"
        ),
        **common,
    )
    read_only = create_console(base, **common)
    # an A/B experiment's console: the arms and their bundles as the settings name them (the
    # console reads arm b's manifest only; serving two arms is tests/integration/test_ab.py's)
    arm_b = tmp_path_factory.mktemp("arm-b")
    manifest = json.loads((bundle_dir / bundle.version / "manifest.json").read_text())
    (arm_b / "manifest.json").write_text(json.dumps({**manifest, "version": ARM_B_VERSION}))
    ab = create_console(base.replace(ab_bundle_b=str(arm_b), ab_share_b=0.25), **common)
    subs = {"/console": console, "/readonly": read_only, "/ab": ab}
    app = Starlette(routes=[Mount(path, app=sub) for path, sub in subs.items()])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    eventually(lambda: server.started, timeout_s=20)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    for sub in subs.values():
        sub.state.console.close()
    metrics.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"browser tests need Chromium at {CHROMIUM} (.ci/install-tools.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def screenshot(page, tmp_path: Path, name: str) -> Path:
    """The whole page as PNG under the test's folder (and SHORTLIST_CONSOLE_SCREENSHOTS)."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    if KEEP_SCREENSHOTS:
        Path(KEEP_SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(KEEP_SCREENSHOTS) / name)
    return path


def call(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def listed(page) -> list[str]:
    """The item ids of the recommendation list as the page shows it now."""
    return page.locator("#recommendations > li").evaluate_all("els => els.map(e => e.dataset.item)")


def trained_user(bundle, n: int) -> str:
    return bundle.users.to_list()[n]


def test_overview_shows_the_serving_bundle_and_its_figures(
    console_url, page, bundle, client, tmp_path
):
    client.recommend(trained_user(bundle, 1), 5)
    page.goto(f"{console_url}/console/")
    assert page.locator("#serving-version").inner_text() == bundle.version
    row = page.locator("#versions tr.serving")
    assert bundle.version in row.inner_text()
    assert "ranker_ndcg@20" in row.inner_text()  # the manifest's offline figures
    assert page.locator("#arms").inner_text().startswith("off")
    assert int(page.locator("#gateway-requests").inner_text()) >= 1  # scraped /metrics
    screenshot(page, tmp_path, "overview.png")


def test_like_changes_the_list_and_shows_in_the_feed(console_url, page, bundle, tmp_path):
    user = trained_user(bundle, 2)
    page.goto(f"{console_url}/console/users/{user}")
    assert page.locator("#user-id").inner_text() == user
    first = page.locator("#recommendations > li").first.get_attribute("data-item")
    before = listed(page)
    assert first and len(before) == 10
    page.fill("#admin-key", KEY)
    page.locator(f'#recommendations button.like[data-item="{first}"]').click()
    page.wait_for_function(
        "document.getElementById('status').textContent.includes('applied')", timeout=15_000
    )
    after = listed(page)
    assert first not in after and after != before  # a liked item is seen: not recommended again
    assert page.locator("#recommendations > li.new").count() >= 1  # what came in is marked
    assert page.locator("#live-likes").inner_text() == "1"
    assert page.locator("#history li").first.inner_text().split() == ["like", first]
    feed_row = page.locator(f'#feed tbody tr[data-user="{user}"][data-item="{first}"]')
    feed_row.wait_for(timeout=15_000)
    assert "like" in feed_row.inner_text()
    assert page.locator("#error").is_hidden()
    screenshot(page, tmp_path, "user.png")


def test_actions_without_a_key_are_refused_visibly(console_url, page, bundle, tmp_path):
    user = trained_user(bundle, 3)
    page.goto(f"{console_url}/console/users/{user}")
    before = listed(page)
    page.locator("#recommendations button.dislike").first.click()
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=10_000)
    assert "refused (401): missing admin key" in error.inner_text()
    page.fill("#admin-key", "not-the-key")
    page.locator("#recommendations button.dislike").first.click()
    page.wait_for_function(
        "document.getElementById('error').textContent.includes('invalid or revoked')",
        timeout=10_000,
    )
    screenshot(page, tmp_path, "refused.png")
    page.reload()
    after = listed(page)
    assert after == before  # nothing was sent


def test_item_page_shows_attributes_similar_items_and_counts(console_url, page, bundle, tmp_path):
    item = bundle.items.to_list()[0]
    page.goto(f"{console_url}/console/items/{item}")
    screenshot(page, tmp_path, "item.png")
    assert page.locator("#item-id").inner_text() == item
    assert "topic" in page.locator("#attributes").inner_text()
    assert "topic_onehot" not in page.locator("#attributes").inner_text()
    similar = page.locator("#similar li")
    assert similar.count() == 10
    assert item not in [similar.nth(n).locator("a").inner_text() for n in range(10)]
    assert int(page.locator("#precomputed-count").inner_text()) >= 0
    page.locator("#similar li a").first.click()
    page.wait_for_url(f"{console_url}/console/items/**")
    assert page.locator("#item-id").inner_text() != item


def test_unknown_item_and_bad_input_get_clear_errors(console_url, page):
    response = page.goto(f"{console_url}/console/items/no-such-item")
    assert response.status == 404
    assert "no-such-item" in page.locator("#page-error").inner_text()
    page.goto(f"{console_url}/console/feed")
    page.locator("#feed tbody tr").first.wait_for(timeout=15_000)  # earlier tests' events
    status, body = call(f"{console_url}/console/api/users/u1?k=0")
    assert status == 400 and body["error"] == "k must be in 1..100, got 0"
    status, body = call(f"{console_url}/console/api/users/u1?k=x")
    assert status == 400 and "k must be an integer" in body["error"]
    status, html = call_raw(f"{console_url}/console/users/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert status == 200  # an unknown user gets the popularity fallback
    assert b"&lt;script&gt;alert(1)" in html and b"<script>alert" not in html


def test_feedback_api_checks_key_scope_and_body(console_url, bundle):
    url = f"{console_url}/console/api/feedback"
    good = {"userId": trained_user(bundle, 4), "itemId": bundle.items.to_list()[1], "kind": "like"}
    assert call(url, good)[0] == 401
    status, body = call(url, good, {"x-api-key": RECOMMEND_ONLY_KEY})
    assert status == 403 and "lacks scope 'feedback'" in body["error"]
    status, body = call(url, {**good, "kind": "love"}, {"x-api-key": KEY})
    assert status == 400 and body["error"] == "kind must be one of like, dislike, got 'love'"
    status, body = call(url, {**good, "itemId": ""}, {"x-api-key": KEY})
    assert status == 400 and body["error"] == "itemId must not be empty"
    status, body = call(url, good, {"authorization": f"Bearer {KEY}"})
    assert status == 200 and len(body["eventIds"]) == 1


def test_a_console_without_admin_keys_is_read_only(console_url, bundle):
    status, body = call(
        f"{console_url}/readonly/api/feedback",
        {"userId": "u1", "itemId": bundle.items.to_list()[1], "kind": "like"},
        {"x-api-key": KEY},
    )
    assert status == 403 and body["error"].startswith("the console is read-only")
    status, overview = call(f"{console_url}/readonly/api/overview")
    assert status == 200 and overview["readOnly"] is True and overview["serving"] == bundle.version


def test_reports_are_linked_and_served_from_their_folder_only(console_url, page):
    """The quality bench's report and its validation-curve plot (written by the bench's own
    writer) are listed, linked, and the plot shown as a thumbnail and served as a PNG."""
    page.goto(f"{console_url}/console/")
    links = page.locator("#reports a").all_inner_texts()
    curve = next(text for text in links if text.startswith("quality/curve_"))
    assert curve.endswith(".png") and "quality/quality.md" in links, links
    page.wait_for_function(
        f"document.querySelector('#reports img[alt=\"{curve}\"]').naturalWidth > 100",
        timeout=10_000,
    )
    plot = page.request.get(f"{console_url}/console/reports/{curve}")
    assert plot.status == 200 and plot.headers["content-type"] == "image/png"
    page.locator("#reports a", has_text="quality/quality.md").click()
    assert "# Shortlist retrieval quality" in page.content()
    with urllib.request.urlopen(f"{console_url}/console/reports/quality/quality.md") as r:
        assert r.read().startswith(b"# Shortlist retrieval quality\n")
    status, _ = call_raw(f"{console_url}/console/reports/..%2F..%2Fetc%2Fpasswd")
    assert status == 404


def call_raw(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_an_experiment_shows_both_arms_and_their_shares(console_url, page, bundle):
    page.goto(f"{console_url}/ab/")
    arms = page.locator("#arms").inner_text()
    assert f"a: {bundle.version} (75.0%)" in arms
    assert f"b: {ARM_B_VERSION} (25.0%)" in arms


def test_the_script_renders_reasons_as_the_server_does(console_url, page, bundle):
    page.goto(f"{console_url}/console/users/{trained_user(bundle, 5)}")
    text = page.evaluate(
        """reasonsText({sources: ["precomputed"], becauseLiked: ["jazz-1", "jazz-2"],
            topFeatures: [{feature: "cooc_sum_likes", value: 3, contribution: 0.25}],
            rules: [], novelty: "high"})"""
    )
    # the same sentence as tests/unit/test_console_parts.py gets from the server's template
    assert text == (
        "because you liked jazz-1, jazz-2 · from precomputed · "
        "ranker: cooc_sum_likes +0.250 · novelty: high"
    )
