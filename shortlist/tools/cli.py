"""The `shortlist` command: train, serve, demo, up/down and benchmarks."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from shortlist.config import Settings
from shortlist.retrieval.precomputed import PRECOMPUTE_PAIRS
from shortlist.tools.bench.cli import bench_app

if TYPE_CHECKING:
    from shortlist.data.interactions import Interactions
    from shortlist.data.loaders import RatingThresholds

app = typer.Typer(help="Shortlist: a two-stage recommender served over gRPC.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console()


@app.command()
def train(
    out: Path = typer.Option(Path("artifacts"), help="Bundle root; LATEST points at the new one."),
    data: Path | None = typer.Option(
        None, help="A LightGCN-format directory (train/valid/test.txt)."
    ),
    events: list[Path] | None = typer.Option(
        None,
        help="An event log: Parquet (file or directory of partitions), CSV or JSON lines with "
        "user_id, item_id, kind, timestamp and any context columns; repeat to train on several.",
    ),
    items: Path | None = typer.Option(
        None, help="With --events: item_id plus attribute columns for the ranker."
    ),
    users: Path | None = typer.Option(
        None, help="With --events: user_id plus attribute columns for the ranker."
    ),
    like_at: float = typer.Option(4.0, help="A numeric kind (rating) at least this is a like."),
    dislike_at: float = typer.Option(2.0, help="A numeric kind at most this is a dislike."),
    model: str = typer.Option(
        "spectral", help="Retrieval model: spectral (the measured best), mf-bpr, lightgcn, ..."
    ),
    options: str = typer.Option("", help="Retrieval model options as JSON."),
    n_users: int = typer.Option(1000, help="Users in the built-in dataset (no --data/--events)."),
    n_items: int = typer.Option(600, help="Items in the built-in dataset."),
    epochs: int = typer.Option(30),
    dim: int = typer.Option(32),
    index: str = typer.Option("auto", help="FAISS index: auto, flat, hnsw or ivf."),
    precomputed: int = typer.Option(
        256, help="Width of each user's precomputed shortlist (0: none, always search)."
    ),
    precomputed_pairs: float = typer.Option(
        PRECOMPUTE_PAIRS,
        min=0,
        help="Precompute every user's shortlist while users x items is at most this, else "
        "the most active users' up to it (the rest are searched per request; 0: none).",
    ),
    seed: int = typer.Option(0),
    gate: bool = typer.Option(
        True,
        help="When a bundle already serves from OUT: train on all but the latest slice, "
        "compare with the serving bundle on that slice, move LATEST only if not worse.",
    ),
    gate_share: float = typer.Option(
        0.05, help="Share of the likes (the latest) the gate holds out."
    ),
    gate_margin: float = typer.Option(
        0.02, help="How far (relative NDCG@20) the candidate may fall below the serving bundle."
    ),
    refit: bool = typer.Option(
        True, help="Once the gate passes, retrain on all events (the slice included)."
    ),
    keep: int = typer.Option(
        5, help="Bundles kept on disk (the serving one and its rollback target always)."
    ),
    tune_budget: float | None = typer.Option(
        None,
        min=0.0,
        help="Seconds to choose the retrieval options on a held-out slice of the training "
        "likes (default: shortlist.training.tuning.DEFAULT_BUDGET, 120, grown to 8 times the "
        "default trial's CPU seconds up to 1200 on large data; 0: model defaults; "
        "--options wins).",
    ),
    engine: str = typer.Option(
        "inprocess",
        help="Where training runs: inprocess (this process) or dask (Parquet read, SVD, "
        "item-item table and ranker fit on Dask workers).",
    ),
    scheduler: str | None = typer.Option(
        None,
        help="With --engine dask: the scheduler address (tcp://host:8786); without it a "
        "LocalCluster of 2 worker processes.",
    ),
    lightgbm_port: int = typer.Option(
        0,
        min=0,
        max=65535,
        help="With --scheduler: the port LightGBM's ranker fit listens on in each worker "
        "(one worker per machine; 0: free ports found per fit).",
    ),
) -> None:
    """Train retrieval and ranker and write a versioned bundle the services load (from an
    event log, a LightGCN-format directory, or the built-in data)."""
    from shortlist.compute import ENGINES, engine_for
    from shortlist.data.loaders import RatingThresholds

    if data is not None and events:
        raise typer.BadParameter("give --data or --events, not both", param_hint="--events")
    if items is not None and not events:
        raise typer.BadParameter("--items goes with --events", param_hint="--items")
    if users is not None and not events:
        raise typer.BadParameter("--users goes with --events", param_hint="--users")
    if data is not None and not data.is_dir():
        raise typer.BadParameter(f"no dataset directory at {data}", param_hint="--data")
    if not 0.0 < gate_share < 0.5:
        raise typer.BadParameter(
            f"must be in (0, 0.5), got {gate_share}", param_hint="--gate-share"
        )
    if not 0.0 <= gate_margin < 1.0:
        raise typer.BadParameter(
            f"must be in [0, 1), got {gate_margin}", param_hint="--gate-margin"
        )
    if keep < 1:
        raise typer.BadParameter(f"must be at least 1, got {keep}", param_hint="--keep")
    try:
        if options and not isinstance(json.loads(options), dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise typer.BadParameter(f"must be a JSON object: {exc}", param_hint="--options") from None
    tune_scaled = tune_budget is None  # the default budget grows with the data
    if tune_budget is None:
        from shortlist.training.tuning import DEFAULT_BUDGET

        tune_budget = DEFAULT_BUDGET
    if engine not in ENGINES:
        raise typer.BadParameter(
            f"must be one of {', '.join(ENGINES)}, got {engine!r}", param_hint="--engine"
        )
    if scheduler and engine != "dask":
        raise typer.BadParameter("--scheduler goes with --engine dask", param_hint="--scheduler")
    with engine_for(engine, scheduler, lightgbm_port=lightgbm_port):
        interactions = _interactions(
            data,
            events,
            items,
            users,
            RatingThresholds(like_at, dislike_at),
            n_users,
            n_items,
            seed,
        )
        train_and_save(
            out,
            interactions,
            model,
            options,
            epochs,
            dim,
            index,
            precomputed,
            seed,
            tune_budget,
            Promotion(gate, gate_share, gate_margin, refit, keep),
            tune_scaled=tune_scaled,
            precomputed_pairs=precomputed_pairs,
        )


def _interactions(
    data: Path | None,
    events: list[Path] | None,
    items: Path | None,
    users: Path | None,
    thresholds: RatingThresholds,
    n_users: int,
    n_items: int,
    seed: int,
) -> Interactions:
    """What `shortlist train` trains on: the event logs (on the current engine), a
    LightGCN-format directory, or the built-in data; bad events exit with status 2."""
    from shortlist.data.events import BadEvents, load_events

    if not events:
        return _dataset(data, n_users, n_items, seed)
    try:
        with console.status("reading events"):
            return load_events(events, items, thresholds, users)
    except BadEvents as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None


def _dataset(data: Path | None, n_users: int, n_items: int, seed: int) -> Interactions:
    """A LightGCN-format directory's train+valid, or the built-in data."""
    if data is None:
        from shortlist.data.synthetic import generate

        return generate(n_users=n_users, n_items=n_items, seed=7 + seed)
    from shortlist.data.loaders import load_lightgcn_dir

    return load_lightgcn_dir(data).train_valid()


def train_and_save(
    out: Path,
    interactions: Interactions,
    model: str = "spectral",
    options: str = "",
    epochs: int = 30,
    dim: int = 32,
    index: str = "auto",
    precomputed: int = 256,
    seed: int = 0,
    tune_budget: float = 0.0,
    promotion: Promotion | None = None,
    tune_scaled: bool = False,
    precomputed_pairs: float = PRECOMPUTE_PAIRS,
) -> None:
    """What `shortlist train` does once the data is read, callable with plain values (`up`
    trains the built-in data with the defaults when no bundle exists yet). The bundle is
    written under a temporary name and renamed into place: nothing is half-written. When a
    bundle serves from `out`, the candidate passes the promotion gate first."""
    from shortlist.bundle.files import save_bundle
    from shortlist.bundle.promotion import latest_version, prune
    from shortlist.training.pipeline import TrainConfig, train_bundle

    promotion = promotion or Promotion()
    key = Settings.from_env().bundle_key or None  # SHORTLIST_BUNDLE_KEY signs the bundle
    config = TrainConfig(
        dim=dim,
        epochs=epochs,
        seed=seed,
        index=index,
        precomputed=precomputed,
        precomputed_pairs=precomputed_pairs,
        model=model,
        model_options=json.loads(options) if options else None,
        tune_budget=tune_budget,
        tune_scaled=tune_scaled,
    )
    if promotion.gate and latest_version(out) is not None:
        bundle, promoted = _gated(out, interactions, config, promotion, key)
        path = save_bundle(bundle, out, promote_it=promoted, reason="gate", key=key)
    else:
        with console.status("training"):
            bundle = train_bundle(interactions, config, progress=console.log)
        path = save_bundle(bundle, out, key=key)
    deleted = prune(out, promotion.keep)
    if deleted:
        console.log(f"deleted old bundles (keeping {promotion.keep}): {', '.join(deleted)}")
    table = Table(title=f"bundle {bundle.version} -> {path}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in bundle.manifest["metrics"].items():
        table.add_row(key, str(value))
    console.print(table)
    tuning = bundle.manifest["tuning"]
    console.print(
        f"options ({tuning['stopped']}, {len(tuning['trials'])} trials): {tuning['chosen']}"
    )


@dataclass
class Promotion:
    """How a new bundle replaces the serving one (`shortlist train --gate ...`)."""

    gate: bool = True
    share: float = 0.05
    margin: float = 0.02
    refit: bool = True
    keep: int = 5


def _gated(out: Path, interactions: Interactions, config, promotion: Promotion, key: str | None):
    """Train a candidate without the latest slice and gate it against the serving bundle
    (shortlist.evaluation.gate); returns the bundle to save and whether it is promoted.
    Both figures are printed and written to `<out>/gate.prom` (Prometheus textfile format)
    whatever the outcome."""
    from shortlist.bundle.files import load_bundle
    from shortlist.evaluation.gate import gate, recent_slice, write_metrics
    from shortlist.training.pipeline import train_bundle

    history, recent = recent_slice(interactions, promotion.share)
    with console.status("training the candidate without the latest slice"):
        candidate = train_bundle(history, config, progress=console.log)
    with console.status("gate: candidate and serving bundle on the latest slice"):
        serving = load_bundle(out, key=key)
        result = gate(candidate, serving, history, recent, promotion.margin)
    console.print(result.summary())
    write_metrics(result, out / "gate.prom")
    bundle = candidate
    if result.promoted and promotion.refit:
        # the options the candidate was tuned to and gated with, not a second search
        tuned = replace(config, model_options=candidate.manifest["model_options"])
        with console.status("refitting on all events"):
            bundle = train_bundle(interactions, tuned, progress=console.log)
        bundle.manifest["tuning"] = candidate.manifest["tuning"]
    bundle.manifest["gate"] = result.as_dict()
    return bundle, result.promoted


@app.command()
def promote(
    version: str = typer.Argument(..., help="The bundle version to serve (a folder of OUT)."),
    out: Path = typer.Option(Path("artifacts"), help="Bundle root."),
) -> None:
    """Serve VERSION: point OUT/LATEST at it (the services swap within seconds)."""
    from shortlist.bundle.promotion import PromotionError
    from shortlist.bundle.promotion import promote as point_at

    try:
        point_at(out, version, "promote")
    except PromotionError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"serving {version} from {out}")


@app.command()
def rollback(out: Path = typer.Option(Path("artifacts"), help="Bundle root.")) -> None:
    """Serve again the bundle that served before the current one."""
    from shortlist.bundle.promotion import PromotionError
    from shortlist.bundle.promotion import rollback as roll_back

    try:
        version = roll_back(out)
    except PromotionError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"rolled back: serving {version} from {out}")


@app.command("rebuild-state")
def rebuild_state(
    archive: Path | None = typer.Option(
        None, help="The feedback archive (SHORTLIST_ARCHIVE_PATH) to replay first."
    ),
    topic: bool = typer.Option(
        False, "--topic", help="Also replay the feedback topic from its earliest offset."
    ),
    force: bool = typer.Option(False, help="Write into a Redis prefix that holds keys."),
    idle_s: float = typer.Option(5.0, help="Stop reading the topic after this long idle."),
) -> None:
    """Rebuild the live state in an empty Redis (SHORTLIST_REDIS_URL, _PREFIX) from the
    event log: the archive and/or the feedback topic, through the feedback worker's apply
    path, for the bundle SHORTLIST_BUNDLE serves."""
    import redis

    from shortlist.bundle.files import load_bundle
    from shortlist.feedback.bus import KafkaEventConsumer, client_security
    from shortlist.feedback.rebuild import rebuild_group
    from shortlist.feedback.rebuild import rebuild_state as replay
    from shortlist.feedback.stores import RedisStateStore, RedisTLS, redis_client

    def fail(message: str) -> None:
        console.print(f"[red]error:[/red] {message}", soft_wrap=True)
        raise typer.Exit(2)

    settings = Settings.from_env()
    if archive is None and not topic:
        fail("nothing to replay: give --archive PATH and/or --topic")
    if archive is not None and not archive.is_dir():
        fail(f"--archive {archive} is not a directory")
    try:
        client = redis_client(settings.redis_url, RedisTLS.from_settings(settings))
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in settings.redis_prefix) + "*"
        held = next(iter(client.scan_iter(match=pattern, count=1000)), None)
    except redis.RedisError as exc:
        fail(f"Redis at SHORTLIST_REDIS_URL is unavailable: {exc}")
    if held is not None and not force:
        fail(
            f"Redis already holds keys under SHORTLIST_REDIS_PREFIX={settings.redis_prefix!r} "
            f"(e.g. {held.decode(errors='replace')!r}): rebuild into an empty prefix, or --force"
        )
    bundle = load_bundle(Path(settings.bundle), with_index=False, key=settings.bundle_key or None)
    consumer = None
    if topic:
        consumer = KafkaEventConsumer(
            settings.kafka_bootstrap,
            settings.feedback_topic,
            rebuild_group(settings),
            security=client_security(settings),
        )
    store = RedisStateStore(
        settings.redis_url, settings.redis_prefix, tls=RedisTLS.from_settings(settings)
    )
    with console.status("replaying the event log"):
        report = replay(
            bundle, store, settings, archive, consumer, idle_polls=max(1, round(idle_s))
        )
    console.print_json(json.dumps({"bundle": bundle.version, **report.as_dict()}))


@app.command("sample-events")
def sample_events(
    out: Path = typer.Argument(
        Path(".run/sample"), help="Folder for events.parquet and items.parquet."
    ),
) -> None:
    """Write the built-in data as an event log and item file, the form `shortlist train
    --events/--items` reads (what `make train`, `up` and the demo train from)."""
    events, items = _sample_events(out)
    console.print(f"wrote {events} and {items}")


def _sample_events(out: Path) -> tuple[Path, Path]:
    from shortlist.data.synthetic import generate, write_events

    return write_events(generate(), out)


@app.command()
def serve(name: str = typer.Argument(..., help="retrieval | ranking | feedback | gateway")) -> None:
    """Run one service in the foreground (settings from SHORTLIST_* environment variables);
    the same as `python -m shortlist.services NAME`, the container entrypoint."""
    from shortlist.services.__main__ import main as serve_main
    from shortlist.services.launch import SERVICES

    if name not in SERVICES:
        raise typer.BadParameter(f"choose from {', '.join(SERVICES)}", param_hint="NAME")
    raise typer.Exit(serve_main([name]))


@app.command()
def demo() -> None:
    """Train on the built-in data, serve in-process, and show feedback changing results."""
    from shortlist.tools.demo import run

    run(console)


@app.command()
def up() -> None:
    """Start Redis (if none answers), the tansu broker and the four services in the background."""
    from shortlist.rpc.security import is_loopback
    from shortlist.tools import stack

    settings = Settings.from_env()
    if "SHORTLIST_REFLECTION" not in os.environ and is_loopback(settings.gateway_addr):
        settings = settings.replace(reflection=1)  # local development: `grpcurl list` works
    if "SHORTLIST_CONSOLE" not in os.environ and is_loopback(settings.gateway_http_addr):
        settings = settings.replace(console=1)  # the web console at /console on loopback
    if (
        not (Path(settings.bundle) / "LATEST").exists()
        and not Path(settings.bundle, "manifest.json").exists()
    ):
        from shortlist.data.events import load_events

        events, items = _sample_events(Path(".run/sample"))
        train_and_save(Path(settings.bundle), load_events([events], items))
    with console.status("starting the local stack"):
        pids = stack.up(settings)
    table = Table(title="Shortlist local stack is up", title_justify="left")
    for col in ("part", "address", "metrics", "pid"):
        table.add_column(col)
    table.add_row("redis", settings.redis_url, "", str(pids.get("redis", "(already running)")))
    table.add_row(
        "kafka (tansu)", settings.kafka_bootstrap, "", str(pids.get("tansu", "(already running)"))
    )
    for name in stack.SERVICES:
        if name not in pids:
            table.add_row(name, "(in the gateway: colocate=1)", "", "")
            continue
        for worker in range(settings.gateway_workers if name == "gateway" else 1):
            port = getattr(settings, f"{name}_metrics_port") + worker
            process = stack.worker_name(name, worker)
            table.add_row(
                process,
                getattr(settings, f"{name}_addr"),
                f"http://{settings.metrics_host}:{port}/metrics",
                str(pids[process]),
            )
    if settings.gateway_http_addr:
        table.add_row("HTTP/JSON API", f"http://{settings.gateway_http_addr}", "", "(gateway)")
        if settings.console:
            url = f"http://{settings.gateway_http_addr}/console"
            table.add_row("web console", url, "", "(gateway)")
    console.print(table)
    console.print(
        f"try: grpcurl -plaintext {settings.gateway_addr} list\n"
        f'     grpcurl -plaintext -d \'{{"user_id": "user-0007", "k": 5}}\' '
        f"{settings.gateway_addr} shortlist.v1.Gateway/Recommend\n"
        f'     curl -s -d \'{{"userId": "user-0007", "k": 5}}\' '
        f"http://{settings.gateway_http_addr}/v1/recommend\n"
        "stop: make down"
    )


@app.command()
def down() -> None:
    """Stop what `shortlist up` started."""
    from shortlist.tools import stack

    stopped = stack.down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def settings() -> None:
    """Print the effective settings as environment variables (secrets masked)."""
    values = Settings.from_env().to_env()
    secrets = ("INTERNAL_TOKEN", "BUNDLE_KEY", "JWT_SECRET", "CONSOLE_API_KEY", "KAFKA_PASSWORD")
    for name in (f"SHORTLIST_{s}" for s in secrets):
        if values.get(name):
            values[name] = "***"
    url = values.get("SHORTLIST_REDIS_URL", "")
    if "@" in url:  # redis://user:password@host: the password masked
        head, _, tail = url.rpartition("@")
        scheme, _, auth = head.partition("://")
        user = auth.split(":", 1)[0] if ":" in auth else ""
        values["SHORTLIST_REDIS_URL"] = f"{scheme}://{user}:***@{tail}"
    console.print_json(json.dumps(values))


@app.command("hash-key")
def hash_key(
    key: str = typer.Argument(
        ..., help="The API key or internal token; '-' reads it from standard input."
    ),
) -> None:
    """Print the sha256 hex digest to put in SHORTLIST_API_KEY_HASHES (or
    SHORTLIST_INTERNAL_TOKEN_HASH); only the digest is ever configured on the servers."""
    import sys

    from shortlist.rpc.security import hash_key as digest

    if key == "-":
        key = sys.stdin.readline().rstrip("\n")
    if not key:
        raise typer.BadParameter("the key must not be empty", param_hint="KEY")
    print(digest(key))


@app.command()
def loadtest(
    target: str = typer.Option(
        ...,
        help="Gateway address, HOST:PORT; or several, comma-separated (e.g. the gateway "
        "workers' own ports), which the connections are spread over evenly.",
    ),
    rate: float = typer.Option(..., help="Arrivals per second (open loop: fixed schedule)."),
    duration: float = typer.Option(..., help="Measured seconds (after the warm-up)."),
    warmup: float = typer.Option(2.0, help="Seconds sent at the same rate but not counted."),
    users: Path | None = typer.Option(
        None, help="User ids, one a line; default user-0000 .. (see --n-users)."
    ),
    n_users: int = typer.Option(1000, help="Users when no --users file is given."),
    zipf: float = typer.Option(0.8, help="Skew of the user mix: weight of rank r ~ 1/r**zipf."),
    unknown_share: float = typer.Option(0.05, help="Share of Recommend calls for unknown users."),
    feedback_share: float = typer.Option(
        0.0, help="Share of arrivals that are SendFeedback (like/dislike of a shown item)."
    ),
    k: int = typer.Option(20, help="Items per Recommend call."),
    concurrency: int = typer.Option(
        0, help="Max calls in flight (0: unbounded); waits count in the latency."
    ),
    connections: int = typer.Option(
        1, help="TCP connections, used in turn (several gateway processes share a port)."
    ),
    timeout: float = typer.Option(2.0, help="Deadline per call in seconds."),
    seed: int = typer.Option(0),
    plot: Path | None = typer.Option(None, help="Write latency-over-time to this PNG."),
    watch_stack: bool = typer.Option(
        True, help="Report CPU per call of the `shortlist up` processes (.run/pids.json)."
    ),
    http: bool = typer.Option(
        False,
        "--http",
        help="Call the HTTP/JSON front door at --target (HOST:PORT, e.g. 127.0.0.1:8080) "
        "instead of gRPC: POST /v1/recommend and /v1/feedback.",
    ),
    api_key: str | None = typer.Option(
        None, envvar="SHORTLIST_LOADTEST_API_KEY", help="API key sent with every call."
    ),
) -> None:
    """Open-loop load test of Gateway/Recommend (gRPC, or HTTP/JSON with --http); the last
    stdout line is a JSON summary."""
    from shortlist.tools import loadtest as lt
    from shortlist.tools.stack import watched_processes

    user_ids = None
    if users is not None:
        if not users.is_file():
            raise typer.BadParameter(f"no file at {users}", param_hint="--users")
        user_ids = lt.read_users(users)
    config = lt.LoadConfig(
        target=target,
        rate=rate,
        duration_s=duration,
        warmup_s=warmup,
        users=user_ids,
        n_users=n_users,
        zipf=zipf,
        unknown_share=unknown_share,
        feedback_share=feedback_share,
        k=k,
        concurrency=concurrency,
        connections=connections,
        timeout_s=timeout,
        seed=seed,
        watch_pids=watched_processes(Settings.from_env()) if watch_stack else None,
        http=http,
        api_key=api_key,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    console.print(
        f"loadtest {'http://' if http else ''}{target}: {rate:g}/s for {warmup:g}s warm-up "
        f"+ {duration:g}s, k={k}, feedback share {feedback_share:g}"
    )
    result = lt.run(config, on_progress=None)
    lt.main_report(result, console, plot)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
