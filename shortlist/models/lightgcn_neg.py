"""LightGCN with a negative graph: dislikes propagated over their own graph, subtracted.

Two LightGCN embeddings, each propagated over its own normalized user x item graph:

* the positive part over the likes (`shortlist.models.lightgcn.LightGCN`, unchanged, dislikes
  optionally kept as extra negatives of its loss);
* the negative part over the dislikes alone (R-~ = D_U^-1/2 R- D_I^-1/2): it learns which
  items a user would dislike, so an item never disliked but close to a user's dislikes in
  that graph (disliked by the same users) scores high there.

Scoring is `pos(u, i) - beta * neg(u, i)`, both cosine. The negative part is early-stopped
on valid likes: at each evaluation every beta of `betas` is scored on valid NDCG@20 and the
best kept, so beta = 0 (the positive part alone) wins whenever the dislikes do not help.
Without a validator (protocol A, `shortlist train`) the fixed `beta` is used.

The score stays one dot product, so FAISS and the rest of serving need nothing new:
user vector [pos_u, -beta * neg_u], item vector [pos_i, neg_i]. Users without dislikes get a
zero negative part (their scores are the positive part's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

import numpy as np

from shortlist.data.interactions import Interactions
from shortlist.models.base import FitReport, Validator
from shortlist.models.lightgcn import LightGCN, LightGCNConfig


@dataclass
class LightGCNNegConfig(LightGCNConfig):
    neg_dim: int = 32
    neg_layers: int = 2
    neg_epochs: int = 40
    neg_batch_size: int = 2048
    neg_lr: float = 0.01
    neg_temperature: float = 0.2
    betas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
    beta: float = 0.2  # used when no validator chooses one


def combine(
    pos: tuple[np.ndarray, np.ndarray],
    neg: tuple[np.ndarray, np.ndarray],
    beta: float,
    has_dislikes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectors whose dot product is pos(u, i) - beta * neg(u, i) (neg = 0 without dislikes)."""
    neg_u = np.where(has_dislikes[:, None], neg[0], 0.0).astype(np.float32)
    users = np.hstack([pos[0], -np.float32(beta) * neg_u]).astype(np.float32)
    items = np.hstack([pos[1], neg[1]]).astype(np.float32)
    return users, items


class LightGCNNeg:
    name = "lightgcn-neg"

    def __init__(self, config: LightGCNNegConfig | None = None) -> None:
        self.config = config or LightGCNNegConfig()
        self.user_factors = np.zeros((0, self.config.dim), np.float32)
        self.item_factors = np.zeros((0, self.config.dim), np.float32)
        self.beta = 0.0
        self.pos_factors: tuple[np.ndarray, np.ndarray] | None = None
        self.neg_factors: tuple[np.ndarray, np.ndarray] | None = None

    def _part_configs(self) -> tuple[LightGCNConfig, LightGCNConfig]:
        cfg = self.config
        base = {f.name: getattr(cfg, f.name) for f in fields(LightGCNConfig)}
        neg = {
            **base,
            "dim": cfg.neg_dim,
            "layers": cfg.neg_layers,
            "epochs": cfg.neg_epochs,
            "batch_size": cfg.neg_batch_size,
            "lr": cfg.neg_lr,
            "temperature": cfg.neg_temperature,
            "use_dislikes": False,
            "cosine": True,  # the two parts' scores are on one scale only when both are cosine
            "checkpoint_dir": None,
            "seed": cfg.seed + 1,
        }
        return LightGCNConfig(**base), LightGCNConfig(**neg)

    def fit(self, data: Interactions, validate: Validator | None = None) -> FitReport:
        start = time.perf_counter()
        pos_cfg, neg_cfg = self._part_configs()
        pos_model = LightGCN(pos_cfg)
        report = pos_model.fit(data, validate=validate)
        pos = (pos_model.user_factors, pos_model.item_factors)
        self.pos_factors = pos
        self.pos_seconds = report.seconds

        dislikes = data.negatives.tocsr()
        has = np.diff(dislikes.indptr) > 0
        self.beta, self.neg_factors = 0.0, None
        if dislikes.nnz == 0:
            self.user_factors, self.item_factors = pos
            report.seconds = time.perf_counter() - start
            return report

        neg_data = Interactions(users=data.users, items=data.items, positives=dislikes)
        neg_model = LightGCN(neg_cfg)
        betas = self.config.betas

        def best_beta(nu: np.ndarray, ni: np.ndarray, k: int) -> tuple[dict[str, float], float]:
            assert validate is not None
            best_m, best_b = None, 0.0
            for b in betas:
                m = validate(*combine(pos, (nu, ni), b, has), k)
                if best_m is None or m[f"ndcg@{k}"] > best_m[f"ndcg@{k}"]:
                    best_m, best_b = m, b
            assert best_m is not None
            return best_m, best_b

        def validate_neg(nu: np.ndarray, ni: np.ndarray, k: int) -> dict[str, float]:
            return best_beta(nu, ni, k)[0]

        neg_report = neg_model.fit(neg_data, validate=validate_neg if validate else None)
        neg = (neg_model.user_factors, neg_model.item_factors)
        self.beta = self.config.beta
        if validate is not None:
            # the kept (best) epoch's vectors, scored again here: the validator may have run
            # in another process (a data-parallel rank), so nothing it noted comes back
            self.beta = best_beta(*neg, self.config.eval_k)[1]
        self.neg_factors = neg
        self.neg_seconds = neg_report.seconds
        self.user_factors, self.item_factors = combine(pos, neg, self.beta, has)
        for row in neg_report.history:
            report.history.append({f"neg_{k}": v for k, v in row.items()})
        report.epochs += neg_report.epochs
        report.seconds = time.perf_counter() - start
        return report
