"""Graph-filter model (GF-CF family) with an explicit low-rank dot-product factorisation.

With R~ = D_U^-a R D_I^-b and its truncated SVD R~ ~ U S V^T, a spectral filter scores
user u by `r_u V h(S) V^T` (h(s) = s^p; p = 2 is the GF-CF linear filter R~^T R~; an optional
BSPM-like sharpening factor 1 - beta (s/s_max)^2 damps the most popular directions), plus
GF-CF's ideal low-pass term `w * r_u D_I^-1/2 V_k V_k^T D_I^1/2`; an optional popularity prior
multiplies every item's score by d_i^c. All are dot products:

    user vector = [r_u V h(S),  w * r_u D_I^-1/2 V_k]    item vector = d_i^c [V,  D_I^1/2 V_k]

so FAISS serves it like any embedding model. A user's vector only needs their likes,
which also makes fold-in of new users exact. Fitting is one randomized SVD: no epochs.

Optional recency: where the data orders each user's likes (times, or line positions), the
user vector weights a like by 1 + recency * t^recency_power, t = its rank in the user's
history over its length (1 = newest). The filter itself is fit on the unweighted likes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from shortlist import compute
from shortlist.data.interactions import Interactions, rank_in_user
from shortlist.models.base import FitReport
from shortlist.models.progress import bar


@dataclass
class SpectralConfig:
    rank: int = 1024  # singular vectors in the filtered term
    power: float = 2.0  # h(s) = s ** power * (1 - sharpen * (s / s_max) ** 2)
    sharpen: float = 0.0  # BSPM-style sharpening: damps the lowest frequencies (0 = off)
    user_exp: float = 0.5  # a in D_U^-a
    item_exp: float = 0.5  # b in D_I^-b
    ideal_rank: int = 256  # k of the ideal low-pass term (0 = off)
    ideal_weight: float = 0.3  # w of the ideal low-pass term
    pop_exp: float = 0.0  # item vectors scaled by d_i^pop_exp: a popularity prior on scores
    recency: float = 0.0  # extra weight of a user's newest like in their vector (0 = off)
    recency_power: float = 8.0  # how fast that extra weight falls off towards older likes
    power_iters: int = 3
    seed: int = 0


def randomized_svd(
    matrix: sp.csr_matrix, rank: int, power_iters: int = 3, oversample: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Top singular values and right singular vectors (n_cols x rank) of a sparse matrix."""
    n_rows, n_cols = matrix.shape
    a = matrix.tocsr().astype(np.float32)
    if rank + oversample >= min(n_rows, n_cols) * 0.5:
        return exact_svd(a, rank)
    # The products with A and the QR of the users-sized side run on the current engine (in
    # this process, or block by block on Dask workers); the items-sized side and the small
    # SVD stay here.
    engine = compute.current()
    width = rank + oversample
    rows = engine.split_rows(a, min_rows=2 * width)  # blocks taller than wide for the QR
    gen = torch.Generator().manual_seed(seed)
    # phases: the range sketch, each power iteration, the small SVD
    # Each items-sized or users-sized matrix is dropped as soon as the next one exists: at
    # scale they are the fit's memory (items x width floats each).
    with bar("spectral svd", power_iters + 2) as advance:
        q = engine.qr(engine.dot(rows, torch.randn(n_cols, width, generator=gen).numpy()))
        advance()
        for _ in range(power_iters):
            z = torch.linalg.qr(torch.from_numpy(engine.tdot(rows, q)))[0].numpy()
            q = None
            q = engine.qr(engine.dot(rows, z))
            z = None
            advance()
        bt = engine.tdot(rows, q)  # (q^T A)^T, items x width
        q = None
        return right_singular(bt, rank)


def right_singular(
    bt: np.ndarray, rank: int, block_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The top `rank` singular values of b = bt^T (width x items, width small) and its right
    singular vectors (items x rank), from the eigendecomposition of the width x width Gram
    matrix b b^T in float64: no copy of b beyond the result, where LAPACK's SVD of b holds
    several items-sized copies (its input, V^T, its workspace). `block_rows`: items per
    float64 block (default: 128 MiB of them). `bt` may be sparse (`exact_svd`)."""
    gram = np.zeros((bt.shape[1], bt.shape[1]))
    step = block_rows or max(1, (1 << 24) // max(bt.shape[1], 1))
    n = bt.shape[0]
    for lo in range(0, n, step):
        block = bt[lo : lo + step].astype(np.float64, copy=False)  # sparse stays sparse
        product = block.T @ block
        gram += product.toarray() if sp.issparse(product) else product
    w, u = np.linalg.eigh(gram)
    order = np.argsort(-w)[:rank]
    s = np.sqrt(np.maximum(w[order], 0.0))
    keep = s > s[0] * 1e-6 if len(s) and s[0] > 0 else np.zeros(len(s), bool)
    s, u = s[keep], u[:, order[keep]]
    v = np.empty((n, len(s)), np.float32)
    for lo in range(0, n, step):  # v = b^T u / s, block by block
        v[lo : lo + step] = np.asarray(bt[lo : lo + step].astype(np.float64, copy=False) @ u) / s
    return s.astype(np.float32), v


def exact_svd(matrix: sp.csr_matrix, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top singular values and right vectors through the smaller Gram matrix.

    An eigendecomposition of the (min side)^2 Gram matrix in float64: seconds where a dense
    SVD of the whole matrix (thousands of users x tens of thousands of items) takes minutes.
    """
    a = matrix.tocsr().astype(np.float64)
    n_rows, n_cols = a.shape
    if n_cols > n_rows:  # the rows x rows Gram, then v = A^T u / s (`right_singular`)
        return right_singular(a.T.tocsr(), rank)
    w, v = np.linalg.eigh((a.T @ a).toarray())
    order = np.argsort(-w)
    w = np.maximum(w[order], 0.0)
    keep = min(rank, int((w > w[0] * 1e-12).sum()) if len(w) and w[0] > 0 else 0)
    return np.sqrt(w[:keep]).astype(np.float32), np.ascontiguousarray(
        v[:, order[:keep]], np.float32
    )


class SpectralCF:
    """GF-CF-style graph filter whose scores factor into user and item vectors."""

    name = "spectral"

    def __init__(self, config: SpectralConfig | None = None) -> None:
        self.config = config or SpectralConfig()
        self.user_factors = np.zeros((0, 0), np.float32)
        self.item_factors = np.zeros((0, 0), np.float32)
        self._item_in: np.ndarray | None = None  # maps a like-vector to a user vector
        self.user_weights: sp.csr_matrix | None = None  # users x items, see fit
        self._ordered = False  # whether the fit weighted likes by recency
        # Singular values and vectors by (user_exp, item_exp, rank, power_iters, seed): a
        # caller fitting several settings on the same data (the tuner) shares one dict so
        # that settings differing only in the filter reuse the SVD; None: no sharing.
        self.fit_cache: dict | None = None

    def _svd_key(self) -> tuple:
        cfg = self.config
        rank = max(cfg.rank, cfg.ideal_rank)
        return (cfg.user_exp, cfg.item_exp, rank, cfg.power_iters, cfg.seed)

    def reuses_cache(self) -> bool:
        """Whether `fit` will find its SVD in `fit_cache` (the tuner's cost estimate)."""
        return self.fit_cache is not None and self._svd_key() in self.fit_cache

    def fit(self, data: Interactions) -> FitReport:
        cfg = self.config
        start = time.perf_counter()
        r = data.positives.tocsr().astype(np.float32)
        du = np.maximum(np.asarray(r.sum(axis=1)).ravel(), 1.0)
        di = np.maximum(np.asarray(r.sum(axis=0)).ravel(), 1.0)
        rank = max(cfg.rank, cfg.ideal_rank)
        key = self._svd_key()
        cache = self.fit_cache if self.fit_cache is not None else {}
        if key not in cache:
            norm = sp.diags(du**-cfg.user_exp) @ r @ sp.diags(di**-cfg.item_exp)
            cache[key] = randomized_svd(norm.tocsr(), rank, cfg.power_iters, seed=cfg.seed)
        s, v = cache[key]
        rank = min(cfg.rank, len(s))
        k = min(cfg.ideal_rank, len(s)) if cfg.ideal_weight else 0
        h = (s[:rank] ** cfg.power * (1 - cfg.sharpen * (s[:rank] / s[0]) ** 2)).astype(np.float32)
        # both sides filled in place: items x (rank + k) floats each, no stacked temporaries
        shape = (v.shape[0], rank + k)
        self._item_in = np.empty(shape, np.float32)
        self.item_factors = np.empty(shape, np.float32)
        prior = (di[:, None] ** cfg.pop_exp).astype(np.float32)
        np.multiply(v[:, :rank], h, out=self._item_in[:, :rank])
        np.multiply(prior, v[:, :rank], out=self.item_factors[:, :rank])
        if k:
            ideal_in = (cfg.ideal_weight * di[:, None] ** -0.5).astype(np.float32)
            np.multiply(ideal_in, v[:, :k], out=self._item_in[:, rank:])
            np.multiply(prior * di[:, None] ** 0.5, v[:, :k], out=self.item_factors[:, rank:])
        del s, v  # the cache keeps them when the caller shares one (the tuner)
        order = data.recency()
        self._ordered = bool(cfg.recency) and order is not None
        weighted = r.copy()
        if self._ordered:
            weighted.data = recency_weights(r, order, cfg.recency, cfg.recency_power)
        self.user_factors = np.asarray(weighted @ self._item_in, dtype=np.float32)
        # each like's weight against `item_encoder` (user_factors == user_weights @
        # item_encoder): what a bundle stores instead of the user vectors
        if self._ordered:
            weighted.data /= np.float32(1.0 + cfg.recency)
        self.user_weights = weighted
        return FitReport(epochs=1, seconds=time.perf_counter() - start)

    @property
    def item_encoder(self) -> np.ndarray | None:
        """Items x dim: a user's vector is the sum of the rows of the items they liked.

        With recency, the rows carry the weight of a newest like, the weight a like arriving
        as feedback has: older likes keep the weight they had (a refit would lower it).
        """
        if self._item_in is None or not self._ordered:
            return self._item_in
        return (1.0 + self.config.recency) * self._item_in

    def fold_in(self, liked_items: np.ndarray) -> np.ndarray:
        """A user vector from liked item indices (oldest first), identical to what training
        would give."""
        if self._item_in is None:
            raise RuntimeError("fit first")
        liked = np.asarray(liked_items, np.int64)
        rows = self._item_in[liked]
        if not self._ordered:
            return rows.sum(axis=0)
        t = np.arange(1, len(liked) + 1) / max(len(liked), 1)
        w = 1.0 + self.config.recency * t**self.config.recency_power
        return (w[:, None] * rows).sum(axis=0).astype(np.float32)


def recency_weights(
    likes: sp.csr_matrix, order: np.ndarray, recency: float, power: float
) -> np.ndarray:
    """Per like (aligned with `likes.data`): 1 + recency * (rank / n)^power, where rank
    counts the user's n likes oldest (1) to newest (n) by `order`, ties by item index."""
    counts = np.diff(likes.indptr)
    t = rank_in_user(likes, order) / np.repeat(counts, counts)
    return (1.0 + recency * t**power).astype(np.float32)
