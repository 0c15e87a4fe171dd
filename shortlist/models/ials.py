"""Implicit-feedback ALS (Hu, Koren and Volinsky 2008) solved by conjugate gradient.

Every like has confidence 1 + alpha, every other (user, item) pair confidence 1 and target
0; both sides are ridge solves, `(Y^T Y + reg I + alpha Y_u^T Y_u) x_u = (1 + alpha) Y_u^T 1`,
done for all users (then all items) at once by a few conjugate-gradient steps warm-started
from the previous sweep (Takacs, Pilaszy and Tikk 2011), as `implicit`'s ALS does. The
whole solve is vectorised over users: per step, torch's sampled product gives the likes' dot
products and one sparse product applies them (the `implicit` package stays a bench-only
peer); each side's sweep runs per row block on the training engine (on Dask, where the
blocks live). The result is a dot-product model: FAISS serves it, and the ridge fold-in of
new likes is its own user step.

The regularization is not a constant that carries across datasets (on one dataset NDCG@20
moved by a fifth between neighbouring factor-2 values), so by default it is chosen on a
held-out random slice of the training likes (as EASE's l2): a climb over a factor-2 grid
from its middle, each step one fit, stopping where the next value is worse.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import scipy.linalg as sl
import scipy.sparse as sp
import torch

from shortlist import compute
from shortlist.data.interactions import Interactions
from shortlist.models.base import FitReport
from shortlist.models.item_item import HOLDOUT_SHARE, _holdout
from shortlist.models.progress import bar
from shortlist.models.sparse_tensor import csr_tensor
from shortlist.models.topk import scored_top_k

REG_GRID = tuple(6.25 * 2.0**k for k in range(7))  # 6.25 .. 400, climbed from the middle
# the served user step goes by Woodbury's identity up to this many likes per factor (its
# cost grows as likes x factors^2, the direct solve's as factors^3)
WOODBURY_SHARE = 0.5


@dataclass
class IALSConfig:
    factors: int = 256  # at most; a quarter of the like matrix's smaller side below that
    regularization: float = 0.0  # 0: chosen from REG_GRID on held-out training likes
    alpha: float = 10.0  # a like's confidence is 1 + alpha
    iterations: int = 8
    # sweeps of each held-out fit in the regularization search: it ranks the values, it
    # does not serve (half the sweeps chose the same value on LastFM and Gowalla)
    search_iterations: int = 4
    cg_steps: int = 3
    seed: int = 0


def climb(score: Callable[[int], float], n: int, start: int) -> int:
    """The grid index where `score` stops improving, walking from `start` upwards first,
    then downwards if the first step up did not improve (ties keep the earlier)."""
    best_i, best = start, score(start)
    for step in (1, -1):
        moved = False
        i = best_i + step
        while 0 <= i < n:
            s = score(i)
            if s <= best:
                break
            best_i, best, moved = i, s, True
            i += step
        if moved:
            break
    return best_i


def held_out_ndcg(
    user_factors: np.ndarray, item_factors: np.ndarray, keep: sp.csr_matrix, test: sp.csr_matrix
) -> float:
    """NDCG@20 of the dot products (the `keep` likes excluded) against `test`."""
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    top = scored_top_k(user_factors, item_factors, users, 20, keep)[0]
    disc = 1.0 / np.log2(np.arange(2, 22))
    total = 0.0
    for r, u in enumerate(users):
        rel = test.indices[test.indptr[u] : test.indptr[u + 1]]
        total += (np.isin(top[r], rel) * disc).sum() / disc[: min(20, len(rel))].sum()
    return total / max(len(users), 1)


def ridge_gram(y: np.ndarray, reg: float) -> np.ndarray:
    """Y^T Y + reg I: every row's shared part of the normal equations."""
    return y.T @ y + reg * np.eye(y.shape[1], dtype=y.dtype)


def liked_product(
    likes: torch.Tensor, v: torch.Tensor, y: torch.Tensor, alpha: float
) -> torch.Tensor:
    """alpha * sum over row u's likes i of y_i (y_i . v_u), for every row: the likes' dot
    products by torch's sampled product (computed at the likes only: no rows x items
    product, no likes x factors gathers), then one sparse product. `likes`: a CSR tensor
    (`csr_tensor`) of the like pattern, its values unused."""
    return torch.sparse.sampled_addmm(likes, v, y.T, beta=0.0, alpha=alpha) @ y


def cg_sweep(
    likes: sp.csr_matrix,
    x: np.ndarray,
    *,
    y: np.ndarray,
    gram: np.ndarray,
    alpha: float,
    steps: int,
) -> np.ndarray:
    """`steps` conjugate-gradient steps on every row's normal equations, from `x`.

    Row u solves (gram + alpha * sum_{i in likes_u} y_i y_i^T) x = (1 + alpha) * sum y_i,
    gram = `ridge_gram(y, reg)`. The per-like term is applied as `likes_u (alpha * (Y x_u))`
    over the likes only. Rows are independent, so a block of rows (`Engine.map_rows`) gets
    the rows the whole matrix would.
    """

    pattern = csr_tensor(likes, y.dtype)
    y_t, gram_t = torch.from_numpy(np.ascontiguousarray(y)), torch.from_numpy(gram)

    def apply(v: np.ndarray) -> np.ndarray:
        v_t = torch.from_numpy(np.ascontiguousarray(v))
        return (v_t @ gram_t + liked_product(pattern, v_t, y_t, alpha)).numpy()

    b = (1.0 + alpha) * (likes @ y)
    r = b - apply(x)
    p = r.copy()
    rs = np.einsum("nf,nf->n", r, r)
    for _ in range(steps):
        ap = apply(p)
        denom = np.einsum("nf,nf->n", p, ap)
        step = np.where(denom > 0, rs / np.maximum(denom, 1e-30), 0.0)[:, None].astype(x.dtype)
        x = x + step * p
        r = r - step * ap
        rs_new = np.einsum("nf,nf->n", r, r)
        beta = np.where(rs > 1e-20, rs_new / np.maximum(rs, 1e-30), 0.0)[:, None].astype(x.dtype)
        p = r + beta * p
        rs = rs_new
    return x


def exact_users(
    likes: sp.csr_matrix, *, y: np.ndarray, gram: np.ndarray, alpha: float
) -> np.ndarray:
    """Every user's exact ridge solve given the item factors (`gram` = `ridge_gram` of them
    in float64): serving's own user step (`MFSource.user_vector`) per user, so the lists
    offline and served are the same (a short history takes Woodbury's likes x likes solve
    there, not a factors x factors one)."""
    source = MFSource(y, gram, alpha)
    out = np.zeros((likes.shape[0], y.shape[1]), np.float32)
    for u in range(likes.shape[0]):
        history = likes.indices[likes.indptr[u] : likes.indptr[u + 1]]
        if len(history):
            out[u] = source.user_vector(history)
    return out


class IALS:
    """Weighted matrix factorisation of the like matrix (binary likes, dislikes unused)."""

    name = "ials"

    def __init__(self, config: IALSConfig | None = None) -> None:
        self.config = config or IALSConfig()
        self.user_factors = np.zeros((0, self.config.factors), np.float32)
        self.item_factors = np.zeros((0, self.config.factors), np.float32)

        self.reg_trials: dict[float, float] = {}

    def _solve(
        self, likes: sp.csr_matrix, factors: int, reg: float, iterations: int, exact: bool
    ) -> tuple[np.ndarray, ...]:
        """`iterations` sweeps of both sides, each over the engine's row blocks (users,
        then items); with `exact`, the users' final step is the exact solve."""
        cfg = self.config
        engine = compute.current()
        by_user = engine.split_rows(likes)
        by_item = engine.split_rows(likes.T.tocsr())
        rng = np.random.default_rng(cfg.seed)
        x = rng.normal(0, 0.01, (likes.shape[0], factors)).astype(np.float32)
        y = rng.normal(0, 0.01, (likes.shape[1], factors)).astype(np.float32)
        steps = {"alpha": cfg.alpha, "steps": cfg.cg_steps}
        for _ in range(iterations):
            x = engine.map_rows(cg_sweep, by_user, x, y=y, gram=ridge_gram(y, reg), **steps)
            y = engine.map_rows(cg_sweep, by_item, y, y=x, gram=ridge_gram(x, reg), **steps)
        if exact:
            gram = ridge_gram(y.astype(np.float64), reg)
            x = engine.map_rows(exact_users, by_user, y=y, gram=gram, alpha=cfg.alpha)
        return x, y

    def fit(self, data: Interactions) -> FitReport:
        cfg = self.config
        start = time.perf_counter()
        likes = data.positives.tocsr().astype(np.float32)
        likes.sum_duplicates()
        likes.data[:] = 1.0
        likes.eliminate_zeros()
        factors = max(2, min(cfg.factors, min(likes.shape) // 4))
        reg = cfg.regularization
        with bar("ials", 1 + (0 if reg > 0 else len(REG_GRID))) as advance:
            if reg <= 0:
                keep, test = _holdout(likes, HOLDOUT_SHARE, cfg.seed)

                def score(i: int) -> float:
                    if REG_GRID[i] not in self.reg_trials:
                        x, y = self._solve(
                            keep, factors, REG_GRID[i], cfg.search_iterations, exact=False
                        )
                        self.reg_trials[REG_GRID[i]] = held_out_ndcg(x, y, keep, test)
                        advance()
                    return self.reg_trials[REG_GRID[i]]

                reg = REG_GRID[climb(score, len(REG_GRID), len(REG_GRID) // 2)]
            x, y = self._solve(likes, factors, reg, cfg.iterations, exact=True)
            advance()
        # what ran, so that a refit (or the bench's print) repeats it without a search
        self.config = replace(cfg, factors=factors, regularization=reg)
        self.user_factors = np.ascontiguousarray(x, np.float32)
        self.item_factors = np.ascontiguousarray(y, np.float32)
        return FitReport(epochs=cfg.iterations, seconds=time.perf_counter() - start)


@dataclass
class MFSource:
    """What serving keeps of a fitted IALS to list a user's top items at request time: the
    item factors and the user step's fixed part, so the user's vector is the exact ridge
    solve over their current likes (training likes and live ones), never stale."""

    item_factors: np.ndarray  # items x f
    gram: np.ndarray  # f x f: Y^T Y + reg I
    alpha: float
    gram_inverse: np.ndarray = field(init=False, repr=False)  # computed at load

    def __post_init__(self) -> None:
        self.gram_inverse = np.linalg.inv(self.gram)

    @classmethod
    def of(cls, model: IALS) -> MFSource:
        gram = ridge_gram(model.item_factors.astype(np.float64), model.config.regularization)
        return cls(model.item_factors, gram, float(model.config.alpha))

    def user_vector(self, history: np.ndarray, conf: np.ndarray | None = None) -> np.ndarray:
        """The user step of the fit for one user with likes `history` (item indices). With
        `conf` (each like's multiplier, `recency_confidence`: a user's newest likes weigh
        more), the step a user with live likes is served with."""
        history = np.asarray(history, np.int64)
        y = self.item_factors[history].astype(np.float64)
        conf = np.ones(len(history)) if conf is None else conf
        weights = 1.0 + self.alpha * conf
        if self.alpha > 0 and 0 < len(history) <= WOODBURY_SHARE * y.shape[1]:
            # (G + Y^T C Y)^-1 b = P b - (Y P)^T (C^-1 + Y P Y^T)^-1 Y P b, P = G^-1: one
            # likes x likes solve instead of a factors x factors one (a short history)
            yp = y @ self.gram_inverse
            pb = yp.T @ weights
            inner = np.diag(1.0 / (self.alpha * conf)) + yp @ y.T
            z = sl.solve(inner, y @ pb, assume_a="pos", check_finite=False)
            return (pb - yp.T @ z).astype(np.float32)
        a = self.gram + self.alpha * ((y * conf[:, None]).T @ y)
        return sl.solve(a, weights @ y, assume_a="pos", check_finite=False).astype(np.float32)

    def top(
        self, history: np.ndarray, exclude: np.ndarray, n: int, conf: np.ndarray | None = None
    ) -> np.ndarray:
        """The user's best `n` items, `exclude` left out, ties in item order."""
        if not len(history):
            return np.zeros(0, np.int64)
        scores = self.item_factors @ self.user_vector(history, conf)
        scores[np.asarray(exclude, np.int64)] = -np.inf
        n = min(n, int(np.isfinite(scores).sum()))
        part = np.argpartition(-scores, n - 1)[:n] if n else np.zeros(0, np.int64)
        return part[np.lexsort((part, -scores[part]))].astype(np.int64)


class RecencyBoost(Protocol):
    """The short-term settings the user step reads (`shortlist.feedback.vectors.ShortTerm`)."""

    weight: float
    half_life: float
    window: int


def recency_confidence(
    history: np.ndarray, recent: np.ndarray | None, boost: RecencyBoost | None
) -> np.ndarray:
    """Each like's confidence multiplier in the user step (1: as in the fit). The user's
    `boost.window` newest likes (`recent`, newest first: live ones, then training's) gain
    extra confidence in proportion to 2^(-age / half_life), the extra summing to
    `boost.weight` times the number of likes: a few new likes are not diluted in a long
    history (decision 0030's short-term weighting, applied to this source's solve)."""
    conf = np.ones(len(history))
    if recent is None or boost is None or boost.weight <= 0 or not len(history):
        return conf
    recent = np.asarray(recent, np.int64)[: boost.window]
    where = np.searchsorted(np.sort(history), recent)
    order = np.argsort(history, kind="stable")
    where = np.minimum(where, len(history) - 1)
    found = np.sort(history)[where] == recent
    if not found.any():
        return conf
    w = 2.0 ** (-np.arange(len(recent)) / boost.half_life) * found
    np.add.at(conf, order[where[found]], boost.weight * len(history) * w[found] / w.sum())
    return conf
