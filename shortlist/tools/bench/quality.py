"""`shortlist bench quality`: train a retrieval model under protocol A or B, print metrics.

Prints a rich table and, as the last stdout line, one JSON object. With `report_dir`
it also merges the run into a markdown report (and a PNG of the validation curve when
matplotlib is installed): see `shortlist/bench/report.py`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from shortlist.data.events import load_events
from shortlist.data.loaders import SplitData, load_lightgcn_dir, load_movielens
from shortlist.data.splits import check_no_leakage, temporal_leave_last_out, time_slice_holdout
from shortlist.evaluation.protocols import ProtocolResult, run_protocol, trains_on_train_only
from shortlist.models.progress import track
from shortlist.tools.bench import peers

# The default model per dataset and protocol (the measured best; docs/benchmarks.md).
DEFAULT_MODEL = "spectral"
PIPELINES = ("retrieval", "two-stage")
# MovieLens directories are split per user in time: the last likes go to valid and test.
MOVIELENS_HOLDOUT = 5
# Seconds a peer's grid may take when no --tune-budget is given (LastFM: the whole ALS grid).
PEER_BUDGET = 300.0


def load_split(data_dir: str | Path | Sequence[Path]) -> SplitData:
    """A LightGCN-format directory as given, MovieLens-100K split per user in time, or
    event logs (a list of paths) split in time: the latest 10% of likes test, the 10%
    before valid (`time_slice_holdout`)."""
    if not isinstance(data_dir, str | Path):
        split = time_slice_holdout(load_events(list(data_dir)), name="events")
        check_no_leakage(split)
        return split
    path = Path(data_dir)
    if (path / "u.data").is_file():
        data = load_movielens(path)
        split = temporal_leave_last_out(
            data, n_test=MOVIELENS_HOLDOUT, n_valid=MOVIELENS_HOLDOUT, min_train=5, name=path.name
        )
    else:
        split = load_lightgcn_dir(path)
    check_no_leakage(split)
    return split


def run_quality(
    data_dir: str | Path | Sequence[Path],
    protocol: str,
    model: str = DEFAULT_MODEL,
    config: dict[str, Any] | None = None,
    threads: int = 2,
    tune_budget: float | None = None,
) -> tuple[ProtocolResult, dict[str, Any] | None]:
    """The protocol's result and, when tuned, the tuning report. A peer (`implicit`'s ALS or
    BPR) is always tuned on valid, within `tune_budget` or `PEER_BUDGET` seconds."""
    torch.set_num_threads(threads)
    split = load_split(data_dir)
    if model in peers.PEERS:
        return run_peer(split, protocol, model, config, tune_budget or PEER_BUDGET)
    options, tuning = bench_options(split, protocol, model, config, tune_budget)
    return run_protocol(split, protocol, model, options), tuning


def run_peer(
    split: SplitData,
    protocol: str,
    model: str,
    config: dict[str, Any] | None,
    budget: float,
    progress: Callable[[str], None] | None = None,
) -> tuple[ProtocolResult, dict[str, Any]]:
    """A peer's options chosen on valid (train fit, train excluded), then the protocol run
    with them: the same split, exclusion rule and metric code as our models."""
    if split.valid is None:
        raise ValueError(f"the {model} peer chooses its options on valid; the split has none")
    options, tuning = peers.tune(model, split.train, split.valid, budget, config, progress)
    return run_protocol(split, protocol, model, options, build=peers.build), tuning


def bench_options(
    split: SplitData,
    protocol: str,
    model: str,
    config: dict[str, Any] | None,
    tune_budget: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The options `shortlist.training.tuning` chooses from the training part alone within
    `tune_budget` seconds (None: `shortlist train`'s default budget, scaled with the data
    as `tuning.scaled_budget` states): under B on valid, under
    A on a held-out slice of train+valid, as `shortlist train` does. The same search for
    every dataset: nothing here reads the dataset's name. `config` keys stay fixed; a
    budget of 0 gives the model's defaults."""
    from shortlist.training.tuning import DEFAULT_BUDGET, search_space, tune

    config = dict(config or {})
    scale = tune_budget is None  # the default budget scales with the data, as in train
    if tune_budget is None:
        tune_budget = DEFAULT_BUDGET
    if tune_budget <= 0:
        return config, None

    if trains_on_train_only(protocol):
        train, valid = split.train, split.valid
    else:
        train, valid = split.train_valid(), None
    space = [k for k in search_space(model, train) if k.name not in config]
    if not space:  # nothing to search (the model chooses its own options, e.g. ials)
        return config, None
    result = tune(
        train, model, tune_budget, config, valid=valid, space=space, progress=progress, scale=scale
    )
    return result.options, result.report()


def render(result: ProtocolResult, console: Console) -> None:
    s = result.summary()
    table = Table(title=f"{s['dataset']} · protocol {s['protocol']} · {s['model']}")
    table.add_column("metric")
    for k in (10, 20, 50):
        table.add_column(f"@{k}", justify="right")
    for metric in ("recall", "ndcg", "precision", "hitrate", "coverage", "longtail"):
        table.add_row(
            metric, *(f"{s.get(f'{metric}@{k}', float('nan')):.4f}" for k in (10, 20, 50))
        )
    console.print(table)
    line = (
        f"users {s['users']:,} · train {s['train_seconds']:.1f}s · eval {s['eval_seconds']:.1f}s"
        f" · data {s['fingerprint']}"
    )
    if "valid_ndcg@20" in s:
        line += f" · valid ndcg@20 {s['valid_ndcg@20']:.4f}"
    console.print(line)


def main(
    data_dir: str | Sequence[Path],
    protocol: str,
    model: str = DEFAULT_MODEL,
    config: dict[str, Any] | None = None,
    report_dir: str | None = None,
    pipeline: str = "retrieval",
    ranker_seeds: int = 1,
    ranker_labels: str = "served",
    ranker_lists: int | None = None,
    tune_budget: float | None = None,
) -> dict[str, Any]:
    """Run the bench: table to stdout, then the JSON summary as the last stdout line."""
    console = Console(stderr=False)
    if isinstance(data_dir, str) and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"no dataset at {data_dir}")
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose from {', '.join(PIPELINES)}")
    if pipeline == "two-stage" and model in peers.PEERS:
        raise ValueError(f"the {model} peer is a retrieval-only baseline (--pipeline retrieval)")
    if pipeline == "two-stage":
        return two_stage_main(
            data_dir,
            protocol,
            model,
            config,
            console,
            ranker_seeds,
            ranker_labels,
            ranker_lists,
            tune_budget,
        )
    started = time.perf_counter()
    result, tuning = run_quality(data_dir, protocol, model, config, tune_budget=tune_budget)
    render(result, console)
    summary = {**result.summary(), "pipeline": pipeline}
    if tuning is not None:
        budget = tuning.get("budget_s", tune_budget)
        console.print(
            f"tuned in {tuning['seconds']:.1f}s of {budget:g}s ({len(tuning['trials'])} "
            f"trials, {tuning['slice']}): {tuning['chosen']}"
        )
        summary["tuning"] = tuning
    summary["options"] = result.config
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    if report_dir:
        from shortlist.tools.bench.report import write_report

        path = write_report([result], Path(report_dir), pipeline=pipeline)
        console.print(f"report: {path}")
    console.file.flush()
    print(json.dumps(summary), flush=True)
    return summary


def two_stage_main(
    data_dir: str | Sequence[Path],
    protocol: str,
    model: str,
    config: dict[str, Any] | None,
    console: Console,
    ranker_seeds: int = 1,
    ranker_labels: str = "served",
    ranker_lists: int | None = None,
    tune_budget: float | None = None,
) -> dict[str, Any]:
    """Retrieval-only and two-stage figures side by side on the same users. With
    `ranker_seeds` > 1 the pipeline runs again with seeds 1.. (which lists the ranker is fit
    on and how they fall into folds) and the lift of each seed is printed; the figures and
    the summary are seed 0's, with `ndcg@20_lift_by_seed` added."""
    from shortlist.evaluation.two_stage import KS, run_two_stage
    from shortlist.training.pipeline import TrainConfig

    torch.set_num_threads(2)
    split = load_split(data_dir)
    say = lambda msg: console.print(f"[dim]{msg}[/]")  # noqa: E731
    options, tuning = bench_options(split, protocol, model, config, tune_budget, say)
    lists = ranker_lists or TrainConfig().ranker_max_lists
    cfg = TrainConfig(model=model, ranker_max_lists=lists)
    result = run_two_stage(
        split,
        protocol,
        model,
        options,
        cfg=cfg,
        progress=say,
        ranker_labels=ranker_labels,
    )
    table = Table(title=f"{split.name} · protocol {result.protocol} · {model} + ranker")
    table.add_column("metric")
    for k in KS:
        table.add_column(f"retrieval @{k}", justify="right")
        table.add_column(f"two-stage @{k}", justify="right")
    for metric in ("recall", "ndcg", "precision", "hitrate"):
        cells = []
        for k in KS:
            cells += [f"{result.retrieval[f'{metric}@{k}']:.4f}"]
            cells += [f"{result.two_stage[f'{metric}@{k}']:.4f}"]
        table.add_row(metric, *cells)
    console.print(table)
    if result.ablation:
        console.print(ablation_table(result.summary()["ablation"], result.fusion))
    top = ", ".join(f"{n} {v:.3f}" for n, v in list(result.importance.items())[:8])
    console.print(f"feature importance (gain share): {top}")
    console.print(
        f"ranker on its {ranker_labels} lists, out of fold: ndcg@20 "
        f"{result.ranker_valid['retrieval_ndcg@20']:.4f} (retrieval order) -> "
        f"{result.ranker_valid['ranker_ndcg@20']:.4f}; with the retrieval order at weight "
        f"{result.ranker_valid['order_weight']:g} (chosen on these lists) "
        f"{result.ranker_valid['ranker_with_order_ndcg@20']:.4f}"
    )
    alone = result.rankers_alone
    if alone:
        console.print(
            "two-stage is the blend of LambdaRank and DeepFM; alone, test ndcg@20 "
            f"LambdaRank {alone['lambdarank_ndcg@20']:.4f}, DeepFM {alone['deepfm_ndcg@20']:.4f}"
        )
    summary = result.summary()
    summary["importance"] = result.importance
    summary["ranker_labels"] = ranker_labels
    summary["ranker_max_lists"] = cfg.ranker_max_lists
    if tuning is not None:
        summary["tuning"] = tuning
    if ranker_seeds > 1:
        lifts = [summary["ndcg@20_lift"]]
        for seed in track(range(1, ranker_seeds), "ranker seeds"):
            cfg = TrainConfig(model=model, seed=seed, ranker_max_lists=lists)
            again = run_two_stage(
                split, protocol, model, options, cfg=cfg, ranker_labels=ranker_labels
            ).summary()
            lifts.append(again["ndcg@20_lift"])
            console.print(f"seed {seed}: ndcg@20 {again['ndcg@20']:.4f} lift {lifts[-1]:+.1%}")
        console.print(
            f"ndcg@20 lift over {ranker_seeds} seeds: {min(lifts):+.1%} to {max(lifts):+.1%}, "
            f"mean {sum(lifts) / len(lifts):+.1%}"
        )
        summary["ndcg@20_lift_by_seed"] = lifts
    console.file.flush()
    print(json.dumps(summary), flush=True)
    return summary


def ablation_table(ablation: dict[str, dict[str, float]], fusion: dict[str, Any]) -> Table:
    """Test Recall/NDCG@20 of each candidate source alone, their fusion (with the weights
    chosen on held-out likes) and the served two-stage order."""
    weights = (fusion.get("chosen") or {}).get("weights", {})
    table = Table(title="ablation: each source alone, the fusion, the ranker (test @20)")
    for column in ("source", "fusion weight", "recall@20", "ndcg@20"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for name, m in ablation.items():
        weight = f"{weights[name]:g}" if name in weights else ""
        table.add_row(name, weight, f"{m['recall@20']:.4f}", f"{m['ndcg@20']:.4f}")
    return table
