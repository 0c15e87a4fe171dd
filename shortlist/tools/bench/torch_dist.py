"""`shortlist bench torch-dist`: a torch model trained in process and data-parallel on Dask
workers (torch.distributed, gloo; `shortlist.compute.ranks`), same data, options and seed:
wall time of the fit and the test metrics of each.

Each model runs under the quality bench's protocol (B by default: fit on train, early stop
on valid NDCG@20, report test) with its default options, in process first, then on a
`distributed.LocalCluster` of `workers` single-threaded worker processes started before
the clock (its start is reported apart); each model runs in process, then on the ranks. The
in-process fit gets as many torch threads as there are workers, so both use the same cores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from shortlist.compute import InProcess, engine_for, using
from shortlist.evaluation.protocols import run_protocol
from shortlist.tools.bench.quality import load_split

MODELS = ("lightgcn", "two-tower", "mf-bpr", "sasrec", "lightgcn-neg")
THREADED = {"lightgcn", "two-tower", "sasrec", "lightgcn-neg"}  # models with a threads option
QUIET = {"lightgcn", "two-tower", "lightgcn-neg"}  # models with a progress option


def _run(split, protocol: str, model: str, options: dict[str, Any]) -> dict[str, Any]:
    result = run_protocol(split, protocol, model, options, ks=(20,))
    fitted = result.fitted
    return {
        "train_seconds": round(result.train_seconds, 2),
        "ndcg@20": round(result.metrics["ndcg@20"], 6),
        "recall@20": round(result.metrics["recall@20"], 6),
        "valid_ndcg@20": round(result.valid_metrics.get("ndcg@20", 0.0), 6),
        "epochs": len(result.history),
        "best_epoch": getattr(fitted, "best_epoch", None),
    }


def run(
    data_dir: str | Path,
    models: Sequence[str],
    protocol: str = "B",
    workers: int = 2,
    config: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The report: one run per (model, engine) and a summary per model."""
    say = progress or (lambda _msg: None)
    split = load_split(data_dir)
    config = config or {}
    load_before = [round(v, 1) for v in os.getloadavg()]
    runs: list[dict[str, Any]] = []
    torch.set_num_threads(workers)
    started = time.perf_counter()
    with engine_for("dask", workers=workers) as engine:
        start_seconds = time.perf_counter() - started
        for model in models:  # each model in process, then on the ranks, one after the other
            options = dict(config.get(model, {}))
            if model in QUIET:
                options.setdefault("progress", False)
            local = dict(options)
            if model in THREADED:
                local.setdefault("threads", workers)  # the ranks take one thread each
            threads = local.get("threads", "default")
            say(f"{model}: in process ({threads} torch threads)")
            with using(InProcess()):
                runs.append(
                    {"model": model, "engine": "inprocess", **_run(split, protocol, model, local)}
                )
            say(f"{model}: {workers} ranks (gloo), one per worker of a LocalCluster")
            with using(engine):
                runs.append(
                    {"model": model, "engine": "dask", **_run(split, protocol, model, options)}
                )
    summary: dict[str, Any] = {}
    for model in models:
        local = next(r for r in runs if r["model"] == model and r["engine"] == "inprocess")
        remote = next(r for r in runs if r["model"] == model and r["engine"] == "dask")
        summary[model] = {
            "inprocess_seconds": local["train_seconds"],
            "dask_seconds": remote["train_seconds"],
            "dask_over_inprocess": round(remote["train_seconds"] / local["train_seconds"], 3),
            "ndcg@20_inprocess": local["ndcg@20"],
            "ndcg@20_dask": remote["ndcg@20"],
            "ndcg@20_relative_gap": round(remote["ndcg@20"] / local["ndcg@20"] - 1.0, 4),
        }
    return {
        "dataset": split.name,
        "protocol": protocol,
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": [round(v, 1) for v in os.getloadavg()],
        "dask_start_seconds": round(start_seconds, 2),
        "runs": runs,
        **summary,
    }
