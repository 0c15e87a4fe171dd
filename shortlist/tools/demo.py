"""`shortlist demo`: train on the built-in data, serve the four services on the embedded
in-memory store and bus, and show recommendations change with feedback over real gRPC."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from urllib.request import Request, urlopen

import grpc
from rich.console import Console
from rich.table import Table

from shortlist.bundle.files import load_bundle, save_bundle
from shortlist.client import Client, Feedback, Recommendation
from shortlist.config import Settings
from shortlist.data.events import load_events
from shortlist.data.synthetic import generate, write_events
from shortlist.feedback.bus import InMemoryBus
from shortlist.feedback.stores import InMemoryStateStore
from shortlist.rpc.server import client_channel
from shortlist.training.pipeline import TrainConfig, train_bundle
from shortlist.v1 import feedback_pb2, feedback_pb2_grpc


def topic(item_id: str) -> str:
    return item_id.rsplit("-", 1)[0]


def show(console: Console, title: str, reply: Recommendation, marks=None) -> None:
    marks = marks or {}
    note = f"  [yellow](fallback: {reply.fallback_reason})[/]" if reply.fallback_used else ""
    table = Table(title=f"{title}{note}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("score", justify="right")
    table.add_column("")
    for n, item in enumerate(reply.items, 1):
        table.add_row(str(n), item.item_id, f"{item.score:.3f}", marks.get(item.item_id, ""))
    console.print(table)


def wait_applied(admin, at_least: int, timeout_s: float = 10) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        status = admin.Status(feedback_pb2.FeedbackStatusRequest(), timeout=1)
        if status.events_applied >= at_least:
            return time.perf_counter() - start
        time.sleep(0.005)
    raise TimeoutError(f"feedback not applied after {timeout_s}s")


def run(console: Console | None = None, user: str = "user-0007", k: int = 10) -> None:
    from shortlist.services.launch import start_inprocess_stack

    console = console or Console()
    data = generate()
    console.rule("[bold]Shortlist demo: built-in data, embedded store and bus")
    console.print(
        f"dataset: {data.n_users:,} users, {data.n_items:,} items in topics, "
        f"{data.nnz:,} likes, {data.negatives.nnz:,} dislikes"
    )
    with tempfile.TemporaryDirectory(prefix="shortlist-demo-") as tmp, console.status("training"):
        # through the event-log path a team's own data takes (shortlist train --events)
        events, items = write_events(data, Path(tmp, "events"))
        logged = load_events([events], items)
        config = TrainConfig(model="spectral")  # the measured best retrieval, blended ranker
        bundle = train_bundle(logged, config, progress=lambda m: console.log(m))
        save_bundle(bundle, Path(tmp, "bundles"))
        bundle = load_bundle(Path(tmp, "bundles"))
    metrics = bundle.manifest["metrics"]
    console.print(
        f"bundle {bundle.version}: ranker NDCG@20 {metrics['ranker_ndcg@20']:.3f} vs retrieval "
        f"order {metrics['retrieval_order_ndcg@20']:.3f} on held-out likes, out of fold "
        f"({metrics['train_seconds']:.1f}s)"
    )
    store, bus = InMemoryStateStore(), InMemoryBus()
    settings = Settings.from_env({}, backend="memory")
    stack = start_inprocess_stack(
        settings, bundle, store, bus.publisher(), bus.consumer(), http_address="127.0.0.1:0"
    )
    try:
        with (
            Client(stack.gateway_target) as gateway,
            client_channel(stack.target("feedback")) as admin_channel,
        ):
            admin = feedback_pb2_grpc.FeedbackAdminStub(admin_channel)
            _story(console, gateway, admin, bundle, user, k)
            _over_http(console, stack.http_url, user)
    finally:
        stack.stop()
    console.rule("[bold green]demo finished: services stopped")


def _story(console, gateway: Client, admin, bundle, user: str, k: int) -> None:
    context = {"device": "ios", "hour": "21"}
    console.print(f"\n[bold]1.[/] Recommend for {user} over gRPC at {context}")
    before = gateway.recommend(user, k, context=context)
    show(console, f"{user}: before feedback (bundle {before.model_version})", before)

    liked = [before.items[0].item_id, before.items[1].item_id]
    disliked = before.items[2].item_id
    shown = {topic(i.item_id) for i in before.items}
    new_topic = next(
        t for t in sorted({topic(i) for i in bundle.items.to_list()}) if t not in shown
    )
    fresh = [i for i in bundle.popular_items(400) if topic(bundle.items.id(i)) == new_topic]
    liked += [bundle.items.id(i) for i in fresh[:4]]
    events = [Feedback(user, i, "like") for i in liked] + [Feedback(user, disliked, "dislike")]
    console.print(
        f"\n[bold]2.[/] SendFeedback: like {', '.join(liked)}; dislike {disliked} "
        f"(the likes include {len(fresh[:4])} '{new_topic}' items, a topic new to this user)"
    )
    ack = gateway.send_feedback(*events)
    waited = wait_applied(admin, len(ack))
    console.print(f"   acknowledged {len(ack)} events; applied after {waited * 1000:.0f} ms")

    after = gateway.recommend(user, k, context=context)
    before_ids = {i.item_id for i in before.items}
    marks = {i.item_id: "[green]new[/]" for i in after.items if i.item_id not in before_ids}
    for i in after.items:
        if topic(i.item_id) == new_topic:
            marks[i.item_id] = f"[cyan]{new_topic}[/] " + marks.get(i.item_id, "")
    show(console, f"{user}: after feedback", after, marks)
    back = [i.item_id for i in after.items if topic(i.item_id) == new_topic]
    console.print(
        f"   '{new_topic}' items now recommended (the topic just liked): "
        f"{len(back)} of {len(after.items)}"
    )
    gone = [i for i in liked + [disliked] if i in {x.item_id for x in after.items}]
    console.print(f"   liked/disliked items still recommended: {gone or 'none'}")

    newcomer = "newcomer-1"
    console.print(f"\n[bold]3.[/] A user never seen in training: {newcomer}")
    cold = gateway.recommend(newcomer, 5)
    show(console, f"{newcomer}: cold start", cold)
    popular = bundle.items.ids(bundle.popular_items(len(bundle.items)))
    jazz = [i for i in popular if topic(i) == "jazz"][:3]
    ack2 = gateway.send_feedback(*(Feedback(newcomer, i, "like") for i in jazz))
    wait_applied(admin, len(ack) + len(ack2))
    warm = gateway.recommend(newcomer, 5)
    show(console, f"{newcomer}: after liking {', '.join(jazz)} (vector folded in)", warm)

    console.print("\n[bold]4.[/] SimilarItems and bad input")
    similar = gateway.similar_items(jazz[0], 5)
    console.print(f"   similar to {jazz[0]}: {', '.join(similar.item_ids)}")
    try:
        gateway.recommend(user, 0)
    except grpc.RpcError as exc:
        console.print(f"   Recommend(k=0) -> {exc.code().name}: {exc.details()}")


def _over_http(console: Console, url: str, user: str) -> None:
    """The same API over HTTP/JSON (what `curl` would send)."""
    body = json.dumps({"userId": user, "k": 3, "context": {"device": "web"}}).encode()
    request = Request(f"{url}/v1/recommend", body, {"content-type": "application/json"})
    with urlopen(request, timeout=10) as reply:
        answer = json.loads(reply.read())
    console.print(f"\n[bold]5.[/] The same API over HTTP/JSON: POST {url}/v1/recommend")
    console.print(f"   {body.decode()} -> {[i['itemId'] for i in answer['items']]}")
    console.print(f"   OpenAPI document: GET {url}/openapi.json")
    console.print(
        "   The web console: `make up`, then http://127.0.0.1:8080/console (this demo's "
        "stack stops when it ends)"
    )
