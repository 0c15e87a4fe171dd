"""Two-tower retrieval (TFRS style): in-batch softmax with the logQ popularity correction.

Each tower is an id embedding plus a projection of the entity's numeric features (from
`Interactions.user_features` / `item_features`), followed by a small MLP. The in-batch
softmax treats the other items of a batch as negatives; since those are drawn in
proportion to popularity, each logit is corrected by -log q(item) (Yi et al., 2019).
Exported vectors are L2-normalized so their dot product is the (cosine) score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from shortlist.compute.ranks import Pair, Ranks, fit_model
from shortlist.data.interactions import Interactions
from shortlist.models.base import BestOnValid, FitReport, Validator
from shortlist.models.progress import bar


@dataclass
class TwoTowerConfig:
    dim: int = 64
    hidden: int = 128
    epochs: int = 30
    batch_size: int = 4096
    lr: float = 0.005
    temperature: float = 0.1
    logq: bool = True
    use_features: bool = True
    weight_decay: float = 0.0
    eval_every: int = 2
    patience: int = 3
    seed: int = 0
    threads: int = 2
    progress: bool = True


def feature_matrix(features: dict[str, np.ndarray], n: int) -> np.ndarray:
    """All numeric features side by side as an (n, f) float32 matrix (f may be 0)."""
    cols = []
    for name in sorted(features):
        arr = np.asarray(features[name], np.float32)
        if arr.shape[0] != n:
            continue
        cols.append(arr.reshape(n, -1))
    return np.hstack(cols) if cols else np.zeros((n, 0), np.float32)


class Tower(torch.nn.Module):
    def __init__(self, n: int, features: np.ndarray, dim: int, hidden: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(n, dim)
        torch.nn.init.normal_(self.emb.weight, std=0.1)
        self.register_buffer("features", torch.from_numpy(features))
        self.proj = torch.nn.Linear(features.shape[1], dim) if features.shape[1] else None
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim)
        )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        if self.proj is not None:
            x = x + self.proj(self.features[idx])
        return F.normalize(x + self.mlp(x), dim=-1)


class TwoTower:
    name = "two-tower"

    def __init__(self, config: TwoTowerConfig | None = None) -> None:
        self.config = config or TwoTowerConfig()
        self.user_factors = np.zeros((0, self.config.dim), np.float32)
        self.item_factors = np.zeros((0, self.config.dim), np.float32)

    def fit(self, data: Interactions, validate: Validator | None = None) -> FitReport:
        """Train; data-parallel over the workers when the engine is Dask (compute.ranks)."""
        return fit_model(self, data, validate)

    def _train(self, ranks: Ranks, data: Interactions, validate: Validator | None) -> FitReport:
        """The training loop as one rank: each rank runs the towers on its share of a batch;
        the item vectors are gathered so every row's negatives are the whole batch's."""
        cfg = self.config
        torch.set_num_threads(ranks.torch_threads(cfg.threads))
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        start = time.perf_counter()
        uf = feature_matrix(data.user_features if cfg.use_features else {}, data.n_users)
        itf = feature_matrix(data.item_features if cfg.use_features else {}, data.n_items)
        self.user_tower = Tower(data.n_users, uf, cfg.dim, cfg.hidden)
        self.item_tower = Tower(data.n_items, itf, cfg.dim, cfg.hidden)
        towers = Pair(self.user_tower, self.item_tower)
        net = ranks.wrap(towers)
        opt = torch.optim.AdamW(towers.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        pos = data.positives.tocoo()
        users, items = pos.row.astype(np.int64), pos.col.astype(np.int64)
        counts = np.bincount(items, minlength=data.n_items).astype(np.float64)
        log_q = torch.from_numpy(np.log(np.maximum(counts, 1.0) / counts.sum()).astype(np.float32))

        report = FitReport()
        early = BestOnValid(validate, cfg.eval_every, cfg.epochs, cfg.patience, ranks)
        n = len(users)
        with bar("two-tower", cfg.epochs, enabled=cfg.progress and ranks.main) as advance:
            for epoch in range(1, cfg.epochs + 1):
                perm = rng.permutation(n)
                total, seen = 0.0, 0
                for lo in range(0, n, cfg.batch_size):
                    b = perm[lo : lo + cfg.batch_size]
                    first, end = ranks.bounds(len(b))
                    it_all = torch.from_numpy(items[b])
                    ut, it = torch.from_numpy(users[b][first:end]), it_all[first:end]
                    user_vecs, item_vecs = net(ut, it)
                    item_vecs = ranks.gather(item_vecs, len(b))  # the whole batch's items
                    logits = user_vecs @ item_vecs.T / cfg.temperature
                    if cfg.logq:
                        logits = logits - log_q[it_all][None, :]
                    # The same item elsewhere in the batch is not a negative.
                    own = torch.arange(first, end)
                    same = it[:, None] == it_all[None, :]
                    same[torch.arange(end - first), own] = False
                    logits = logits.masked_fill(same, -torch.inf)
                    if end > first:
                        loss = F.cross_entropy(logits, own)
                    else:  # a batch smaller than the ranks: this one adds no gradient
                        loss = 0.0 * (user_vecs.sum() + item_vecs.sum())
                    opt.zero_grad()
                    (loss * ranks.share(end - first, len(b))).backward()
                    opt.step()
                    total += loss.item() * (end - first)
                    seen += end - first
                # this rank's share of the likes (all of them with one rank)
                row: dict[str, float] = {"epoch": epoch, "loss": total / max(1, seen)}
                stop = early.check(epoch, row, lambda: self._vectors(data))
                row["seconds"] = time.perf_counter() - start
                report.history.append(row)
                report.epochs = epoch
                advance()
                if stop:
                    break
        self.user_factors, self.item_factors = early.vectors or self._vectors(data)
        report.seconds = time.perf_counter() - start
        return report

    @torch.no_grad()
    def _vectors(self, data: Interactions) -> tuple[np.ndarray, np.ndarray]:
        u = self.user_tower(torch.arange(data.n_users)).numpy().copy()
        i = self.item_tower(torch.arange(data.n_items)).numpy().copy()
        return u, i
