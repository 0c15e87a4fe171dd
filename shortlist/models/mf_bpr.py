"""Matrix factorisation with the BPR loss: the simplest embedding model and a baseline.

Training is vectorised: each step draws a large batch of (user, liked item) pairs and
several sampled negatives per pair; explicit dislikes, when present, replace one of the
sampled negatives so that they are pushed down first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from shortlist.compute.ranks import Pair, Ranks, fit_model
from shortlist.data.interactions import Interactions
from shortlist.models.base import FitReport
from shortlist.models.progress import bar


@dataclass
class MFBPRConfig:
    dim: int = 32
    epochs: int = 30
    batch_size: int = 4096
    negatives: int = 4
    lr: float = 0.02
    l2: float = 1e-4
    seed: int = 0


class MFBPR:
    name = "mf-bpr"

    def __init__(self, config: MFBPRConfig | None = None) -> None:
        self.config = config or MFBPRConfig()
        self.user_factors = np.zeros((0, self.config.dim), np.float32)
        self.item_factors = np.zeros((0, self.config.dim), np.float32)

    def fit(self, data: Interactions) -> FitReport:
        """Train; data-parallel over the workers when the engine is Dask (compute.ranks)."""
        return fit_model(self, data)

    def _train(self, ranks: Ranks, data: Interactions, validate: None = None) -> FitReport:
        """The training loop as one rank: the batch's draws are the same on every rank,
        each computes the loss on its share and the gradients are averaged."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        start = time.perf_counter()
        pos = data.positives.tocoo()
        users, items = pos.row.astype(np.int64), pos.col.astype(np.int64)
        neg = data.negatives.tocsr()
        has_dislikes = neg.nnz > 0

        user_emb = torch.nn.Embedding(data.n_users, cfg.dim)
        item_emb = torch.nn.Embedding(data.n_items, cfg.dim)
        torch.nn.init.normal_(user_emb.weight, std=0.1)
        torch.nn.init.normal_(item_emb.weight, std=0.1)
        tables = Pair(user_emb, item_emb)
        net = ranks.wrap(tables)
        opt = torch.optim.Adam(tables.parameters(), lr=cfg.lr)

        report = FitReport()
        n = len(users)
        steps = (n + cfg.batch_size - 1) // cfg.batch_size
        with bar("mf-bpr", cfg.epochs * steps, enabled=ranks.main) as advance:
            for epoch in range(cfg.epochs):
                perm = rng.permutation(n)
                total, seen = 0.0, 0
                for lo in range(0, n, cfg.batch_size):
                    b = perm[lo : lo + cfg.batch_size]
                    u, i = users[b], items[b]
                    j = rng.integers(0, data.n_items, size=(len(b), cfg.negatives))
                    if has_dislikes:
                        j[:, 0] = _sample_dislikes(neg, u, j[:, 0], rng)
                    u, i, j = ranks.part(u), ranks.part(i), ranks.part(j)
                    ut, it, jt = (torch.from_numpy(x) for x in (u, i, j))
                    ue, ie = net(ut, torch.cat([it, jt.reshape(-1)]))
                    pos_e, neg_e = ie[: len(u)], ie[len(u) :].reshape(len(u), cfg.negatives, -1)
                    pos_s = (ue * pos_e).sum(-1, keepdim=True)
                    neg_s = torch.einsum("bd,bnd->bn", ue, neg_e)
                    if len(u):
                        loss = -torch.nn.functional.logsigmoid(pos_s - neg_s).mean()
                        reg = cfg.l2 * (ue.pow(2).sum() + pos_e.pow(2).sum()) / len(u)
                    else:  # a batch smaller than the ranks: this one adds no gradient
                        loss = reg = 0.0 * (ue.sum() + ie.sum())
                    opt.zero_grad()
                    ((loss + reg) * ranks.share(len(u), len(b))).backward()
                    opt.step()
                    total += loss.item() * len(u)
                    seen += len(u)
                    advance()
                # this rank's share of the likes (all of them with one rank)
                report.history.append({"epoch": epoch + 1, "loss": total / max(1, seen)})
        report.epochs = cfg.epochs
        report.seconds = time.perf_counter() - start
        self.user_factors = user_emb.weight.detach().numpy().astype(np.float32)
        self.item_factors = item_emb.weight.detach().numpy().astype(np.float32)
        return report


def _sample_dislikes(neg, users: np.ndarray, fallback: np.ndarray, rng) -> np.ndarray:
    """For each user one random disliked item, or the fallback where the user has none."""
    starts, ends = neg.indptr[users], neg.indptr[users + 1]
    counts = ends - starts
    out = fallback.copy()
    has = counts > 0
    offs = (rng.random(has.sum()) * counts[has]).astype(np.int64)
    out[has] = neg.indices[starts[has] + offs]
    return out
