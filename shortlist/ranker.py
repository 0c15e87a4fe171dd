"""The LightGBM LambdaRank model that rescores the retrieval shortlist."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import lleaves
import numpy as np


@dataclass
class RankerConfig:
    num_leaves: int = 31
    learning_rate: float = 0.05
    rounds: int = 300
    early_stopping: int = 30
    min_data_in_leaf: int = 50
    seed: int = 0


def train_ranker(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray, np.ndarray],
    feature_names: list[str],
    config: RankerConfig | None = None,
) -> lgb.Booster:
    """Fit on (features, labels, group sizes); stop early on the validation users' NDCG@20."""
    cfg = config or RankerConfig()
    params = {
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
    dtrain = lgb.Dataset(train[0], train[1], group=train[2], feature_name=feature_names)
    dvalid = lgb.Dataset(valid[0], valid[1], group=valid[2], reference=dtrain)
    return lgb.train(
        params,
        dtrain,
        num_boost_round=cfg.rounds,
        valid_sets=[dvalid],
        callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False)],
    )


def score(booster: lgb.Booster, features: np.ndarray) -> np.ndarray:
    return booster.predict(features, num_threads=1).astype(np.float32)


def compiled_scorer(booster: lgb.Booster) -> Callable[[np.ndarray], np.ndarray]:
    """`score` with the booster compiled to native code (lleaves, through LLVM), for serving:
    on the Gowalla ranker (52 trees) 200 rows take 0.03 ms instead of LightGBM's 0.26 ms,
    scores within 1e-15 of LightGBM's, after a compile of under a second."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ranker.txt"
        booster.save_model(str(path))
        model = lleaves.Model(model_file=str(path))
        model.compile()
    return lambda features: model.predict(features, n_jobs=1).astype(np.float32)
