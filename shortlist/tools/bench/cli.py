"""`shortlist bench` sub-commands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

RANKER_LABELS = ("served", "valid", "latest", "random")

bench_app = typer.Typer(help="Benchmarks that print figures (quality, serving, feedback).")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _parse_config(text: str | None) -> dict[str, Any]:
    """`--config` is a JSON object, inline or in a file."""
    if not text:
        return {}
    source = text
    if not text.lstrip().startswith("{") and Path(text).is_file():
        source = Path(text).read_text()
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        _fail(f"--config is not a JSON object nor a JSON file: {exc}")
    if not isinstance(value, dict):
        _fail("--config must be a JSON object, e.g. '{\"epochs\": 20}'")
    return value


@bench_app.command("quality")
def quality(
    data: Path = typer.Option(
        None, "--data", help="Directory in the LightGCN text format (train/valid/test.txt)."
    ),
    events: list[Path] = typer.Option(
        None,
        "--events",
        help="Event log(s), as `shortlist train --events`: the latest 10% of likes in time "
        "are the test, the 10% before them valid.",
    ),
    protocol: str = typer.Option(
        ...,
        "--protocol",
        help="A: train on train+valid. B: train on train, select on valid, the test ranking "
        "excludes train items only (LightGCN++). B-valid-excluded: B with valid items also "
        "excluded (never comparable with published figures).",
    ),
    model: str = typer.Option(
        None,
        "--model",
        help="Retrieval model (default: spectral), or a peer from implicit: als, implicit-bpr "
        "(options chosen on valid within --tune-budget, default 300 s).",
    ),
    config: str = typer.Option(
        None, "--config", help="Model options as a JSON object (inline or a file path)."
    ),
    report: Path = typer.Option(
        None, "--report", help="Directory for the markdown report and validation-curve plot."
    ),
    pipeline: str = typer.Option("retrieval", "--pipeline", help="What is evaluated."),
    ranker_seeds: int = typer.Option(
        1, "--ranker-seeds", min=1, help="two-stage: also run seeds 1..N-1, print each lift."
    ),
    ranker_labels: str = typer.Option(
        "served",
        "--ranker-labels",
        help="two-stage: the ranker's labels. served (default): as `shortlist train` holds "
        "them out of the training likes (the latest 20% of each user's likes where likes are "
        "ordered, else a seeded random 20%); latest, random: that rule forced; valid: the "
        "valid split.",
    ),
    ranker_lists: int = typer.Option(
        None, "--ranker-lists", min=100, help="two-stage: most lists the ranker is fit on."
    ),
    tune_budget: float = typer.Option(
        None,
        "--tune-budget",
        min=0.0,
        help="Seconds to choose the options on the training part (B: on valid; A: a held-out "
        "slice of train+valid, as `shortlist train`), the same search for every dataset; "
        "default: `shortlist train`'s (120 CPU s, grown to 8 default trials up to 1200 on large "
        "data); 0: the model's defaults. --config keys stay fixed.",
    ),
) -> None:
    """Train a retrieval model under protocol A or B and print its test metrics.

    The last stdout line is one JSON object (dataset, protocol, model, recall@20, ...).
    """
    from shortlist.data.events import BadEvents
    from shortlist.models import registry
    from shortlist.tools.bench import quality as bench_quality

    if (data is None) == (not events):
        _fail("give --data or --events (one of them)")
    # split in time (event logs, MovieLens): protocol B always has its valid slice
    timed = bool(events)
    source: str | list[Path] = list(events or [])
    if data is not None:
        if not data.is_dir():
            _fail(f"dataset directory not found: {data}")
        timed = (data / "u.data").is_file()
        lightgcn = (data / "train.txt").is_file() and (data / "test.txt").is_file()
        if not timed and not lightgcn:
            _fail(
                f"{data} is neither in the LightGCN text format (train.txt, test.txt) nor "
                "MovieLens-100K (u.data)"
            )
        source = str(data)
    from shortlist.evaluation.protocols import normalize_protocol, trains_on_train_only

    try:
        protocol = normalize_protocol(protocol)
    except ValueError as exc:
        _fail(f"--protocol: {exc}")
    if trains_on_train_only(protocol) and not timed and not (data / "valid.txt").is_file():
        _fail(f"protocol B needs {data / 'valid.txt'}")
    model = model or bench_quality.DEFAULT_MODEL
    from shortlist.tools.bench import peers

    if model in peers.PEERS and not peers.available():
        _fail(f"--model {model} is implicit's; install it: {peers.INSTALL_HINT}")
    if model not in registry.model_names() and model not in peers.PEERS:
        names = ", ".join([*registry.model_names(), *peers.PEERS])
        _fail(f"unknown model {model!r}; choose from {names}")
    if pipeline not in bench_quality.PIPELINES:
        _fail(f"unknown pipeline {pipeline!r}; choose from {', '.join(bench_quality.PIPELINES)}")
    if ranker_labels not in RANKER_LABELS:
        _fail(f"--ranker-labels must be one of {', '.join(RANKER_LABELS)}, got {ranker_labels!r}")
    options = _parse_config(config)
    try:
        bench_quality.main(
            source,
            protocol,
            model=model,
            config=options,
            report_dir=str(report) if report else None,
            pipeline=pipeline,
            ranker_seeds=ranker_seeds,
            ranker_labels=ranker_labels,
            ranker_lists=ranker_lists,
            tune_budget=tune_budget,
        )
    except (BadEvents, ValueError, KeyError, FileNotFoundError, ImportError) as exc:
        _fail(str(exc))


def _emit(result: dict[str, Any], title: str) -> None:
    """A readable table of the flat figures, then the JSON line (always the last line)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")

    def rows(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                rows(f"{prefix}{k}.", v)
        elif not isinstance(value, list):
            table.add_row(prefix.rstrip("."), str(value))

    rows("", result)
    Console().print(table)
    print(json.dumps(result), flush=True)


@bench_app.command("feedback")
def feedback(
    trials: int = typer.Option(200, help="Like -> Recommend freshness trials."),
    events: int = typer.Option(50_000, help="Events for the single-consumer throughput run."),
    batch: int = typer.Option(2000, help="Records per consumer poll / Redis transaction."),
    foldin_data: list[Path] = typer.Option(
        [], "--foldin-data", help="LightGCN-format dirs for the fold-in quality run (repeatable)."
    ),
    foldin_model: str = typer.Option("spectral", help="Retrieval model for fold-in quality."),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0"),
) -> None:
    """Freshness, ingestion throughput and fold-in quality over tansu and a real Redis."""
    from shortlist.tools.bench import feedback as bench_feedback
    from shortlist.tools.bench import foldin_bench

    cfg = bench_feedback.FeedbackBenchConfig(
        trials=trials, events=events, batch=batch, redis_url=redis_url
    )
    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    result = bench_feedback.run(cfg, progress=say)
    result["foldin"] = []
    for directory in foldin_data:
        if not directory.is_dir():
            say(f"fold-in: {directory} absent, skipped")
            continue
        result["foldin"].append(
            foldin_bench.run(str(directory), foldin_model, redis_url=redis_url, progress=say)
        )
    for row in result["foldin"]:
        result[f"foldin_{row['dataset']}"] = {
            k: row[k] for k in ("heldout_recall@20", "trained_recall@20", "recall_ratio")
        }
    _emit(result, "feedback loop")


@bench_app.command("pod-memory")
def pod_memory(
    sizes: str = typer.Option(
        "30000,300000,3000000",
        help="Users per bundle, comma-separated (empty: only the per-vector cost).",
    ),
    items: int = typer.Option(20_000, help="Items (the same catalogue at every size)."),
    dim: int = typer.Option(128, help="Vector size (floats)."),
    likes_per_user: int = typer.Option(10, help="Generated likes per user (mean)."),
    width: int = typer.Option(50, help="Precomputed shortlist per user."),
    requests: int = typer.Option(400, help="Requests per pod."),
    pods: int = typer.Option(2, help="Processes of each service at once on the bundle."),
    services: str = typer.Option("retrieval,ranking", help="Services measured."),
    old_code: str = typer.Option(
        "", help="A checkout of the code before (e.g. the main branch) to run as well."
    ),
    work: Path = typer.Option(Path("reports/pod-memory"), help="Where bundles are kept."),
) -> None:
    """RSS/PSS/USS of retrieval and ranking pods over generated bundles of growing users."""
    from shortlist.tools.bench import pod_memory as pm

    try:
        parsed = tuple(int(s) for s in sizes.split(",") if s.strip())
    except ValueError:
        _fail(f"--sizes must be comma-separated integers, got {sizes!r}")
    names = tuple(s.strip() for s in services.split(",") if s.strip())
    if parsed and min(parsed) < 1:
        _fail("--sizes must be positive (none: only the vector cost is measured)")
    if not set(names) <= {"retrieval", "ranking"} or not names:
        _fail("--services: retrieval and/or ranking")
    if old_code and not (Path(old_code) / "shortlist").is_dir():
        _fail(f"--old-code {old_code} is not a checkout of shortlist")
    cfg = pm.PodMemoryConfig(
        sizes=parsed,
        items=items,
        dim=dim,
        likes_per_user=likes_per_user,
        width=width,
        requests=requests,
        pods=pods,
        services=names,
        old_code=str(Path(old_code).resolve()) if old_code else "",
        work=work,
    )
    result = pm.run(cfg, progress=lambda msg: typer.echo(msg, err=True))
    _emit(result, "pod memory by users")


@bench_app.command("state")
def state(
    users: int = typer.Option(4000, help="Users whose state is written."),
    events_per_user: int = typer.Option(25, help="Feedback events per user (on average)."),
    dim: int = typer.Option(1280, help="Folded-in vector size (floats)."),
    reads: int = typer.Option(5000, help="Request reads (user_state) per backend."),
) -> None:
    """Redis state store on one Redis and on a local three-master Redis Cluster: memory
    per user, write and read throughput of one client."""
    from shortlist.tools.bench import state_bench

    cfg = state_bench.StateBenchConfig(
        users=users, events_per_user=events_per_user, dim=dim, reads=reads
    )
    result = state_bench.run(cfg, progress=lambda msg: typer.echo(msg, err=True))
    _emit(result, "state store")


@bench_app.command("index")
def index(
    data: Path = typer.Option(..., "--data", help="LightGCN-format directory (protocol A)."),
    model: str = typer.Option("spectral", help="Retrieval model whose item vectors are indexed."),
    queries: int = typer.Option(1000, help="User vectors used as queries."),
) -> None:
    """Recall@100 against exact search and per-query latency of FAISS index candidates."""
    from shortlist.data.loaders import load_lightgcn_dir
    from shortlist.models import registry
    from shortlist.tools.bench import index_bench

    if not data.is_dir():
        _fail(f"dataset directory not found: {data}")
    split = load_lightgcn_dir(data)
    fitted = registry.build(model)
    typer.echo(f"training {model} on {split.name} (protocol A data)", err=True)
    fitted.fit(split.train_valid())
    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    result = index_bench.measure(
        fitted.item_factors, fitted.user_factors, n_queries=queries, progress=say
    )
    result.update({"dataset": split.name, "model": model})
    _emit(result, f"FAISS index on {split.name} {model} item vectors")


@bench_app.command("dislikes")
def dislikes(
    data: Path = typer.Option(..., "--data", help="MovieLens-100K directory (u.data, u.item)."),
    seeds: int = typer.Option(3, help="Seeds per arm (0..seeds-1)."),
    config: str = typer.Option(None, "--config", help="LightGCN options as a JSON object."),
    arms: str = typer.Option(
        "lightgcn,lightgcn-dislikes,lightgcn-neg,spectral", help="Comma-separated arms to run."
    ),
) -> None:
    """LightGCN without dislikes, with them as negatives, with the negative graph, and the
    default served model, on MovieLens-100K: recall and disliked items in the top 20."""
    from shortlist.tools.bench import dislikes as bench_dislikes

    if not (data / "u.data").is_file():
        _fail(f"{data} has no u.data (MovieLens-100K expected)")
    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    chosen = [a.strip() for a in arms.split(",") if a.strip()]
    if not chosen or set(chosen) - set(bench_dislikes.ARMS):
        _fail(f"--arms must name some of {', '.join(bench_dislikes.ARMS)}, got {arms!r}")
    result = bench_dislikes.run(
        data, list(range(seeds)), _parse_config(config), progress=say, arms=chosen
    )
    _emit(result, "MovieLens-100K with dislikes: LightGCN without/with the negative graph")


@bench_app.command("ranking")
def ranking(
    bundle: Path = typer.Option(Path("artifacts"), "--bundle", help="Artifact bundle (or root)."),
    requests: int = typer.Option(2000, help="Rank calls to time."),
    candidates: int = typer.Option(200, help="Shortlist size per call."),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0"),
    in_process: bool = typer.Option(
        False, "--in-process", help="Serve from the benchmark's own process (one GIL)."
    ),
    reasons_and_rules: bool = typer.Option(
        False,
        "--reasons-and-rules",
        help="Also time each call with reasons, with rules and with both (interleaved).",
    ),
) -> None:
    """Latency of the ranking service alone over gRPC: features + LightGBM on a shortlist."""
    from shortlist.tools.bench import ranking_bench

    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    try:
        result = ranking_bench.run(
            bundle,
            requests,
            candidates,
            redis_url=redis_url,
            progress=say,
            in_process=in_process,
            reasons_and_rules=reasons_and_rules,
        )
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    _emit(result, "ranking service over gRPC")


@bench_app.command("swaps")
def swaps(
    bundle: Path = typer.Option(Path("artifacts"), "--bundle", help="Artifact bundle (or root)."),
    count: int = typer.Option(20, "--swaps", help="Hot swaps to make."),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0"),
) -> None:
    """Resident memory of the co-located stages over repeated hot swaps of a bundle."""
    from shortlist.tools.bench import swaps as bench_swaps

    if count < 2:
        _fail("--swaps must be at least 2")
    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    try:
        result = bench_swaps.run(bundle, count, redis_url, progress=say)
    except FileNotFoundError as exc:
        _fail(str(exc))
    _emit(result, "memory over hot swaps")


@bench_app.command("lifecycle")
def lifecycle(
    data: Path = typer.Option(Path("../shared/data/ml-100k"), help="MovieLens-100K folder."),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0"),
    tune_budget: float = typer.Option(30.0, help="Seconds of option tuning per training."),
) -> None:
    """Events in, live feedback folded in and archived, retrained through the promotion gate,
    a new item recommended: MovieLens-100K over the real services (Redis, the broker)."""
    from shortlist.tools.bench import lifecycle as bench_lifecycle

    if not (data / "u.data").exists():
        _fail(f"no MovieLens-100K u.data in {data}")
    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    _emit(bench_lifecycle.run(data, redis_url, tune_budget, say), "lifecycle")


@bench_app.command("soak")
def soak(
    seconds: float = typer.Option(600.0, "--seconds", help="Measured seconds of load."),
    rate: float = typer.Option(100.0, "--rate", help="Arrivals per second (open loop)."),
    feedback_share: float = typer.Option(0.2, "--feedback-share", help="Share of SendFeedback."),
    warmup: float = typer.Option(60.0, "--warmup", help="Seconds before the memory baseline."),
    sample: float = typer.Option(5.0, "--sample", help="Seconds between RSS samples."),
    max_rss_growth: float = typer.Option(
        0.10, "--max-rss-growth", help="Bound on RSS growth per service after the warm-up."
    ),
    bundle: str = typer.Option("artifacts", "--bundle", help="Bundle root (trained if absent)."),
    report: Path = typer.Option(None, "--report", help="Write the JSON report here."),
    faults: str = typer.Option(
        "",
        "--faults",
        help="Faults to inject in turn, comma-separated, or 'all' (redis_kill9, hot_swap, "
        "redis_maxmemory, broker_restart, redis_sleep, tampered_bundle); none by default.",
    ),
    fault_every: float = typer.Option(60.0, "--fault-every", help="Seconds between faults."),
) -> None:
    """The local stack under steady mixed load: errors, p50/p99 per minute, RSS per process.

    Exits 1 when a bound is broken (any error, RSS growth past the bound, feedback
    acknowledged but not applied). With --faults the stack runs on a Redis and a broker of
    its own and the faults are injected on a schedule: errors are then allowed only inside
    a fault's window (reported by fault and code), and every acknowledged event must be
    applied once (those lost with the memory broker's log are counted apart). The last
    stdout line is a JSON summary.
    """
    from rich.console import Console

    from shortlist.tools.bench import soak as soak_bench

    config = soak_bench.SoakConfig(
        seconds=seconds,
        rate=rate,
        feedback_share=feedback_share,
        warmup_s=warmup,
        sample_s=sample,
        max_rss_growth=max_rss_growth,
        bundle=bundle,
        faults=_fault_names(faults),
        fault_every_s=fault_every,
    )
    result = soak_bench.run(config, Console(width=150))
    if report is not None:
        soak_bench.write_report(result, report)
    if not result["passed"]:
        raise typer.Exit(code=1)


def _fault_names(text: str) -> tuple[str, ...]:
    from shortlist.tools.bench.soak_faults import FAULTS

    if text.strip() == "all":
        return FAULTS
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        _fail(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    return names


@bench_app.command("stages")
def stages(
    bundle: Path = typer.Option(
        None, "--bundle", help="The served bundle (root): its sources' sizes join the JSON."
    ),
) -> None:
    """Per-stage latency of the running local stack (`shortlist up`, same settings), from
    its processes' stage histograms since they started. The last stdout line is JSON."""
    from rich.console import Console
    from rich.table import Table

    from shortlist.config import Settings
    from shortlist.tools.bench import stages as bench_stages

    urls = bench_stages.metrics_urls(Settings.from_env())
    found, missing = bench_stages.scrape(urls)
    if len(missing) == len(urls):
        _fail(f"no stack metrics answered at {', '.join(urls)}")
    rows = bench_stages.summary(found)
    table = Table(title="stage latency (histograms summed over processes and arms)")
    for col in ("service", "stage", "count", "mean_ms", "p50_ms", "p99_ms"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            *(str(row[c]) for c in ("service", "stage", "count", "mean_ms", "p50_ms", "p99_ms"))
        )
    console = Console(width=120)
    console.print(table)
    for url in missing:
        console.print(f"no answer: {url}")
    out: dict = {"stages": rows, "missing": missing, "load_average": list(os.getloadavg())}
    if bundle is not None:
        from shortlist.bundle.files import load_bundle
        from shortlist.tools.bench.sizes import source_sizes

        served = load_bundle(bundle)
        out["fusion"] = served.fusion.to_json() if served.fusion is not None else None
        out["source_sizes"] = source_sizes(bundle, served)
    typer.echo(json.dumps(out))


@bench_app.command("recency")
def recency(
    data: Path = typer.Option(..., "--data", help="A dataset whose likes have an order."),
    config: str = typer.Option(None, "--config", help="Spectral options as a JSON object."),
    share: float = typer.Option(0.2, "--share", min=0.01, max=0.9, help="Latest share held out."),
) -> None:
    """Choose the spectral model's recency weighting and popularity prior on the latest
    share of each user's train+valid likes (protocol A data; test is never read)."""
    from shortlist.tools.bench import recency as bench_recency
    from shortlist.tools.bench.quality import load_split

    if not data.is_dir():
        _fail(f"dataset directory not found: {data}")
    split = load_split(data)
    options = _parse_config(config)
    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    try:
        result = bench_recency.run(split.train_valid(), options, share, progress=say)
    except ValueError as exc:
        _fail(str(exc))
    for row in result["tried"]:
        typer.echo(f"{row['options']}  recall@20 {row['recall@20']}  ndcg@20 {row['ndcg@20']}")
    typer.echo(json.dumps(result))


@bench_app.command("ranker-transfer")
def ranker_transfer(
    data: Path = typer.Option(..., "--data", help="A dataset with a valid split."),
    model: str = typer.Option("spectral", "--model", help="Retrieval model."),
    config: str = typer.Option(None, "--config", help="Model options as a JSON object."),
    test_users: int = typer.Option(8000, "--test-users", help="Test users sampled."),
) -> None:
    """Diagnosis (protocol B): the ranker's lift on valid and on test lists, per feature
    group, and when fit on half of the test users. Fits on test labels: never a result."""
    from rich.console import Console
    from rich.table import Table

    from shortlist.tools.bench import ranker_transfer as transfer
    from shortlist.tools.bench.quality import load_split

    if not data.is_dir():
        _fail(f"dataset directory not found: {data}")
    split = load_split(data)
    options = _parse_config(config)
    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    try:
        result = transfer.run(split, model, options, test_users=test_users, progress=say)
    except ValueError as exc:
        _fail(str(exc))
    table = Table(title=f"{split.name}: ranker lift over retrieval order (NDCG@20)")
    for col in ("features", "fit on", "valid", "valid lift", "test", "test lift", "rounds"):
        table.add_column(col)
    for r in result["rows"]:
        table.add_row(
            r["features"],
            r["fit_on"],
            "" if r["valid_ndcg@20"] is None else " -> ".join(map(str, r["valid_ndcg@20"])),
            "" if r["valid_lift"] is None else f"{r['valid_lift']:+.1%}",
            " -> ".join(map(str, r["test_ndcg@20"])),
            f"{r['test_lift']:+.1%}",
            str(r["rounds"]),
        )
    Console(width=130).print(table)
    typer.echo(json.dumps(result))


@bench_app.command("next-item")
def next_item(
    data: Path = typer.Option(
        ...,
        "--data",
        help="MovieLens-100K folder (u.data: times) or a LightGCN folder (line order).",
    ),
    split: str = typer.Option("test", help="test, or valid: the likes before the test's."),
    pipeline: str = typer.Option("two-stage", help="two-stage (retrieval + ranker) or retrieval."),
    model: str = typer.Option("spectral", help="Retrieval model (registry name)."),
    config: str = typer.Option(None, "--config", help="Model options as a JSON object."),
    replay: int = typer.Option(5, min=1, help="Likes per test user replayed as live feedback."),
    next_items: int = typer.Option(5, "--next", min=1, help="Following likes scored."),
    min_likes: int = typer.Option(20, min=2, help="Likes a test user has at least."),
    max_users: int = typer.Option(0, min=0, help="At most this many test users (0: all)."),
    search: bool = typer.Option(
        False, "--grid", help="Score a grid of short-term settings (choose them on valid)."
    ),
) -> None:
    """Replay test users' latest likes through the real fold-in path, score their next likes
    against the same bundle without the replay (Recall@20 / NDCG@20)."""
    from shortlist.data.loaders import load_lightgcn_dir, load_movielens
    from shortlist.models import registry
    from shortlist.tools.bench import next_item as bench_next
    from shortlist.training.pipeline import TrainConfig, retrieval_bundle, train_bundle

    if pipeline not in ("two-stage", "retrieval"):
        _fail(f"--pipeline must be two-stage or retrieval, got {pipeline!r}")
    if split not in ("test", "valid"):
        _fail(f"--split must be test or valid, got {split!r}")
    if model not in registry.model_names():
        _fail(f"unknown --model {model!r}; choose from {', '.join(registry.model_names())}")
    if (data / "u.data").is_file():
        dataset, interactions = "ml-100k", load_movielens(data)
    elif (data / "train.txt").is_file():
        dataset, interactions = data.name, load_lightgcn_dir(data).train
    else:
        _fail(f"{data} has neither u.data (MovieLens) nor train.txt (LightGCN format)")
    options = _parse_config(config)
    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731

    def train(fit):
        if pipeline == "two-stage":
            return train_bundle(fit, TrainConfig(model=model, model_options=options), say), None
        fitted = registry.build(model, options)
        fitted.fit(fit)
        return retrieval_bundle(fit, fitted), fitted

    result = bench_next.run(
        interactions,
        dataset,
        train,
        two_stage=pipeline == "two-stage",
        split=split,
        replay=replay,
        next_items=next_items,
        min_likes=min_likes,
        max_users=max_users,
        settings=bench_next.grid(pipeline == "two-stage") if search else None,
        progress=say,
    )
    result["model"] = model
    _emit(result, f"next-item after live feedback on {dataset} ({split})")


@bench_app.command("http")
def http_overhead(
    rate: float = typer.Option(100.0, "--rate", help="Arrivals per second (open loop)."),
    duration: float = typer.Option(15.0, "--duration", help="Measured seconds per run."),
    warmup: float = typer.Option(3.0, "--warmup", help="Warm-up seconds per run."),
    rounds: int = typer.Option(3, "--rounds", help="Runs per protocol (alternating order)."),
    connections: int = typer.Option(8, "--connections", help="Connections of the load test."),
    bundle: str = typer.Option("artifacts", "--bundle", help="Bundle root (trained if absent)."),
) -> None:
    """HTTP/JSON against gRPC on one local stack, same run: Recommend latency and the
    gateway's CPU per call of each, and the overhead (HTTP minus gRPC)."""
    from shortlist.tools.bench import http_overhead as bench_http

    if rate <= 0 or duration <= 0 or rounds < 1 or connections < 1:
        _fail("--rate and --duration must be > 0, --rounds and --connections >= 1")
    config = bench_http.HttpBenchConfig(
        rate=rate,
        duration_s=duration,
        warmup_s=warmup,
        rounds=rounds,
        connections=connections,
        bundle=bundle,
    )
    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    _emit(bench_http.run(config, say), "HTTP/JSON overhead over gRPC")


@bench_app.command("torch-dist")
def torch_dist(
    data: Path = typer.Option(
        ..., "--data", help="MovieLens-100K (u.data) or a LightGCN-format directory."
    ),
    models: str = typer.Option(
        "lightgcn,two-tower", "--models", help="Torch models, separated by commas."
    ),
    protocol: str = typer.Option("B", "--protocol", help="A or B, as `shortlist bench quality`."),
    workers: int = typer.Option(2, "--workers", min=1, help="Dask workers (ranks)."),
    config: str = typer.Option(
        None, "--config", help='Options per model as JSON, e.g. \'{"lightgcn": {"epochs": 20}}\'.'
    ),
) -> None:
    """A torch model trained in process and data-parallel (torch.distributed, gloo) on a
    Dask LocalCluster: fit seconds and test NDCG@20 of each; the last line is JSON."""
    from shortlist.evaluation.protocols import normalize_protocol
    from shortlist.tools.bench import torch_dist as bench_torch_dist

    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in names if m not in bench_torch_dist.MODELS]
    if not names or unknown:
        _fail(f"--models: choose from {', '.join(bench_torch_dist.MODELS)}, got {models!r}")
    if not data.is_dir():
        _fail(f"dataset directory not found: {data}")
    try:
        protocol = normalize_protocol(protocol)
    except ValueError as exc:
        _fail(f"--protocol: {exc}")
    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    options = _parse_config(config)
    result = bench_torch_dist.run(data, names, protocol, workers, options, say)
    _emit(result, f"torch models in process and on {workers} gloo ranks ({result['dataset']})")


@bench_app.command("scale")
def scale(
    scales: str = typer.Option("1,10,30", "--scales", help="Multiples of Gowalla's size."),
    shape: Path = typer.Option(
        Path("../shared/data/gowalla"),
        "--shape",
        help="A LightGCN directory whose likes-per-user and per-item counts the generated "
        "data copies (a lognormal stand-in with Gowalla's sizes when absent).",
    ),
    data: Path = typer.Option(
        None, "--data", help="Train on this LightGCN directory instead (one run, x = 1)."
    ),
    time_cap: float = typer.Option(3600.0, "--time-cap", help="Seconds per training run."),
    mem_cap: float = typer.Option(
        20.0, "--mem-cap-gib", help="GiB of RSS (the run's whole process tree) per run."
    ),
    engines: str = typer.Option("inprocess,dask", "--engines"),
    test_users: int = typer.Option(
        1000,
        "--test-users",
        help="Served NDCG@20 on a seeded sample of this many test users (the same for both "
        "engines, paired user by user); 0 = all test users.",
    ),
    per_user_dir: Path = typer.Option(
        None, "--per-user-dir", help="Keep each run's per-user NDCG@20 (.npz) in this directory."
    ),
) -> None:
    """Training wall time and peak memory, in process and on a 2-worker Dask LocalCluster,
    at several scales; the last line is the JSON report (null where a run did not finish)."""
    from shortlist.tools.bench.scale import bench_scale

    try:
        xs = [float(v) for v in scales.split(",") if v.strip()]
    except ValueError:
        _fail(f"--scales must be numbers separated by commas, got {scales!r}")
    chosen = tuple(e.strip() for e in engines.split(",") if e.strip())
    if not xs or any(x <= 0 for x in xs):
        _fail("--scales must be positive numbers")
    if not chosen or not set(chosen) <= {"inprocess", "dask"}:
        _fail(f"--engines must be inprocess and/or dask, got {engines!r}")
    if data is not None and not (data / "train.txt").exists():
        _fail(f"--data {data} has no train.txt")
    if test_users < 0:
        _fail("--test-users must be 0 (all) or a positive count")
    if data is not None:
        xs = [1.0]
    report = bench_scale(
        xs, shape if shape.is_dir() else None, data, time_cap, mem_cap, chosen,
        say=lambda m: typer.echo(m, err=True), test_users=test_users, keep=per_user_dir,
    )  # fmt: skip
    typer.echo(json.dumps(report))
