"""The HTTP/JSON front door over real sockets, probed with curl: the gateway process's HTTP
port forwards to its gRPC server, so answers, codes and messages are the gRPC path's."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable

import grpc
import pytest

from shortlist.client import Client, Feedback
from shortlist.config import Settings
from shortlist.rpc.security import hash_key
from shortlist.services.http_api import start_http_server
from shortlist.services.launch import start_inprocess_stack
from tests.conftest import eventually, start_stack

FULL_KEY = "http-key-full-0123456789"
READ_KEY = "http-key-read-0123456789"  # scope recommend only
ADMIN_KEY = "http-key-admin-0123456789"  # scopes admin+recommend
ADMIN_KEY_2 = "http-key-admin-2-0123456789"  # scope admin
INTERNAL_TOKEN = "http-internal-token-0123456789"  # what the gateway sends to the feedback service


def keyed(settings: Settings) -> Settings:
    """The settings with this module's API keys and internal token, no rate limits."""
    return settings.replace(
        api_key_hashes=f"{hash_key(FULL_KEY)},{hash_key(READ_KEY)}:recommend,"
        f"{hash_key(ADMIN_KEY)}:admin+recommend,{hash_key(ADMIN_KEY_2)}:admin",
        internal_token=INTERNAL_TOKEN,
        internal_token_hash=hash_key(INTERNAL_TOKEN),
        rate_limit_per_s=0,
    )


@pytest.fixture(scope="module")
def http_stack(settings, bundle):
    """The stack over the real Redis and broker, with API keys, the internal token on the
    internal services, and the HTTP front door."""
    stack = start_stack(keyed(settings), bundle, http_address="127.0.0.1:0")
    yield stack
    stack.stop()


def curl(url: str, body: str | None = None, headers: dict[str, str] | None = None):
    """(HTTP status, parsed JSON body) of one request made by the curl program."""
    argv = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", url]
    if body is not None:
        argv += ["-X", "POST", "-H", "content-type: application/json", "--data-binary", body]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    text, _, status = out.rpartition("\n")
    return int(status), json.loads(text)


def post(stack, path: str, payload, key: str | None = FULL_KEY, header: str = "x-api-key"):
    headers = {}
    if key is not None:
        headers[header] = key if header == "x-api-key" else f"Bearer {key}"
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return curl(stack.http_url + path, body, headers)


def grpc_error(stack, key: str | None, call: Callable[[Client], object]) -> grpc.RpcError:
    """The error `call` gets over gRPC from a client with `key` (None: no credentials)."""
    with (
        Client(stack.gateway_target, key, timeout_s=10) as client,
        pytest.raises(grpc.RpcError) as info,
    ):
        call(client)
    return info.value


def test_recommend_answers_what_grpc_answers(http_stack, bundle):
    user = bundle.users.id(3)
    payload = {"userId": user, "k": 5, "context": {"device": "ios", "hour": "21"}}
    status, body = post(http_stack, "/v1/recommend", payload)
    assert status == 200, body
    with Client(http_stack.gateway_target, FULL_KEY, timeout_s=10) as client:
        reply = client.recommend(user, 5, context=payload["context"])
    assert [i["itemId"] for i in body["items"]] == reply.item_ids
    assert body["modelVersion"] == bundle.version
    assert body["fallbackUsed"] is False and body["fallbackReason"] == ""
    assert body["arm"] == "a"


def test_proto_field_names_and_bearer_keys_are_accepted(http_stack, bundle):
    payload = {"user_id": bundle.users.id(4), "k": 3, "exclude_item_ids": [bundle.items.id(0)]}
    status, body = post(http_stack, "/v1/recommend", payload, header="authorization")
    assert status == 200, body
    assert len(body["items"]) == 3
    assert bundle.items.id(0) not in {i["itemId"] for i in body["items"]}


def test_unknown_user_falls_back_to_popular_items_as_over_grpc(http_stack):
    status, body = post(http_stack, "/v1/recommend", {"userId": "never-seen-user", "k": 4})
    assert status == 200, body
    assert body["fallbackUsed"] is True and body["fallbackReason"] == "unknown_user"
    assert len(body["items"]) == 4


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ('{"userId": "u", "k": "many"}', "k"),
        ('{"userId": "u", "k": 5, "colour": "red"}', "colour"),
        ('{"userId": "u", "k": 5', "JSON"),
        ('{"userId": "u", "k": 5, "context": {"device": 7}}', "context"),
    ],
)
def test_bad_json_is_400_naming_the_field(http_stack, payload, named):
    status, body = post(http_stack, "/v1/recommend", payload)
    assert status == 400, body
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    assert named in body["error"]["message"]


def test_invalid_input_gets_the_gateways_own_message(http_stack, bundle):
    status, body = post(http_stack, "/v1/recommend", {"userId": bundle.users.id(1), "k": 0})
    over_grpc = grpc_error(http_stack, FULL_KEY, lambda c: c.recommend("u", 0))
    assert status == 400
    assert body["error"] == {
        "code": 400,
        "status": "INVALID_ARGUMENT",
        "message": over_grpc.details(),
    }
    assert "k must be in 1..100, got 0" in body["error"]["message"]


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("wrong-key-0123456789", 401)])
def test_missing_or_wrong_key_is_401_with_the_grpc_message(http_stack, key, status):
    got, body = post(http_stack, "/v1/recommend", {"userId": "u", "k": 1}, key=key)
    over_grpc = grpc_error(http_stack, key, lambda c: c.recommend("u", 1))
    assert over_grpc.code() == grpc.StatusCode.UNAUTHENTICATED
    assert got == status
    assert body["error"]["status"] == "UNAUTHENTICATED"
    assert body["error"]["message"] == over_grpc.details()


def test_a_key_without_the_scope_is_403_naming_it(http_stack, bundle):
    event = {
        "userId": bundle.users.id(2),
        "itemId": bundle.items.id(5),
        "kind": "FEEDBACK_KIND_LIKE",
    }
    status, body = post(http_stack, "/v1/feedback", {"events": [event]}, key=READ_KEY)
    assert status == 403, body
    assert body["error"]["status"] == "PERMISSION_DENIED"
    assert "feedback" in body["error"]["message"]


def test_feedback_is_acknowledged_with_its_event_ids(http_stack, bundle):
    events = [
        {"userId": bundle.users.id(2), "itemId": bundle.items.id(5), "kind": "FEEDBACK_KIND_LIKE"},
        {
            "eventId": "http-e1",
            "userId": bundle.users.id(2),
            "itemId": bundle.items.id(6),
            "kind": "FEEDBACK_KIND_DISLIKE",
            "timestampMs": "1700000000000",
        },
    ]
    status, body = post(http_stack, "/v1/feedback", {"events": events})
    assert status == 200, body
    assert len(body["eventIds"]) == 2 and body["eventIds"][1] == "http-e1"
    bad = [{**events[0], "kind": "FEEDBACK_KIND_FORGET"}]
    status, body = post(http_stack, "/v1/feedback", {"events": bad})
    assert status == 400 and "events[0].kind" in body["error"]["message"]


def test_similar_items_and_an_unknown_item_is_404(http_stack, bundle):
    status, body = post(http_stack, "/v1/similar-items", {"itemId": bundle.items.id(7), "k": 4})
    assert status == 200, body
    assert len(body["items"]) == 4 and bundle.items.id(7) not in {
        i["itemId"] for i in body["items"]
    }
    status, body = post(http_stack, "/v1/similar-items", {"itemId": "no-such-item", "k": 4})
    assert status == 404, body
    assert body["error"]["status"] == "NOT_FOUND" and "no-such-item" in body["error"]["message"]


def test_openapi_document_is_served_and_lists_the_paths(http_stack):
    status, document = curl(http_stack.http_url + "/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.")
    admin = {f"/v1/admin/{n}-items" for n in ("upsert", "hide", "show", "remove")}
    assert set(document["paths"]) == {
        "/v1/recommend",
        "/v1/feedback",
        "/v1/similar-items",
        "/v1/admin/delete-user",
        *admin,
    }
    hide = document["paths"]["/v1/admin/hide-items"]["post"]
    assert hide["operationId"] == "HideItems" and {} not in hide["security"]
    schemas = document["components"]["schemas"]
    assert "userId" in schemas["shortlist.v1.RecommendRequest"]["properties"]


def test_an_oversized_body_is_refused(http_stack):
    payload = {"userId": "u", "k": 1, "excludeItemIds": ["x" * 200] * 25_000}  # ~5 MB
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"]
    argv += [
        "-H",
        f"x-api-key: {FULL_KEY}",
        "--data-binary",
        "@-",
        http_stack.http_url + "/v1/recommend",
    ]
    out = subprocess.run(
        argv, input=json.dumps(payload), capture_output=True, text=True, timeout=30
    ).stdout
    assert out == "413", out


def test_loadtest_http_mode_sends_recommend_and_feedback(http_stack, bundle):
    from shortlist.tools import loadtest

    config = loadtest.LoadConfig(
        target=http_stack.http_url.removeprefix("http://"),
        rate=50,
        duration_s=2,
        warmup_s=0.5,
        users=bundle.users.to_list(),
        feedback_share=0.2,
        connections=4,
        timeout_s=5,
        http=True,
        api_key=FULL_KEY,
    )
    summary = loadtest.run(config).summary
    assert summary["protocol"] == "http"
    assert summary["errors"] == {}, summary["errors"]
    assert summary["ok"] == summary["requests"] == 100
    assert summary["feedback_requests"] > 0
    wrong = loadtest.run(
        loadtest.LoadConfig(
            target=config.target, rate=20, duration_s=1, warmup_s=0, http=True, api_key="nope"
        )
    ).summary
    assert wrong["errors"] == {"UNAUTHENTICATED": 20}


def test_the_http_port_speaks_tls_with_the_gateways_certificate(pki):
    """With TLS files the HTTP port is HTTPS too (curl verifies it against the CA), and
    plaintext beyond loopback is refused as for gRPC."""
    from shortlist.config import Settings
    from shortlist.rpc.security import InsecureConfiguration
    from tests.conftest import bare_gateway

    settings = Settings.from_env(
        {},
        tls_cert_file=str(pki / "service.crt"),
        tls_key_file=str(pki / "service.key"),
        api_key_hashes=hash_key(FULL_KEY),
    )
    gateway = bare_gateway(settings.replace(tls_cert_file="", tls_key_file=""))
    http = start_http_server(settings, f"127.0.0.1:{gateway.port}", "127.0.0.1:0")
    try:
        url = f"https://localhost:{http.port}/v1/recommend"
        argv = ["curl", "-sS", "-w", "\n%{http_code}", "--cacert", str(pki / "ca.crt")]
        argv += ["-H", f"x-api-key: {FULL_KEY}", "-d", '{"userId": "u", "k": 1}', url]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        text, _, status = out.stdout.rpartition("\n")
        assert status == "501", out.stderr  # the bare gateway's UNIMPLEMENTED, over HTTPS
        assert json.loads(text)["error"]["status"] == "UNIMPLEMENTED"
        plain = subprocess.run(
            [
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-d",
                "{}",
                url.replace("https", "http"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert plain.stdout != "501"  # no plaintext answer on the TLS port
    finally:
        http.stop()
        gateway.stop()
    with pytest.raises(InsecureConfiguration):
        start_http_server(Settings.from_env({}), "127.0.0.1:1", "0.0.0.0:0")


# ---- the FeedbackAdmin calls (docs/decisions/0039-admin-over-http.md) ----------------------


def recommended(stack, user: str, k: int = 10) -> list[str]:
    status, body = post(stack, "/v1/recommend", {"userId": user, "k": k}, key=ADMIN_KEY)
    assert status == 200, body
    return [i["itemId"] for i in body["items"]]


def test_an_admin_key_hides_an_item_and_recommend_no_longer_returns_it(http_stack, bundle):
    user = bundle.users.id(11)
    top = recommended(http_stack, user)[0]
    status, body = post(http_stack, "/v1/admin/hide-items", {"itemIds": [top]}, key=ADMIN_KEY)
    assert status == 200, body
    assert body == {"changed": 1}
    assert eventually(lambda: top not in recommended(http_stack, user))
    status, body = post(http_stack, "/v1/admin/show-items", {"item_ids": [top]}, key=ADMIN_KEY)
    assert status == 200 and body == {"changed": 1}, body
    assert eventually(lambda: top in recommended(http_stack, user))


def test_upsert_remove_and_delete_user_answer_over_http(http_stack):
    item = {"itemId": "http-admin-new-item", "attributes": {"category": "books"}}
    status, body = post(
        http_stack,
        "/v1/admin/upsert-items",
        {"items": [item]},
        header="authorization",
        key=ADMIN_KEY,
    )
    assert status == 200 and body == {"changed": 1}, body
    status, body = post(
        http_stack, "/v1/admin/remove-items", {"itemIds": [item["itemId"]]}, key=ADMIN_KEY
    )
    assert status == 200 and body == {"changed": 1}, body
    status, body = post(http_stack, "/v1/admin/delete-user", {"userId": "u-gone"}, key=ADMIN_KEY)
    assert status == 200, body
    assert len(body["eventId"]) == 32


@pytest.mark.parametrize("key", [READ_KEY, FULL_KEY])
def test_a_key_without_the_admin_scope_is_403_naming_it(http_stack, bundle, key):
    item = bundle.items.id(3)
    status, body = post(http_stack, "/v1/admin/hide-items", {"itemIds": [item]}, key=key)
    assert status == 403, body
    assert body["error"]["status"] == "PERMISSION_DENIED"
    assert "lacks scope 'admin'" in body["error"]["message"]


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("wrong-key-0123456789", 401)])
def test_admin_calls_without_a_valid_key_are_401(http_stack, key, status):
    got, body = post(http_stack, "/v1/admin/delete-user", {"userId": "u"}, key=key)
    assert got == status, body
    assert body["error"]["status"] == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    ("path", "payload", "named"),
    [
        ("hide-items", '{"itemIds": "one"}', "itemIds"),
        ("hide-items", '{"itemIds": ["a"], "reason": "x"}', "reason"),
        ("hide-items", '{"itemIds": []}', "item_ids"),  # the feedback service's own check
        ("upsert-items", '{"items": [{"itemId": ""}]}', "items[0].item_id"),
        ("delete-user", '{"userId": 5}', "userId"),
    ],
)
def test_a_bad_admin_body_is_400_naming_the_field(http_stack, path, payload, named):
    status, body = post(http_stack, f"/v1/admin/{path}", payload, key=ADMIN_KEY)
    assert status == 400, body
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    assert named in body["error"]["message"]


def test_without_keys_admin_calls_are_open_on_loopback_only(settings, bundle):
    """Local development (no keys): open on 127.0.0.1 as the internal feedback service is;
    on a non-loopback address refused with 403 saying why, even with insecure=1."""
    from shortlist.feedback.bus import InMemoryBus
    from shortlist.feedback.stores import InMemoryStateStore

    bus = InMemoryBus()
    store = InMemoryStateStore()
    s = settings.replace(insecure=1)
    stack = start_inprocess_stack(
        s, bundle, store, bus.publisher(), bus.consumer(), http_address="127.0.0.1:0"
    )
    wide = start_http_server(
        s,
        stack.gateway_target,
        "0.0.0.0:0",
        feedback_target=stack.target("feedback"),
    )
    try:
        payload = json.dumps({"itemIds": [bundle.items.id(2)]})
        status, body = curl(stack.http_url + "/v1/admin/hide-items", payload)
        assert status == 200 and body == {"changed": 1}, body
        status, body = curl(f"http://127.0.0.1:{wide.port}/v1/admin/show-items", payload)
        assert status == 403, body
        assert "without API keys" in body["error"]["message"]
        assert "0.0.0.0:0" in body["error"]["message"]
    finally:
        wide.stop()
        stack.stop()


ADMIN_FEEDBACK_KEY = "http-key-admin-feedback-0123456789"  # scopes admin+feedback
CALLS_REFUSED = re.compile(r"rate limit of 1 calls/s \(burst 2\) exceeded; retry in \d+\.\d{3}s")


@pytest.fixture
def limited_stack(settings, bundle):
    """A stack whose gateway allows each client 1 call a second (burst 2) and 1 event a
    second (burst 3), on its gRPC port and its HTTP port, over real sockets (an in-memory
    bus and store: what is under test is the limiter)."""
    from shortlist.feedback.bus import InMemoryBus
    from shortlist.feedback.stores import InMemoryStateStore

    s = keyed(settings)
    s = s.replace(
        api_key_hashes=f"{s.api_key_hashes},{hash_key(ADMIN_FEEDBACK_KEY)}:admin+feedback",
        rate_limit_per_s=1,
        rate_limit_burst=2,
        rate_limit_events_per_s=1,
        rate_limit_events_burst=3,
    )
    bus = InMemoryBus()
    stack = start_inprocess_stack(
        s, bundle, InMemoryStateStore(), bus.publisher(), bus.consumer(), http_address="127.0.0.1:0"
    )
    yield stack
    stack.stop()


def test_an_admin_keys_calls_over_http_and_grpc_draw_from_one_bucket(limited_stack, bundle):
    """Admin calls reach the feedback service past the gateway's gRPC interceptors; the HTTP
    front door limits them with the gateway's own RateLimits, so one key has one bucket of
    calls: its admin calls over HTTP, its Recommend calls over HTTP and over gRPC, alternated,
    pass no more than the burst plus the refill between them, and all three refuse with the
    same message."""
    show = json.dumps({"itemIds": ["rate-limited-item"]})  # not hidden: changes nothing
    url = limited_stack.http_url + "/v1/admin/show-items"
    outcomes: list[tuple[str, bool, str]] = []  # (port, passed, refusal message)
    with Client(limited_stack.gateway_target, ADMIN_KEY, timeout_s=10) as client:
        start = time.monotonic()
        for _ in range(4):
            status, body = curl(url, show, {"x-api-key": ADMIN_KEY})
            assert status in (200, 429), body
            message = body["error"]["message"] if status == 429 else ""
            if status == 429:
                assert body["error"]["status"] == "RESOURCE_EXHAUSTED"
            outcomes.append(("http admin", status == 200, message))
            status, body = post(limited_stack, "/v1/recommend", {"userId": "u", "k": 3}, ADMIN_KEY)
            assert status in (200, 429), body
            outcomes.append(
                ("http", status == 200, body["error"]["message"] if status == 429 else "")
            )
            try:
                client.recommend(bundle.users.id(1), 3)
                outcomes.append(("grpc", True, ""))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                outcomes.append(("grpc", False, exc.details()))
        elapsed = time.monotonic() - start
        passed = sum(ok for _, ok, _ in outcomes)
        # One bucket: the burst of 2 plus 1 a second (two buckets would pass 2 + 2 at once).
        assert passed <= 2 + int(elapsed) + 1, (elapsed, outcomes)
        assert outcomes[0][1] and outcomes[1][1], outcomes  # the burst
        refused = {port for port, ok, _ in outcomes if not ok}
        assert refused == {"http admin", "http", "grpc"}, outcomes  # each refuses after the others
        for port, ok, message in outcomes:
            assert ok or CALLS_REFUSED.fullmatch(message), (port, message)
        # another key has a bucket of its own; a refused key is refused before being counted
        assert curl(url, show, {"x-api-key": ADMIN_KEY_2})[0] == 200
        assert curl(url, show, {"x-api-key": "wrong-key-0123456789"})[0] == 401


def test_an_admin_call_that_writes_an_event_draws_from_the_keys_events_bucket(
    limited_stack, bundle
):
    """DeleteUser writes one event: after a gRPC SendFeedback of 3 events (the events burst)
    the same key's DeleteUser over HTTP is refused by the events bucket, with the message
    the gRPC path gives a batch over the limit."""
    events = [Feedback(bundle.users.id(2), bundle.items.id(n), "view") for n in range(3)]
    with Client(limited_stack.gateway_target, ADMIN_FEEDBACK_KEY, timeout_s=10) as client:
        client.send_feedback(*events)
    status, body = curl(
        limited_stack.http_url + "/v1/admin/delete-user",
        json.dumps({"userId": "u-rate-limited"}),
        {"x-api-key": ADMIN_FEEDBACK_KEY},
    )
    assert status == 429, body
    assert body["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert re.fullmatch(
        r"rate limit of 1 events/s \(burst 3\) exceeded by a batch of 1; retry in \d\.\d{3}s",
        body["error"]["message"],
    ), body
