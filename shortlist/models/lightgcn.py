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
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from shortlist.data.interactions import Interactions
from shortlist.models.base import FitReport, Validator
from shortlist.models.progress import bar as progress_bar


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


def _csr_tensor(m: sp.csr_matrix) -> torch.Tensor:
    m = m.tocsr().astype(np.float32)
    m.sort_indices()
    with warnings.catch_warnings():  # "sparse CSR support is in beta" on every call
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(m.data),
            size=m.shape,
            check_invariants=False,
        )


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
        """Train on `data.positives` (+ `data.negatives`); early-stop on `validate` if given."""
        cfg = self.config
        torch.set_num_threads(max(1, cfg.threads))
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        start = time.perf_counter()

        norm = normalized_graph(data.positives)
        self._r, self._rt = _csr_tensor(norm), _csr_tensor(norm.T.tocsr())
        pos = data.positives.tocoo()
        p_users, p_items = pos.row.astype(np.int64), pos.col.astype(np.int64)
        neg = data.negatives.tocsr() if cfg.use_dislikes else sp.csr_matrix(data.positives.shape)
        has_dislikes = neg.nnz > 0

        user_emb = torch.nn.Parameter(torch.randn(data.n_users, cfg.dim) * cfg.init_std)
        item_emb = torch.nn.Parameter(torch.randn(data.n_items, cfg.dim) * cfg.init_std)
        opt = torch.optim.Adam([user_emb, item_emb], lr=cfg.lr)

        report = FitReport()
        best = (-1.0, 0)
        best_vectors = None
        bad_evals = 0
        n = len(p_users)
        steps = (n + cfg.batch_size - 1) // cfg.batch_size

        with progress_bar(
            "lightgcn",
            cfg.epochs * steps,
            enabled=cfg.progress,
            detail="epoch {task.fields[epoch]} loss {task.fields[loss]:.4f} {task.fields[val]}",
            epoch=0,
            loss=0.0,
            val="",
        ) as advance:
            for epoch in range(1, cfg.epochs + 1):
                perm = rng.permutation(n)
                total = 0.0
                for lo in range(0, n, cfg.batch_size):
                    b = perm[lo : lo + cfg.batch_size]
                    u, i = p_users[b], p_items[b]
                    d = _sample_dislikes(neg, u, rng) if has_dislikes else None
                    eu, ei = self._propagate(user_emb, item_emb)
                    loss = self._loss(eu, ei, u, i, d, data.n_items, rng)
                    reg = (
                        cfg.l2
                        * (
                            user_emb[torch.from_numpy(u)].pow(2).sum()
                            + item_emb[torch.from_numpy(i)].pow(2).sum()
                        )
                        / len(b)
                    )
                    opt.zero_grad()
                    (loss + reg).backward()
                    opt.step()
                    step_loss = loss.item()
                    total += step_loss * len(b)
                    advance(1, epoch=epoch, loss=step_loss)
                row: dict[str, float] = {"epoch": epoch, "loss": total / n}
                last = epoch == cfg.epochs
                if validate is not None and (epoch % cfg.eval_every == 0 or last):
                    with torch.no_grad():
                        uf, itf = self._export(*self._propagate(user_emb, item_emb))
                    m = validate(uf, itf, cfg.eval_k)
                    k = cfg.eval_k
                    row.update({f"recall@{k}": m[f"recall@{k}"], f"ndcg@{k}": m[f"ndcg@{k}"]})
                    advance(0, val=f"val ndcg@{k} {m[f'ndcg@{k}']:.4f}")
                    if m[f"ndcg@{k}"] > best[0]:
                        best, best_vectors, bad_evals = (m[f"ndcg@{k}"], epoch), (uf, itf), 0
                        self._checkpoint(user_emb, item_emb, epoch, row)
                    else:
                        bad_evals += 1
                row["seconds"] = time.perf_counter() - start
                report.history.append(row)
                report.epochs = epoch
                if validate is not None and bad_evals >= cfg.patience:
                    break

        if best_vectors is None:
            with torch.no_grad():
                best_vectors = self._export(*self._propagate(user_emb, item_emb))
            self._checkpoint(user_emb, item_emb, report.epochs, {})
        self.user_factors, self.item_factors = best_vectors
        self.best_epoch = best[1] or report.epochs
        report.seconds = time.perf_counter() - start
        del self._r, self._rt
        return report

    def _loss(self, eu, ei, u, i, d, n_items: int, rng) -> torch.Tensor:
        cfg = self.config
        ut, it = torch.from_numpy(u), torch.from_numpy(i)
        if cfg.cosine:
            eu, ei = F.normalize(eu, dim=1), F.normalize(ei, dim=1)
        bu, bi = eu[ut], ei[it]
        pos = (bu * bi).sum(-1, keepdim=True)
        if cfg.loss == "bpr":
            j = torch.from_numpy(rng.integers(0, n_items, size=len(u)))
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
        shared = torch.from_numpy(rng.integers(0, n_items, size=cfg.negatives))
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
