"""Build any retrieval model by name from a config dict: one interface for all of them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import numpy as np

from shortlist.data.interactions import Interactions
from shortlist.models.base import FitReport, RetrievalModel
from shortlist.models.item_item import (
    EASE,
    EASEConfig,
    ItemItem,
    ItemItemConfig,
    ItemKNN,
    ItemKNNConfig,
)
from shortlist.models.lightgcn import LightGCN, LightGCNConfig
from shortlist.models.lightgcn_neg import LightGCNNeg, LightGCNNegConfig
from shortlist.models.mf_bpr import MFBPR, MFBPRConfig
from shortlist.models.popularity import item_popularity
from shortlist.models.sasrec import SASRec, SASRecConfig
from shortlist.models.spectral import SpectralCF, SpectralConfig
from shortlist.models.two_tower import TwoTower, TwoTowerConfig


class PopularityModel:
    """Popularity as a 1-d dot product: every user vector is 1, the item vector its count."""

    name = "popularity"

    def __init__(self, config: Any = None) -> None:
        self.config = config
        self.user_factors = np.zeros((0, 1), np.float32)
        self.item_factors = np.zeros((0, 1), np.float32)

    def fit(self, data: Interactions) -> FitReport:
        start = time.perf_counter()
        self.item_factors = item_popularity(data)[:, None].astype(np.float32)
        self.user_factors = np.ones((data.n_users, 1), np.float32)
        return FitReport(epochs=1, seconds=time.perf_counter() - start)


_MODELS: dict[str, tuple[Callable[[Any], RetrievalModel], type | None]] = {
    "popularity": (PopularityModel, None),
    "mf-bpr": (MFBPR, MFBPRConfig),
    "lightgcn": (LightGCN, LightGCNConfig),
    # LightGCN plus a negative graph of dislikes subtracted at scoring (beta chosen on valid)
    "lightgcn-neg": (LightGCNNeg, LightGCNNegConfig),
    "two-tower": (TwoTower, TwoTowerConfig),
    "spectral": (SpectralCF, SpectralConfig),
    "sasrec": (SASRec, SASRecConfig),
    # item-item models (shortlist.models.base.ItemItemModel): scored as history @ neighbours
    "ease": (EASE, EASEConfig),
    "item-knn": (ItemKNN, ItemKNNConfig),
    "item-item": (ItemItem, ItemItemConfig),
}

# The benchmarks' published protocols only (`shortlist bench`): `shortlist train` chooses
# options on the data itself (shortlist.training.tuning), never by a folder name.
# Defaults tuned per dataset name, never on test: LastFM by valid NDCG@20 under protocol B
# (`shortlist bench quality`), Gowalla on train+valid alone (`shortlist bench recency`).
# Each beats the model's defaults on test (docs/decisions/0008-recency-weighted-retrieval.md).
# LastFM lightgcn: the default 16k batch gives 4 steps an epoch and temperature 0.2 is soft.
PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    # Gowalla protocol A: pop_exp, recency and recency_power were chosen by `shortlist bench
    # recency` on the latest 20% of each user's train+valid likes; test was not read.
    ("spectral", "gowalla"): {
        "power": 1.0,
        "item_exp": 0.4,
        "pop_exp": 0.2,
        "recency": 10.0,
        "recency_power": 16.0,
    },
    # LastFM protocol B, chosen on valid NDCG@20 by a coordinate search over power, item_exp,
    # user_exp, sharpen, ideal_weight and rank; it beat the previous preset on test too.
    ("spectral", "lastfm"): {"power": 1.0, "item_exp": 0.35, "sharpen": 0.5, "rank": 768},
    ("lightgcn", "lastfm"): {"batch_size": 2048, "lr": 0.01, "temperature": 0.1, "epochs": 60},
}


def model_names() -> list[str]:
    return sorted(_MODELS)


def build(name: str, config: dict[str, Any] | None = None) -> RetrievalModel:
    """A fresh model; unknown config keys are an error so typos do not pass silently."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(model_names())}")
    factory, config_cls = _MODELS[name]
    if config_cls is None:
        return factory(None)
    allowed = {f.name for f in fields(config_cls)}
    unknown = set(config or {}) - allowed
    if unknown:
        raise ValueError(f"unknown {name} options: {sorted(unknown)}")
    return factory(config_cls(**(config or {})))


def preset(name: str, dataset: str) -> dict[str, Any]:
    """The tuned options for a model on a named dataset (empty when none)."""
    return dict(PRESETS.get((name, dataset), {}))
