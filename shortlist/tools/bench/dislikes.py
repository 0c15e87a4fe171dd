"""`shortlist bench dislikes`: does LightGCN's negative graph of explicit dislikes help?

MovieLens-100K ratings become likes (>= 4) and dislikes (<= 2). Likes are split per user at
random into train / valid / test (protocol B: train on train, pick the epoch on valid NDCG@20,
report test); dislikes stay known to training. The same LightGCN is trained with and without
the dislike graph over several seeds, and both are evaluated on the same test likes with the
training likes excluded. `disliked@20` is the share of top-20 slots that hold an item the
user disliked (what a user would see if serving did not filter them): lower is better.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from shortlist.data.loaders import RatingThresholds, load_movielens
from shortlist.data.splits import check_no_leakage, random_holdout
from shortlist.evaluation.protocols import run_protocol
from shortlist.models.progress import track
from shortlist.models.topk import top_k

METRICS = ("recall@20", "ndcg@20", "precision@20", "disliked@20")


def disliked_share(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    train: sp.csr_matrix,
    dislikes: sp.csr_matrix,
) -> float:
    """Share of top-20 slots (training likes excluded) taken by the user's disliked items."""
    users = np.flatnonzero(np.diff(dislikes.tocsr().indptr) > 0)
    if len(users) == 0:
        return 0.0
    top = top_k(user_factors, item_factors, users, 20, exclude=train)
    bad = dislikes.tocsr()[users]
    rows = np.repeat(np.arange(len(users)), 20)
    shown = top.ravel()
    return float(np.asarray(bad[rows, np.maximum(shown, 0)]).ravel()[shown >= 0].mean())


def run(
    data_dir: str | Path,
    seeds: Sequence[int] = (0, 1, 2),
    options: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    data = load_movielens(data_dir, RatingThresholds(like=4, dislike=2))
    split = random_holdout(data, test_fraction=0.2, valid_fraction=0.1, seed=0, name="ml-100k")
    check_no_leakage(split)
    base = {"progress": False, **(options or {})}
    runs: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    for seed in track(seeds, "dislikes seeds"):
        for arm, use in (("without", False), ("with", True)):
            result = run_protocol(
                split, "B", "lightgcn", {**base, "seed": seed, "use_dislikes": use}
            )
            model = result.fitted
            row = {k: result.metrics[k] for k in METRICS[:3]}
            row["disliked@20"] = disliked_share(
                model.user_factors, model.item_factors, split.train.positives, data.negatives
            )
            row["train_seconds"] = result.train_seconds
            runs[arm].append(row)
            say(
                f"seed {seed} {arm:7s} dislikes: "
                + " ".join(f"{k} {v:.4f}" for k, v in row.items())
            )
    out: dict[str, Any] = {
        "dataset": "ml-100k",
        "protocol": "B",
        "model": "lightgcn",
        "seeds": list(seeds),
        "likes": int(data.positives.nnz),
        "dislikes": int(data.negatives.nnz),
    }
    for arm, rows in runs.items():
        for metric in (*METRICS, "train_seconds"):
            values = np.array([r[metric] for r in rows])
            out[f"{arm}_{metric}"] = round(float(values.mean()), 4)
            out[f"{arm}_{metric}_std"] = round(float(values.std()), 4)
    for metric in METRICS[:3]:
        out[f"lift_{metric}"] = round(out[f"with_{metric}"] / out[f"without_{metric}"] - 1, 4)
    return out
