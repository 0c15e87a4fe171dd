"""The LightGBM LambdaRank model that rescores the retrieval shortlist."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import lleaves
import numpy as np

from shortlist import compute
from shortlist.models.progress import Advance, bar


@dataclass
class RankerConfig:
    num_leaves: int = 31
    learning_rate: float = 0.05
    rounds: int = 300
    # Patience over the folds' mean NDCG@20: long, as the curve can dip early and peak later
    # (docs/decisions/0013-cross-validated-ranker-fit.md).
    early_stopping: int = 100
    min_data_in_leaf: int = 50
    folds: int = 4
    seed: int = 0


@dataclass
class RankerFit:
    booster: lgb.Booster  # fit on every list with `rounds` rounds
    rounds: int
    held_out_scores: np.ndarray  # each row scored by the fold model that did not see its list


def _params(cfg: RankerConfig) -> dict:
    return {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [20],
        "num_leaves": cfg.num_leaves,
        "learning_rate": cfg.learning_rate,
        "min_data_in_leaf": cfg.min_data_in_leaf,
        "seed": cfg.seed,
        "deterministic": True,
        "num_threads": 2,
        "verbosity": -1,
    }


def _rounds(advance: Advance) -> Callable[[lgb.callback.CallbackEnv], None]:
    """A LightGBM callback that advances a progress bar by one per boosting round."""

    def callback(_env: lgb.callback.CallbackEnv) -> None:
        advance()

    return callback


def list_folds(groups: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, held-out rows) per fold, whole lists to a fold: list g goes to fold
    g mod n_folds (the caller has shuffled the lists)."""
    fold_of_row = np.repeat(np.arange(len(groups)) % n_folds, groups)
    return [
        (np.flatnonzero(fold_of_row != f), np.flatnonzero(fold_of_row == f)) for f in range(n_folds)
    ]


def train_ranker(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    feature_names: list[str],
    config: RankerConfig | None = None,
) -> RankerFit:
    """LambdaRank on (features, labels, list sizes), cross-validated: the number of rounds
    is where the folds' mean held-out NDCG@20 peaks, then one model is fit on every list
    with that many rounds. Early-stopped on a single held-out quarter instead, the round
    count followed that quarter's noise and the lift moved with the seed
    (docs/decisions/0013-cross-validated-ranker-fit.md)."""
    cfg = config or RankerConfig()
    x, y, groups = data
    if len(groups) < 2:
        raise ValueError(f"cross-validating the ranker needs at least 2 lists, got {len(groups)}")
    params = _params(cfg)
    folds = list_folds(groups, min(cfg.folds, len(groups)))
    # one Dataset, binned once, for the folds and the final fit
    dataset = lgb.Dataset(x, y, group=groups, feature_name=feature_names, free_raw_data=False)
    with bar("lambdarank cv", cfg.rounds) as advance:
        result = lgb.cv(
            params,
            dataset,
            num_boost_round=cfg.rounds,
            folds=folds,
            callbacks=[_rounds(advance), lgb.early_stopping(cfg.early_stopping, verbose=False)],
            return_cvbooster=True,
        )
    cv = result["cvbooster"]
    rounds = int(cv.best_iteration) if cv.best_iteration > 0 else cfg.rounds
    held_out = np.empty(len(y), np.float32)
    for booster, (_, rows) in zip(cv.boosters, folds):
        held_out[rows] = booster.predict(x[rows], num_iteration=rounds, num_threads=1)
    # the final fit on the current engine (LightGBM here, DaskLGBMRanker on Dask workers)
    with bar("lambdarank fit", rounds) as advance:
        final = compute.current().fit_lambdarank(
            params, x, y, groups, rounds, feature_names, callbacks=[_rounds(advance)]
        )
    return RankerFit(final, rounds, held_out)


def mean_list_ndcg(scores, labels, groups, k: int = 20) -> float:
    """Mean NDCG@k of the lists ordered by `scores` (binary labels within each list)."""
    out, lo = [], 0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for g in groups:
        s, y = scores[lo : lo + g], labels[lo : lo + g]
        lo += g
        ranked = y[np.argsort(-s, kind="stable")][:k]
        ideal = discounts[: min(k, int(y.sum()))].sum()
        out.append(float((ranked * discounts[: len(ranked)]).sum() / ideal))
    return float(np.mean(out))


def score(booster: lgb.Booster, features: np.ndarray) -> np.ndarray:
    return booster.predict(features, num_threads=1).astype(np.float32)


def compiled_scorer(booster: lgb.Booster) -> Callable[[np.ndarray], np.ndarray]:
    """`score` with the booster compiled to native code (lleaves, through LLVM), for serving:
    several times faster than LightGBM on a shortlist, scores within 1e-15 of LightGBM's,
    after a one-off compile (docs/decisions/0006-ranking-service-speed.md)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ranker.txt"
        booster.save_model(str(path))
        model = lleaves.Model(model_file=str(path))
        model.compile()
    return lambda features: model.predict(features, n_jobs=1).astype(np.float32)
