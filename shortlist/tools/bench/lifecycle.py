"""The whole lifecycle on MovieLens-100K as event logs, over the real services:

1. the ratings become an event log (rating >= 4 like, <= 2 dislike, 3 a view), an item
   file (title as free text, year, first genre) and a user file (age, gender, occupation,
   zip code as free text); the first 80% of time is the history;
2. a first bundle is trained from the history and served (in-process services over the
   real Redis and the Kafka-protocol broker, with the archiver on its own consumer group);
3. the next 10% of time is replayed through Gateway/SendFeedback: folded in live and
   archived;
4. a bundle is retrained from the archive plus the history, through the promotion gate;
5. all three (first, first with live fold-in, retrained) are evaluated on the last 10% by
   Gateway/Recommend: a user's items from before the test slice never count;
6. memory over 20 hot swaps of the retrained bundle, and how long a new item takes to be
   recommended once liked.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from shortlist.bundle.files import load_bundle
from shortlist.bundle.promotion import latest_version, versions
from shortlist.config import Settings
from shortlist.data.events import load_events, read_logs
from shortlist.evaluation.metrics import per_user_metrics
from shortlist.feedback.archive import Archiver
from shortlist.models.progress import track
from shortlist.rpc.server import client_channel
from shortlist.services.launch import (
    kafka_consumer,
    kafka_publisher,
    redis_store,
    start_inprocess_stack,
)
from shortlist.tools.bench import swaps as swaps_bench
from shortlist.tools.cli import Promotion, train_and_save
from shortlist.tools.stack import TansuBroker
from shortlist.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc, gateway_pb2, gateway_pb2_grpc

Say = Callable[[str], None]
K = 20
GENRES = [
    *("unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime"),
    *("Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery"),
    *("Romance", "Sci-Fi", "Thriller", "War", "Western"),
]
KINDS = {"like": common_pb2.FEEDBACK_KIND_LIKE, "dislike": common_pb2.FEEDBACK_KIND_DISLIKE}


@dataclasses.dataclass
class Slices:
    history: Path  # events.csv of the first 80% of time
    items: Path
    users: Path  # user_id, age, gender, occupation, zip (free text: left out)
    replay: pa.Table  # user_id, item_id, kind (like/dislike/view), timestamp (seconds)
    test: dict[str, set[str]]  # user -> items liked in the last 10%
    before_test: dict[str, set[str]]  # user -> every item they rated before it


def movielens_events(data: Path, out: Path) -> Slices:
    """MovieLens-100K's u.data, u.item and u.user as an event log and item and user
    attribute files, cut in time."""
    con = duckdb.connect()
    con.sql(
        f"""CREATE TABLE ratings AS SELECT 'u' || column0 AS user_id,
                   'm' || column1 AS item_id, column2 AS rating, column3 AS timestamp
            FROM read_csv('{data / "u.data"}', delim='\t', header=false)"""
    )
    ((cut80, cut90),) = con.sql(
        "SELECT quantile_disc(timestamp, 0.8), quantile_disc(timestamp, 0.9) FROM ratings"
    ).fetchall()
    out.mkdir(parents=True, exist_ok=True)
    history = out / "history.csv"
    con.sql(
        f"SELECT user_id, item_id, rating AS kind, timestamp FROM ratings WHERE timestamp < {cut80}"
    ).write_csv(str(history))
    replay = con.sql(
        f"""SELECT user_id, item_id, CASE WHEN rating >= 4 THEN 'like' WHEN rating <= 2
            THEN 'dislike' ELSE 'view' END AS kind, timestamp FROM ratings
            WHERE timestamp >= {cut80} AND timestamp < {cut90} ORDER BY timestamp"""
    ).to_arrow_table()
    test: dict[str, set[str]] = {}
    for user, item in con.sql(
        f"SELECT user_id, item_id FROM ratings WHERE timestamp >= {cut90} AND rating >= 4"
    ).fetchall():
        test.setdefault(user, set()).add(item)
    before: dict[str, set[str]] = {}
    for user, item in con.sql(
        f"SELECT user_id, item_id FROM ratings WHERE timestamp < {cut90}"
    ).fetchall():
        before.setdefault(user, set()).add(item)
    items = out / "items.csv"
    table = pacsv.read_csv(
        data / "u.item",
        read_options=pacsv.ReadOptions(
            encoding="latin1", column_names=["id", "title", "date", "video", "url", *GENRES]
        ),
        parse_options=pacsv.ParseOptions(delimiter="|", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types={"date": pa.string()}),
    )
    con.register("movies", table)
    genre = " ".join(f"WHEN \"{g}\" = 1 THEN '{g}'" for g in GENRES)
    con.sql(
        f"""SELECT 'm' || id AS item_id, title, try_cast(right(date, 4) AS INTEGER) AS year,
                   CASE {genre} ELSE 'none' END AS genre FROM movies"""
    ).write_csv(str(items))
    users = out / "users.csv"
    con.sql(
        f"""SELECT 'u' || column0 AS user_id, column1 AS age, column2 AS gender,
                   column3 AS occupation, column4 AS zip
            FROM read_csv('{data / "u.user"}', delim='|', header=false,
                          columns={{'column0': 'INTEGER', 'column1': 'INTEGER',
                                   'column2': 'VARCHAR', 'column3': 'VARCHAR',
                                   'column4': 'VARCHAR'}})"""
    ).write_csv(str(users))
    return Slices(history, items, users, replay, test, before)


def recommend_metrics(gateway, slices: Slices) -> dict[str, float]:
    """NDCG/recall@20 of Gateway/Recommend on the test slice: top 100 asked, the user's
    items from before the test slice dropped (whether or not the serving bundle knows
    them), the first 20 kept."""
    users = sorted(slices.test)
    hits = np.zeros((len(users), K), bool)
    for row, user in track(enumerate(users), "test-slice Recommends", len(users), every=20):
        reply = gateway.Recommend(gateway_pb2.RecommendRequest(user_id=user, k=100), timeout=5)
        before = slices.before_test.get(user, set())
        top = [i.item_id for i in reply.items if i.item_id not in before][:K]
        hits[row, : len(top)] = [i in slices.test[user] for i in top]
    n_relevant = np.array([len(slices.test[u]) for u in users])
    metrics = per_user_metrics(hits, n_relevant, [K])
    return {f"{name}": round(float(v.mean()), 4) for name, v in metrics.items()}


def replay(gateway, table: pa.Table, batch: int = 200) -> int:
    """Send the replay slice through Gateway/SendFeedback in time order; returns the
    number of events acknowledged."""
    rows = table.to_pylist()
    acknowledged = 0
    for lo in track(range(0, len(rows), batch), "events sent"):
        events = [
            common_pb2.FeedbackEvent(
                user_id=r["user_id"],
                item_id=r["item_id"],
                kind=KINDS.get(r["kind"], common_pb2.FEEDBACK_KIND_VIEW),
                timestamp_ms=int(r["timestamp"]) * 1000,
            )
            for r in rows[lo : lo + batch]
        ]
        reply = gateway.SendFeedback(gateway_pb2.SendFeedbackRequest(events=events), timeout=10)
        acknowledged += len(reply.event_ids)
    return acknowledged


def _wait(check: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not done after {timeout_s:.0f}s")
        time.sleep(0.1)


def new_item_visible_ms(gateway, admin, bundle, timeout_s: float = 10.0) -> float | None:
    """Upsert a new item; the 10 users closest to a target user like it; milliseconds from
    the likes' acknowledgement until the target's Recommend(k=20) holds it (None: never
    within `timeout_s`)."""
    item = f"new-{uuid.uuid4().hex[:6]}"
    admin.UpsertItems(
        feedback_pb2.UpsertItemsRequest(
            items=[feedback_pb2.CatalogueItem(item_id=item, attributes={"genre": "Drama"})]
        ),
        timeout=5,
    )
    trained = bundle.user_vectors[np.arange(len(bundle.users))]  # mapped or computed rows
    vectors = trained / np.maximum(np.linalg.norm(trained, axis=1, keepdims=True), 1e-9)
    target = int(np.argmax(np.diff(bundle.likes.indptr)))  # the most active user
    closest = np.argsort(-(vectors @ vectors[target]))
    likers = [bundle.users.id(int(u)) for u in closest if u != target][:10]
    events = [
        common_pb2.FeedbackEvent(user_id=u, item_id=item, kind=common_pb2.FEEDBACK_KIND_LIKE)
        for u in likers
    ]
    gateway.SendFeedback(gateway_pb2.SendFeedbackRequest(events=events), timeout=10)
    start = time.perf_counter()
    user = bundle.users.id(target)
    while time.perf_counter() - start < timeout_s:
        reply = gateway.Recommend(gateway_pb2.RecommendRequest(user_id=user, k=K), timeout=5)
        if any(i.item_id == item for i in reply.items):
            return round((time.perf_counter() - start) * 1000, 1)
        time.sleep(0.02)
    return None


def run(
    data: Path, redis_url: str, tune_budget: float, say: Say, workdir: Path | None = None
) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shortlist-lifecycle-") as tmp:
        root = Path(workdir or tmp)
        slices = movielens_events(data, root / "events")
        bundles, archive = root / "bundles", root / "archive"
        say(
            f"history {slices.history}, replay {slices.replay.num_rows} events, "
            f"{len(slices.test)} test users"
        )
        history = load_events([slices.history], slices.items, users=slices.users)
        train_and_save(bundles, history, tune_budget=tune_budget)
        first = load_bundle(bundles)
        broker = TansuBroker()
        broker.start()
        stack = archiver = None
        try:
            settings = Settings.from_env(
                {},
                redis_url=redis_url,
                redis_prefix=f"slbench:lifecycle:{uuid.uuid4().hex[:8]}:",
                kafka_bootstrap=broker.bootstrap,
                feedback_topic="feedback",
                feedback_group="shortlist-feedback",
                archive_path=str(archive),
                archive_flush_ms=1000,
                retrieval_timeout_ms=5000,
                ranking_timeout_ms=5000,
            )
            stack = start_inprocess_stack(  # the topic made as the services make it
                settings,
                first,
                redis_store(settings),
                kafka_publisher(settings),
                kafka_consumer(settings),
            )
            archiver = Archiver(kafka_consumer(settings, settings.archive_group), settings)
            archiver.start()
            with (
                client_channel(stack.gateway_target) as channel,
                client_channel(stack.target("feedback")) as admin_channel,
            ):
                gateway = gateway_pb2_grpc.GatewayStub(channel)
                admin = feedback_pb2_grpc.FeedbackAdminStub(admin_channel)
                first_metrics = recommend_metrics(gateway, slices)
                say(f"first bundle {first.version}: {first_metrics}")
                acknowledged = replay(gateway, slices.replay)

                def applied() -> bool:
                    status = admin.Status(feedback_pb2.FeedbackStatusRequest(), timeout=5)
                    return status.events_applied + status.duplicates_skipped >= acknowledged

                _wait(applied, "live fold-in")
                _wait(lambda: archiver.archived >= acknowledged, "archiving")
                foldin_metrics = recommend_metrics(gateway, slices)
                say(f"with live fold-in of {acknowledged} events: {foldin_metrics}")
                archiver.stop()
                archived = read_logs([archive]).num_rows
                train_and_save(
                    bundles,
                    load_events([archive, slices.history], slices.items, users=slices.users),
                    tune_budget=tune_budget,
                    promotion=Promotion(),
                )
                retrained_version = versions(bundles)[-1]
                retrained = load_bundle(bundles / retrained_version)
                gate = retrained.manifest["gate"]
                serving = latest_version(bundles)
                stack.swap_bundle(retrained)
                retrained_metrics = recommend_metrics(gateway, slices)
                say(f"retrained {retrained_version}: {retrained_metrics}")
                visible_ms = new_item_visible_ms(gateway, admin, retrained)
        finally:
            if archiver is not None and archiver.alive():
                archiver.stop()
            if stack is not None:
                stack.stop()
            broker.stop()
        swaps = swaps_bench.run(bundles / retrained_version, 20, redis_url, progress=say)
    return {
        "bench": "lifecycle",
        "data": str(data),
        "test_users": len(slices.test),
        "events_acknowledged": acknowledged,
        "events_archived": archived,
        "ndcg@20_first": first_metrics["ndcg@20"],
        "recall@20_first": first_metrics["recall@20"],
        "ndcg@20_first_with_foldin": foldin_metrics["ndcg@20"],
        "recall@20_first_with_foldin": foldin_metrics["recall@20"],
        "ndcg@20_retrained": retrained_metrics["ndcg@20"],
        "recall@20_retrained": retrained_metrics["recall@20"],
        "promoted": bool(gate["promoted"]),
        "serving_after_retrain": serving,
        "gate_candidate_ndcg@20": gate["candidate"]["ndcg@20"],
        "gate_serving_ndcg@20": gate["serving"]["ndcg@20"],
        "rss_growth_20_swaps": swaps["rss_growth_20_swaps"],
        "new_item_visible_ms": visible_ms,
        "seconds": round(time.perf_counter() - started, 1),
    }
