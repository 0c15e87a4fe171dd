"""Build any retrieval model by name from a config dict: one interface for all of them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import numpy as np

from shortlist.data.interactions import Interactions
from shortlist.models.base import FitReport, RetrievalModel
from shortlist.models.ials import IALS, IALSConfig
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
    # weighted MF of the likes (implicit ALS, conjugate gradient in numpy)
    "ials": (IALS, IALSConfig),
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
