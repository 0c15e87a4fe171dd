"""A session model: SASRec (Kang and McAuley, 2018), small, over each user's likes in order.

A causal self-attention encoder reads a user's latest likes (oldest to newest) and predicts
the next one. Its output at the newest like is the user's vector; the item vectors are its
(shared) item embeddings, so a score is a dot product and FAISS serves it like any other
model. A user's vector depends only on their recent likes, in order: `encode` recomputes it
from a new sequence at once (the fold-in of this model), with no solve.

Training: next-like prediction at every position, a sampled softmax against negatives drawn
in proportion to popularity (shared by the batch) with the logQ correction (Yi et al.,
2019). Where the data orders no likes, the item index order stands in. Runs on a GPU when
one is present (`device="auto"`), on the CPU otherwise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from shortlist.compute.ranks import Ranks, fit_model
from shortlist.data.interactions import Interactions
from shortlist.models.base import BestOnValid, FitReport, Validator
from shortlist.models.progress import bar


@dataclass
class SASRecConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50  # likes the encoder reads (the latest)
    dropout: float = 0.2
    epochs: int = 40
    batch_size: int = 128  # sequences per step
    lr: float = 0.001
    negatives: int = 512  # popularity-sampled negatives shared by a batch
    pop_power: float = 0.75  # negatives drawn in proportion to count ** pop_power
    weight_decay: float = 0.0
    eval_every: int = 2
    patience: int = 3
    device: str = "auto"  # auto: cuda when available, else cpu
    threads: int = 1
    seed: int = 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
    return torch.device(name)


def ordered_likes(data: Interactions) -> list[np.ndarray]:
    """Each user's liked item indices, oldest first (by time or line position, else index)."""
    pos = data.positives.tocsr()
    pos.sort_indices()
    order = data.recency()
    out = []
    for u in range(data.n_users):
        lo, hi = pos.indptr[u], pos.indptr[u + 1]
        items = pos.indices[lo:hi]
        if order is not None:
            items = items[np.lexsort((items, np.asarray(order[lo:hi], np.float64)))]
        out.append(items.astype(np.int64))
    return out


def padded(sequences: list[np.ndarray], max_len: int) -> np.ndarray:
    """(n, max_len) of item index + 1, left-padded with 0, the latest likes kept."""
    out = np.zeros((len(sequences), max_len), np.int64)
    for n, s in enumerate(sequences):
        s = s[-max_len:]
        if len(s):
            out[n, max_len - len(s) :] = s + 1
    return out


class _Encoder(torch.nn.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.items = torch.nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
        self.positions = torch.nn.Embedding(cfg.max_len, cfg.dim)
        torch.nn.init.normal_(self.items.weight, std=0.05)
        torch.nn.init.normal_(self.positions.weight, std=0.05)
        layer = torch.nn.TransformerEncoderLayer(
            cfg.dim, cfg.heads, cfg.dim * 2, cfg.dropout, batch_first=True, norm_first=True
        )
        self.blocks = torch.nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(cfg.dim)
        self.drop = torch.nn.Dropout(cfg.dropout)
        self.register_buffer(
            "causal", torch.triu(torch.ones(cfg.max_len, cfg.max_len, dtype=torch.bool), 1)
        )

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(batch, L) padded item ids + 1 -> (batch, L, dim) states."""
        length = seq.shape[1]
        x = self.items(seq) * (self.items.embedding_dim**0.5)
        x = self.drop(x + self.positions.weight[-length:][None])
        # causal, padding never attended to; every position sees itself, so that no row
        # is fully masked (a fully masked row is NaN)
        blocked = self.causal[:length, :length][None] | (seq == 0)[:, None, :]
        blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=seq.device)[None]
        heads = self.blocks.layers[0].self_attn.num_heads
        h = self.blocks(x, mask=blocked.repeat_interleave(heads, dim=0))
        return self.norm(h)


class SASRec:
    """Embedding model interface: user_factors from the encoder, item_factors its items."""

    name = "sasrec"

    def __init__(self, config: SASRecConfig | None = None) -> None:
        self.config = config or SASRecConfig()
        self.user_factors = np.zeros((0, self.config.dim), np.float32)
        self.item_factors = np.zeros((0, self.config.dim), np.float32)
        self.encoder: _Encoder | None = None
        self.device = torch.device("cpu")

    def fit(self, data: Interactions, validate: Validator | None = None) -> FitReport:
        """Train; data-parallel over the workers when the engine is Dask (compute.ranks)."""
        return fit_model(self, data, validate)

    def _train(self, ranks: Ranks, data: Interactions, validate: Validator | None) -> FitReport:
        """The training loop as one rank: each rank encodes its share of a batch's
        sequences against the batch's shared negatives; the gradients are averaged."""
        cfg = self.config
        torch.set_num_threads(ranks.torch_threads(cfg.threads))
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.device = resolve_device(cfg.device)
        start = time.perf_counter()
        sequences = ordered_likes(data)
        # inputs: likes up to the last but one; targets: the like after each
        train = [s for s in sequences if len(s) >= 2]
        inputs = torch.from_numpy(padded([s[:-1] for s in train], cfg.max_len))
        targets = torch.from_numpy(padded([s[1:] for s in train], cfg.max_len))
        counts = np.bincount(data.positives.tocoo().col, minlength=data.n_items) + 1.0
        q = counts**cfg.pop_power
        q = q / q.sum()
        log_q = torch.from_numpy(np.log(np.r_[1.0, q]).astype(np.float32)).to(self.device)
        self.encoder = _Encoder(data.n_items, cfg).to(self.device)
        net = ranks.wrap(self.encoder)
        opt = torch.optim.AdamW(self.encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        report = FitReport()
        early = BestOnValid(validate, cfg.eval_every, cfg.epochs, cfg.patience, ranks)
        batches = max(1, len(train) // cfg.batch_size)
        with bar("sasrec", cfg.epochs * batches, enabled=ranks.main) as advance:
            for epoch in range(1, cfg.epochs + 1):
                self.encoder.train()
                total, steps = 0.0, 0
                for b in np.array_split(
                    rng.permutation(len(train)), max(1, len(train) // cfg.batch_size)
                ):
                    neg = torch.from_numpy(rng.choice(data.n_items, cfg.negatives, p=q) + 1).to(
                        self.device
                    )
                    positions = int((targets[b] > 0).sum())  # the whole batch's
                    b = ranks.part(b)
                    seq = inputs[b].to(self.device)
                    tgt = targets[b].to(self.device)
                    h = net(seq)[tgt > 0]  # (positions, dim)
                    t = tgt[tgt > 0]
                    emb = self.encoder.items
                    pos_logit = (h * emb(t)).sum(-1, keepdim=True) - log_q[t][:, None]
                    neg_logit = h @ emb(neg).T - log_q[neg][None, :]
                    neg_logit = neg_logit.masked_fill(neg[None, :] == t[:, None], -torch.inf)
                    logits = torch.cat([pos_logit, neg_logit], dim=1)
                    loss = F.cross_entropy(
                        logits, torch.zeros(len(t), dtype=torch.long, device=self.device)
                    )
                    if not len(t):  # no positions on this rank: it adds no gradient
                        loss = 0.0 * logits.sum()
                    opt.zero_grad()
                    (loss * ranks.share(len(t), positions)).backward()
                    opt.step()
                    total += loss.item()
                    steps += 1
                    advance()
                row: dict[str, float] = {"epoch": epoch, "loss": total / max(steps, 1)}
                stop = early.check(epoch, row, lambda: self._vectors(sequences))
                row["seconds"] = time.perf_counter() - start
                report.history.append(row)
                report.epochs = epoch
                if stop:
                    break
        self.user_factors, self.item_factors = early.vectors or self._vectors(sequences)
        report.seconds = time.perf_counter() - start
        return report

    @torch.no_grad()
    def encode(self, sequences: list[np.ndarray]) -> np.ndarray:
        """User vectors from like sequences (item indices, oldest first): the encoder's
        state at the newest like; an empty sequence gives a zero vector."""
        if self.encoder is None:
            raise RuntimeError("fit first")
        self.encoder.eval()
        out = np.zeros((len(sequences), self.config.dim), np.float32)
        for lo in range(0, len(sequences), 1024):
            part = sequences[lo : lo + 1024]
            seq = torch.from_numpy(padded(part, self.config.max_len)).to(self.device)
            h = self.encoder(seq)[:, -1].float().cpu().numpy()
            empty = np.array([len(s) == 0 for s in part])
            h[empty] = 0.0
            out[lo : lo + len(part)] = h
        return out

    @torch.no_grad()
    def _vectors(self, sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        users = self.encode(sequences)
        items = self.encoder.items.weight[1:].float().cpu().numpy().copy()
        return users, items
