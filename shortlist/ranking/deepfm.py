"""A DeepFM ranker over the ranking features, served blended with LambdaRank.

Trained in torch with a listwise softmax loss (each list's labelled items against the rest
of its shortlist), early-stopped on a held-out share of the lists. Serving runs the same
forward pass in numpy from the exported weights (`DeepFMWeights`): the ranking service
then needs no torch, and offline evaluation scores with the very code that serves.

Why a blend (`shortlist.ranking.scorer`): neither ranker alone wins on every dataset, their
per-list standardised sum beats both (docs/decisions, the DeepFM blend).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shortlist.models.progress import bar
from shortlist.ranking.lambdarank import mean_list_ndcg

if TYPE_CHECKING:  # the ranking service imports this module and needs no torch
    from shortlist.compute.ranks import Ranks


@dataclass
class DeepFMConfig:
    factors: int = 8  # FM factor size
    hidden: tuple[int, ...] = (128, 64)
    learning_rate: float = 1e-3
    lists_per_batch: int = 64
    max_epochs: int = 60
    patience: int = 5  # epochs without a better held-out NDCG@20
    valid_share: float = 0.2  # of the lists, for early stopping
    seed: int = 0


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass
class InputScaling:
    """Features to network inputs: sign(x) log(1 + |x|), standardised and clipped to +-5
    (NaN as 0), then a missing flag for each column that had NaN in training."""

    mean: np.ndarray
    std: np.ndarray
    flagged: np.ndarray  # indices of the columns with a missing flag

    @classmethod
    def fit(cls, x: np.ndarray) -> InputScaling:
        squashed = _signed_log(np.nan_to_num(x))
        flagged = np.flatnonzero(np.isnan(x).any(axis=0))
        return cls(squashed.mean(axis=0), squashed.std(axis=0) + 1e-6, flagged)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = np.clip((_signed_log(np.nan_to_num(x)) - self.mean) / self.std, -5.0, 5.0)
        missing = np.isnan(x[..., self.flagged])
        return np.concatenate([z, missing], axis=-1).astype(np.float32)


@dataclass
class DeepFMWeights:
    """What the bundle stores, and the forward pass that serves."""

    scaling: InputScaling
    linear: np.ndarray  # (inputs,)
    bias: np.ndarray  # (1,)
    factors: np.ndarray  # (inputs, factors)
    layers: list[tuple[np.ndarray, np.ndarray]]  # (in x out weight, bias); the last is out 1

    def score(self, features: np.ndarray) -> np.ndarray:
        x = self.scaling(features)
        xv = x @ self.factors
        fm = 0.5 * (xv**2 - (x**2) @ (self.factors**2)).sum(axis=-1)
        h = x
        for n, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if n < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return (x @ self.linear + self.bias[0] + fm + h[..., 0]).astype(np.float32)

    def save(self, path: Path) -> None:
        sc = self.scaling
        arrays = {"mean": sc.mean, "std": sc.std, "flagged": sc.flagged}
        arrays |= {"linear": self.linear, "bias": self.bias, "factors": self.factors}
        for n, (w, b) in enumerate(self.layers):
            arrays |= {f"layer{n}_w": w, f"layer{n}_b": b}
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> DeepFMWeights:
        with np.load(path) as f:
            layers = []
            while f"layer{len(layers)}_w" in f:
                n = len(layers)
                layers.append((f[f"layer{n}_w"], f[f"layer{n}_b"]))
            scaling = InputScaling(f["mean"], f["std"], f["flagged"])
            return cls(scaling, f["linear"], f["bias"], f["factors"], layers)


def train_deepfm(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], config: DeepFMConfig | None = None
) -> tuple[DeepFMWeights, int, float]:
    """DeepFM on (features, labels, list sizes), lists in a random order: the first
    `valid_share` of them hold out for early stopping. Returns the weights of the best
    epoch, that epoch (1-based) and its held-out NDCG@20. Data-parallel over the workers
    when the current engine is Dask (`shortlist.compute.ranks`)."""
    from shortlist.compute.ranks import data_parallel

    return data_parallel(_train_deepfm, data, config or DeepFMConfig())


def _train_deepfm(
    ranks: Ranks, data: tuple[np.ndarray, np.ndarray, np.ndarray], cfg: DeepFMConfig
) -> tuple[DeepFMWeights, int, float] | None:
    """The training loop as one rank (`shortlist.compute.ranks.Ranks`): each rank scores its
    share of a batch's lists, the gradients are averaged; rank 0 scores the held-out lists
    and its best epoch, broadcast, decides when every rank stops."""
    import torch
    from torch import nn

    x, y, sizes = data
    if len(sizes) < 2:
        raise ValueError(f"DeepFM needs at least 2 lists, got {len(sizes)}")
    scaling = InputScaling.fit(x)
    prepared = scaling(x)
    padded, labels, mask = _padded(prepared, y, sizes)
    n_valid = max(1, int(len(sizes) * cfg.valid_share))
    valid_rows = int(sizes[:n_valid].sum())
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_x = torch.from_numpy(padded[n_valid:])
    train_y = torch.from_numpy(labels[n_valid:])
    train_mask = torch.from_numpy(mask[n_valid:])
    valid_x = torch.from_numpy(prepared[:valid_rows])

    class DeepFM(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.linear = nn.Linear(width, 1)
            self.factors = nn.Parameter(torch.randn(width, cfg.factors) * 0.01)
            layers: list[nn.Module] = []
            for h in cfg.hidden:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
            self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            xv = v @ self.factors
            fm = 0.5 * (xv.pow(2) - v.pow(2) @ self.factors.pow(2)).sum(-1)
            return self.linear(v).squeeze(-1) + fm + self.mlp(v).squeeze(-1)

    model = DeepFM(prepared.shape[1])
    net = ranks.wrap(model)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    best, best_epoch, best_state = -1.0, 0, None
    batches = (len(train_x) + cfg.lists_per_batch - 1) // cfg.lists_per_batch
    with bar("deepfm", cfg.max_epochs * batches, enabled=ranks.main) as advance:
        for epoch in range(1, cfg.max_epochs + 1):
            model.train()
            order = torch.randperm(len(train_x), generator=generator)
            for start in range(0, len(order), cfg.lists_per_batch):
                whole = order[start : start + cfg.lists_per_batch]
                batch = ranks.part(whole)
                scores = net(train_x[batch]).masked_fill(~train_mask[batch], -1e9)
                target = train_y[batch]
                log_p = torch.log_softmax(scores, dim=-1)
                loss = -((log_p * target).sum(-1) / target.sum(-1).clamp(min=1.0)).mean()
                if not len(batch):  # a batch smaller than the ranks: no gradient from here
                    loss = 0.0 * scores.sum()
                optimiser.zero_grad()
                (loss * ranks.share(len(batch), len(whole))).backward()
                optimiser.step()
                advance()
            if ranks.main:
                model.eval()
                with torch.no_grad():
                    held_out = model(valid_x).numpy()
                ndcg = mean_list_ndcg(held_out, y[:valid_rows], sizes[:n_valid])
                if ndcg > best:
                    best, best_epoch = ndcg, epoch
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_epoch = ranks.agree(best_epoch)
            if epoch - best_epoch >= cfg.patience:
                break
    if not ranks.main:
        return None  # rank 0's weights are the result
    model.load_state_dict(best_state)
    linears = [m for m in model.mlp if isinstance(m, nn.Linear)]
    weights = DeepFMWeights(
        scaling,
        linear=model.linear.weight.detach().numpy()[0].copy(),
        bias=model.linear.bias.detach().numpy().copy(),
        factors=model.factors.detach().numpy().copy(),
        layers=[
            (m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in linears
        ],
    )
    return weights, best_epoch, best


def _padded(
    x: np.ndarray, y: np.ndarray, sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lists x longest x columns, with labels and a mask of the real rows."""
    longest = int(sizes.max())
    padded = np.zeros((len(sizes), longest, x.shape[1]), np.float32)
    labels = np.zeros((len(sizes), longest), np.float32)
    mask = np.zeros((len(sizes), longest), bool)
    starts = np.cumsum(sizes) - sizes
    for n, (start, size) in enumerate(zip(starts, sizes)):
        padded[n, :size] = x[start : start + size]
        labels[n, :size] = y[start : start + size]
        mask[n, :size] = True
    return padded, labels, mask
