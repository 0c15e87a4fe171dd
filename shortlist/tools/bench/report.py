"""The quality report: a markdown table of metrics per dataset and validation-curve plots.

Each `shortlist bench quality --report DIR` run adds (or replaces) its record in
`DIR/quality.json`, keyed by dataset, protocol, model and pipeline, and rewrites
`DIR/quality.md` from all records, so runs on several datasets share one report. The
validation curve (the model's history) is drawn into a PNG when matplotlib is importable;
otherwise the report says that no plot was drawn.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shortlist.evaluation.protocols import ProtocolResult

RECORDS = "quality.json"
REPORT = "quality.md"
TABLE_METRICS = ("recall@20", "ndcg@20", "precision@20", "hitrate@20", "coverage@20", "longtail@20")

# Published figures the report puts beside ours (../shared/data/README.md).
REFERENCES: dict[tuple[str, str], list[tuple[str, float, float]]] = {
    ("gowalla", "A"): [
        ("MF-BPR", 0.1291, 0.1109),
        ("LightGCN", 0.1830, 0.1554),
        ("GF-CF", 0.1849, 0.1518),
        ("BSPM-EM", 0.1920, 0.1597),
    ],
    ("gowalla", "B"): [("LightGCN", 0.1683, 0.1426), ("LightGCN++", 0.1739, 0.1469)],
    ("lastfm", "B"): [("LightGCN", 0.2523, 0.2427), ("LightGCN++", 0.2715, 0.2624)],
}


def record(result: ProtocolResult, pipeline: str = "retrieval") -> dict[str, Any]:
    """What the report keeps of one run: the summary line, its config and history."""
    return {
        "summary": {**result.summary(), "pipeline": pipeline},
        "config": _jsonable(result.config),
        "history": [{k: float(v) for k, v in row.items()} for row in result.history],
    }


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [_jsonable(v) for v in value]
        return repr(value)


def _key(rec: dict[str, Any]) -> tuple[str, ...]:
    s = rec["summary"]
    return (s["dataset"], s["protocol"], s["model"], s.get("pipeline", "retrieval"))


def _slug(parts: Iterable[str]) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)).strip("-")


def plot_history(history: list[dict[str, float]], path: Path, title: str) -> str | None:
    """Draw the validation curve to `path` (PNG); returns why not when nothing was drawn."""
    metrics = [m for m in ("ndcg@20", "recall@20") if any(m in row for row in history)]
    if not metrics:
        return "no validation curve (the model has no epochs or was not validated)"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed"
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for m in metrics:
        rows = [row for row in history if m in row]
        ax.plot([r["epoch"] for r in rows], [r[m] for r in rows], marker="o", label=f"valid {m}")
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return None


def load_records(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / RECORDS
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return []
    return data if isinstance(data, list) else []


def write_report(
    results: list[ProtocolResult], out_dir: str | Path, pipeline: str = "retrieval"
) -> Path:
    """Merge `results` into the report in `out_dir`; returns the markdown file's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = {_key(r): r for r in load_records(out_dir)}
    for result in results:
        rec = record(result, pipeline)
        records[_key(rec)] = rec
    ordered = sorted(records.values(), key=_key)
    (out_dir / RECORDS).write_text(json.dumps(ordered, indent=1) + "\n")
    path = out_dir / REPORT
    path.write_text(render_markdown(ordered, out_dir))
    return path


def render_markdown(records: list[dict[str, Any]], out_dir: Path) -> str:
    lines = [
        "# Shortlist retrieval quality",
        "",
        "All items ranked, training items excluded (LightGCN-paper definitions). Protocol A:",
        "train on train+valid, report test. Protocol B: train on train, select on valid NDCG@20,",
        "report test. Written by `shortlist bench quality --report DIR`.",
        "",
        "| dataset | protocol | model | pipeline | "
        + " | ".join(TABLE_METRICS)
        + " | users | train s | eval s | data |",
        "|---|---|---|---|" + "---:|" * (len(TABLE_METRICS) + 3) + "---|",
    ]
    for rec in records:
        s = rec["summary"]
        cells = [s["dataset"], s["protocol"], s["model"], s.get("pipeline", "retrieval")]
        cells += [f"{s[m]:.4f}" if m in s else "" for m in TABLE_METRICS]
        cells += [
            f"{s.get('users', 0):,}",
            f"{s.get('train_seconds', 0):.1f}",
            f"{s.get('eval_seconds', 0):.1f}",
            f"`{s.get('fingerprint', '')}`",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")

    seen_refs = sorted({(r["summary"]["dataset"], r["summary"]["protocol"]) for r in records})
    refs = [(d, p, ref) for d, p in seen_refs for ref in REFERENCES.get((d, p), [])]
    if refs:
        lines += ["", "Published figures (recall@20 / ndcg@20):", ""]
        lines += [f"- {d} protocol {p}, {name}: {r:.4f} / {n:.4f}" for d, p, (name, r, n) in refs]

    lines += ["", "## Validation curves", ""]
    for rec in records:
        key = _key(rec)
        title = " · ".join(key)
        lines.append(f"### {title}")
        lines.append("")
        png = f"curve_{_slug(key)}.png"
        why_not = plot_history(rec["history"], out_dir / png, title)
        if why_not is None:
            lines.append(f"![validation curve]({png})")
        else:
            (out_dir / png).unlink(missing_ok=True)
            lines.append(f"_{why_not}_")
        best = _best_row(rec["history"])
        if best:
            lines.append("")
            lines.append(
                f"best valid ndcg@20 {best['ndcg@20']:.4f} at epoch {int(best['epoch'])} "
                f"of {int(rec['history'][-1]['epoch'])}"
            )
        lines.append("")
        lines.append(f"config: `{json.dumps(rec['config'], sort_keys=True)}`")
        lines.append("")
    return "\n".join(lines)


def _best_row(history: list[dict[str, float]]) -> dict[str, float] | None:
    rows = [row for row in history if "ndcg@20" in row]
    return max(rows, key=lambda row: row["ndcg@20"]) if rows else None
