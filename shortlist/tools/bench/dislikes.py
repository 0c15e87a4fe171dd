"""`shortlist bench dislikes`: do dislikes help, and how should a model use them?

MovieLens-100K ratings become likes (>= 4) and dislikes (<= 2). Likes are split per user at
random into train / valid / test (protocol B: train on train, choose on valid NDCG@20,
report test); dislikes stay known to training. The arms, all on the same split:

* `lightgcn`: LightGCN on the likes alone;
* `lightgcn-dislikes`: LightGCN with dislikes as extra negatives of its loss (its default);
* `lightgcn-neg`: the same plus the negative graph: dislikes propagated over their own
  graph and subtracted at scoring, beta chosen on valid (`shortlist.models.lightgcn_neg`);
* `spectral`: the model `shortlist train` serves by default, its default options.

The torch arms run over several seeds; spectral is deterministic and runs once. Test
rankings exclude the training likes only. `disliked@20` is the share of top-20 slots that
hold an item the user disliked, and `disliked_items@20` their number per user (over users
with dislikes): what a user would see if serving did not filter them; lower is better.
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

METRICS = ("recall@20", "ndcg@20", "precision@20", "disliked@20", "disliked_items@20")

# arm -> (registry model, options, seeded)
ARMS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "lightgcn": ("lightgcn", {"use_dislikes": False}, True),
    "lightgcn-dislikes": ("lightgcn", {"use_dislikes": True}, True),
    "lightgcn-neg": ("lightgcn-neg", {"use_dislikes": True}, True),
    "spectral": ("spectral", {}, False),
}


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
    arms: Sequence[str] = tuple(ARMS),
) -> dict[str, Any]:
    """`options` apply to the LightGCN arms."""
    say = progress or (lambda _m: None)
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}; choose from {', '.join(ARMS)}")
    data = load_movielens(data_dir, RatingThresholds(like=4, dislike=2))
    split = random_holdout(data, test_fraction=0.2, valid_fraction=0.1, seed=0, name="ml-100k")
    check_no_leakage(split)
    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    for arm in track(arms, "dislikes arms"):
        model_name, arm_options, seeded = ARMS[arm]
        for seed in seeds if seeded else seeds[:1]:
            config = {**arm_options, "seed": seed}
            if model_name.startswith("lightgcn"):
                config = {"progress": False, **(options or {}), **config}
            result = run_protocol(split, "B", model_name, config)
            model = result.fitted
            row = {k: result.metrics[k] for k in METRICS[:3]}
            share = disliked_share(
                model.user_factors, model.item_factors, split.train.positives, data.negatives
            )
            row["disliked@20"] = share
            row["disliked_items@20"] = share * 20
            row["train_seconds"] = result.train_seconds
            if hasattr(model, "beta"):
                row["beta"] = model.beta
            runs[arm].append(row)
            say(f"{arm} seed {seed}: " + " ".join(f"{k} {v:.4f}" for k, v in row.items()))
    out: dict[str, Any] = {
        "dataset": "ml-100k",
        "protocol": "B",
        "test_excludes": "train",
        "seeds": list(seeds),
        "likes": int(data.positives.nnz),
        "dislikes": int(data.negatives.nnz),
    }
    for arm, rows in runs.items():
        for metric in (*METRICS, "train_seconds", "beta"):
            if metric not in rows[0]:
                continue
            values = np.array([r[metric] for r in rows])
            out[f"{arm}_{metric}"] = round(float(values.mean()), 4)
            if len(values) > 1:
                out[f"{arm}_{metric}_std"] = round(float(values.std()), 4)
    if {"lightgcn-neg", "lightgcn-dislikes"} <= set(runs):
        for metric in METRICS[:3]:
            base = out[f"lightgcn-dislikes_{metric}"]
            out[f"neg_graph_lift_{metric}"] = round(out[f"lightgcn-neg_{metric}"] / base - 1, 4)
    return out
