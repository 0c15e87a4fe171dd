"""`shortlist bench quality`: train a retrieval model under protocol A or B, print metrics.

Prints a rich table and, as the last stdout line, one JSON object. With `report_dir`
it also merges the run into a markdown report (and a PNG of the validation curve when
matplotlib is installed): see `shortlist/bench/report.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from shortlist.data.loaders import load_lightgcn_dir
from shortlist.data.splits import check_no_leakage
from shortlist.evaluation.protocols import ProtocolResult, run_protocol
from shortlist.models import registry

# The default model per dataset and protocol (the measured best; see the closing notes).
DEFAULT_MODEL = "spectral"
PIPELINES = ("retrieval",)


def run_quality(
    data_dir: str | Path,
    protocol: str,
    model: str = DEFAULT_MODEL,
    config: dict[str, Any] | None = None,
    threads: int = 2,
) -> ProtocolResult:
    torch.set_num_threads(threads)
    split = load_lightgcn_dir(data_dir)
    check_no_leakage(split)
    options = registry.preset(model, split.name)
    options.update(config or {})
    return run_protocol(split, protocol, model, options)


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
    data_dir: str,
    protocol: str,
    model: str = DEFAULT_MODEL,
    config: dict[str, Any] | None = None,
    report_dir: str | None = None,
    pipeline: str = "retrieval",
) -> dict[str, Any]:
    """Run the bench: table to stdout, then the JSON summary as the last stdout line."""
    console = Console(stderr=False)
    if not Path(data_dir).is_dir():
        raise FileNotFoundError(f"no dataset at {data_dir}")
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose from {', '.join(PIPELINES)}")
    result = run_quality(data_dir, protocol, model, config)
    render(result, console)
    summary = {**result.summary(), "pipeline": pipeline}
    if report_dir:
        from shortlist.bench.report import write_report

        path = write_report([result], Path(report_dir), pipeline=pipeline)
        console.print(f"report: {path}")
    console.file.flush()
    print(json.dumps(summary), flush=True)
    return summary
