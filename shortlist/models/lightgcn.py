"""LightGCN on CPU: sparse CSR propagation, sampled softmax, dislikes as preferred negatives.

Design choices for 2 CPU cores (the reference recipe, batch 2048 with one propagation per
batch for ~1,000 epochs, would take days):

* Propagation uses the user x item block R~ = D_U^-1/2 R D_I^-1/2 of the normalized graph
  (and its transpose), never the (U+I)^2 adjacency, as torch CSR tensors.
* One propagation per optimiser step, with large batches (16k positives): an epoch is a
  few dozen propagations instead of hundreds.
* Sampled softmax over many shared uniform negatives per step (a matrix multiply, not a
  gather per pair), optionally on cosine scores with a temperature.
* Dislikes form a separate negative graph: never normalized nor propagated, they add one
  extra logit per positive (a disliked item of that user), weighted up, beside the
  sampled negatives.
* Validation-based early stopping (the best epoch's vectors are kept), seeds, checkpoints.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from shortlist.compute.ranks import Ranks, fit_model
from shortlist.data.interactions import Interactions
from shortlist.models.base import BestOnValid, FitReport, Validator
from shortlist.models.progress import bar as progress_bar
from shortlist.models.sparse_tensor import csr_tensor


@dataclass
class LightGCNConfig:
    dim: int = 64
    layers: int = 3
    epochs: int = 60
    batch_size: int = 16384
    negatives: int = 1024  # shared uniform negatives per step
    loss: str = "softmax"  # "softmax" (sampled softmax) or "bpr"
    temperature: float = 0.2
    cosine: bool = True  # softmax on cosine scores (exported vectors are normalized)
    lr: float = 0.005
    l2: float = 1e-5
    use_dislikes: bool = True
    dislike_weight: float = 2.0  # multiplies exp(logit) of the disliked item
    init_std: float = 0.1
    eval_every: int = 2
    patience: int = 3  # evaluations without improvement before stopping
    eval_k: int = 20
    seed: int = 0
    threads: int = 2
    checkpoint_dir: str | None = None
    progress: bool = True


class _SpMM(torch.autograd.Function):
    """y = A x with the transpose precomputed for the backward pass."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, at: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.at = at
        return a @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, ctx.at @ grad


def normalized_graph(positives: sp.csr_matrix) -> sp.csr_matrix:
    """R~ = D_U^-1/2 R D_I^-1/2: the user-item block of LightGCN's normalized adjacency."""
    r = positives.tocsr().astype(np.float32)
    du = np.asarray(r.sum(axis=1)).ravel()
    di = np.asarray(r.sum(axis=0)).ravel()
    du = np.where(du > 0, du, 1.0) ** -0.5
    di = np.where(di > 0, di, 1.0) ** -0.5
    return (sp.diags(du) @ r @ sp.diags(di)).tocsr()


class _Tables(torch.nn.Module):
    """The user and item embedding tables as one module whose forward pass is the
    propagation (what DistributedDataParallel wraps)."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, propagate) -> None:
        super().__init__()
        self.users, self.items = torch.nn.Parameter(users), torch.nn.Parameter(items)
        self.propagate = propagate

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate(self.users, self.items)


class LightGCN:
    name = "lightgcn"

    def __init__(self, config: LightGCNConfig | None = None) -> None:
        self.config = config or LightGCNConfig()
        self.user_factors = np.zeros((0, self.config.dim), np.float32)
        self.item_factors = np.zeros((0, self.config.dim), np.float32)

    # ---------------------------------------------------------------- propagation
    def _propagate(
        self, users: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-averaged embeddings; only the positive graph is propagated."""
        out_u, out_i = users, items
        eu, ei = users, items
        for _ in range(self.config.layers):
            eu, ei = _SpMM.apply(self._r, self._rt, ei), _SpMM.apply(self._rt, self._r, eu)
            out_u = out_u + eu
            out_i = out_i + ei
        scale = 1.0 / (self.config.layers + 1)
        return out_u * scale, out_i * scale

    def _export(self, eu: torch.Tensor, ei: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if self.config.cosine:
            eu, ei = F.normalize(eu, dim=1), F.normalize(ei, dim=1)
        return eu.detach().numpy().copy(), ei.detach().numpy().copy()

    # ------------------------------------------------------------------- training
    def fit(self, data: Interactions, validate: Validator | None = None) -> FitReport:
        """Train on `data.positives` (+ `data.negatives`); early-stop on `validate` if given.
        Data-parallel over the workers when the current engine is Dask (compute.ranks)."""
        return fit_model(self, data, validate)

    def _train(self, ranks: Ranks, data: Interactions, validate: Validator | None) -> FitReport:
        """The training loop, as one rank of `ranks`: every rank propagates the whole graph
        and computes the loss on its share of each batch; the gradients are averaged."""
        cfg = self.config
        torch.set_num_threads(ranks.torch_threads(cfg.threads))
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        start = time.perf_counter()

        norm = normalized_graph(data.positives)
        self._r, self._rt = csr_tensor(norm), csr_tensor(norm.T.tocsr())
        pos = data.positives.tocoo()
        p_users, p_items = pos.row.astype(np.int64), pos.col.astype(np.int64)
        neg = data.negatives.tocsr() if cfg.use_dislikes else sp.csr_matrix(data.positives.shape)
        has_dislikes = neg.nnz > 0

        tables = _Tables(
            torch.randn(data.n_users, cfg.dim) * cfg.init_std,
            torch.randn(data.n_items, cfg.dim) * cfg.init_std,
            self._propagate,
        )
        net = ranks.wrap(tables)
        opt = torch.optim.Adam(tables.parameters(), lr=cfg.lr)

        report = FitReport()
        early = BestOnValid(validate, cfg.eval_every, cfg.epochs, cfg.patience, ranks, cfg.eval_k)
        n = len(p_users)
        steps = (n + cfg.batch_size - 1) // cfg.batch_size

        def export() -> tuple[np.ndarray, np.ndarray]:
            with torch.no_grad():
                return self._export(*tables())

        with progress_bar(
            "lightgcn",
            cfg.epochs * steps,
            enabled=cfg.progress and ranks.main,
            detail="epoch {task.fields[epoch]} loss {task.fields[loss]:.4f} {task.fields[val]}",
            epoch=0,
            loss=0.0,
            val="",
        ) as advance:
            for epoch in range(1, cfg.epochs + 1):
                perm = rng.permutation(n)
                total, seen = 0.0, 0
                for lo in range(0, n, cfg.batch_size):
                    # the random draws are the whole batch's, the same on every rank
                    b = perm[lo : lo + cfg.batch_size]
                    d = _sample_dislikes(neg, p_users[b], rng) if has_dislikes else None
                    if cfg.loss == "bpr":
                        sampled = rng.integers(0, data.n_items, size=len(b))
                    else:
                        sampled = rng.integers(0, data.n_items, size=cfg.negatives)
                    mine = ranks.part(np.arange(len(b)))
                    u, i = p_users[b][mine], p_items[b][mine]
                    if d is not None:
                        d = d[mine]
                    if cfg.loss == "bpr":
                        sampled = sampled[mine]
                    eu, ei = net()
                    if len(mine):
                        loss = self._loss(eu, ei, u, i, d, sampled)
                        reg = (
                            cfg.l2
                            * (
                                tables.users[torch.from_numpy(u)].pow(2).sum()
                                + tables.items[torch.from_numpy(i)].pow(2).sum()
                            )
                            / len(mine)
                        )
                    else:  # a batch smaller than the ranks: this one adds no gradient
                        loss = reg = 0.0 * (eu.sum() + ei.sum())
                    opt.zero_grad()
                    ((loss + reg) * ranks.share(len(mine), len(b))).backward()
                    opt.step()
                    step_loss = loss.item()
                    total += step_loss * len(mine)
                    seen += len(mine)
                    advance(1, epoch=epoch, loss=step_loss)
                # this rank's share of the positives (all of them with one rank)
                row: dict[str, float] = {"epoch": epoch, "loss": total / max(1, seen)}
                stop = early.check(epoch, row, export)
                if f"ndcg@{cfg.eval_k}" in row:
                    advance(0, val=f"val ndcg@{cfg.eval_k} {row[f'ndcg@{cfg.eval_k}']:.4f}")
                if early.improved and ranks.main:
                    self._checkpoint(tables.users, tables.items, epoch, row)
                row["seconds"] = time.perf_counter() - start
                report.history.append(row)
                report.epochs = epoch
                if stop:
                    break

        best_vectors = early.vectors
        if best_vectors is None:
            best_vectors = export()
            if ranks.main:
                self._checkpoint(tables.users, tables.items, report.epochs, {})
        self.user_factors, self.item_factors = best_vectors
        self.best_epoch = early.best_epoch or report.epochs
        report.seconds = time.perf_counter() - start
        del self._r, self._rt
        return report

    def _loss(self, eu, ei, u, i, d, sampled: np.ndarray) -> torch.Tensor:
        """The loss on positives (u, i) with dislikes `d` (-1: none) and `sampled`
        negatives: one per positive for BPR, shared by the batch for the softmax."""
        cfg = self.config
        ut, it = torch.from_numpy(u), torch.from_numpy(i)
        if cfg.cosine:
            eu, ei = F.normalize(eu, dim=1), F.normalize(ei, dim=1)
        bu, bi = eu[ut], ei[it]
        pos = (bu * bi).sum(-1, keepdim=True)
        if cfg.loss == "bpr":
            j = torch.from_numpy(sampled)
            neg_s = (bu * ei[j]).sum(-1, keepdim=True)
            loss = -F.logsigmoid(pos - neg_s).mean()
            if d is not None:
                has = torch.from_numpy(d >= 0)
                dt = torch.from_numpy(np.where(d >= 0, d, 0))
                ds = (bu * ei[dt]).sum(-1, keepdim=True)
                loss = loss + cfg.dislike_weight * (
                    -F.logsigmoid(pos - ds).squeeze(-1) * has
                ).sum() / max(1, int(has.sum()))
            return loss
        shared = torch.from_numpy(sampled)
        logits = [pos, bu @ ei[shared].T]
        if d is not None:
            dt = torch.from_numpy(np.where(d >= 0, d, 0))
            ds = (bu * ei[dt]).sum(-1, keepdim=True)
            bonus = float(np.log(cfg.dislike_weight)) * cfg.temperature
            ds = torch.where(torch.from_numpy(d >= 0)[:, None], ds + bonus, -torch.inf)
            logits.append(ds)
        z = torch.cat(logits, dim=1) / cfg.temperature
        return -F.log_softmax(z, dim=1)[:, 0].mean()

    def _checkpoint(self, user_emb, item_emb, epoch: int, row: dict) -> None:
        if not self.config.checkpoint_dir:
            return
        path = Path(self.config.checkpoint_dir)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "epoch": epoch,
                "config": asdict(self.config),
                "user_emb": user_emb.detach().clone(),
                "item_emb": item_emb.detach().clone(),
                "metrics": row,
            },
            path / "lightgcn.pt",
        )


def _sample_dislikes(neg: sp.csr_matrix, users: np.ndarray, rng) -> np.ndarray:
    """One random disliked item per user, -1 where the user has none."""
    starts, ends = neg.indptr[users], neg.indptr[users + 1]
    counts = ends - starts
    out = np.full(len(users), -1, dtype=np.int64)
    has = counts > 0
    offs = (rng.random(has.sum()) * counts[has]).astype(np.int64)
    out[has] = neg.indices[starts[has] + offs]
    return out
