"""Choose a retrieval model's options on training data alone, within a time budget.

Why: options picked per benchmark folder name (the old presets) say nothing about a new
dataset; options picked on the data itself do, provided the choice never reads test.

The slice: the latest `share` of each user's likes (time order by `Interactions.recency`,
users with at least 5 likes) is held out, or, where likes have no order, a seeded random
`share` of them; a caller that has a validation split passes it as `valid` instead
(protocol B). Each trial fits the model on the rest and scores NDCG@20 on the held-out
likes, the fitted likes excluded from the ranking.

The plan is a coordinate search, coarse then fine: the defaults are scored first (always,
whatever the budget); then each knob in turn sweeps its coarse grid with the others held
at the best so far, and a move is kept only when it gains at least MIN_GAIN; then each numeric
knob tries the points halfway to its grid neighbours of the chosen value (one grid step
outward at an edge of the grid). The two sweeps repeat from the new best until a round
changes nothing or the budget is spent. A trial starts only when the seconds used plus
its estimate (the slowest trial so far per unit of the space's cost, e.g. epochs x dim)
fit in the budget, so a budget smaller than one fit runs the defaults alone. The spectral
model's trials share its SVD where only the filter changes (power, sharpen, priors,
recency, the ideal term's weight), so most of its trials cost a projection and a scoring;
the estimate keeps two rates, one for trials that reuse what an earlier fit computed and
one for trials that compute it afresh (a reuse is estimated at the fresh rate until one
has been measured). Each trial scores at most MAX_SCORED_USERS users of the slice, a
seeded sample drawn once (every trial the same users).

The default budget scales with the data (`scaled_budget`): a fixed number of CPU seconds
buys a dozen trials on a small dataset and only the defaults on a large one (on Gowalla
the default trial alone took 100 of 120 CPU s, so recency weighting was never tried).
With `scale=True` (the default budget of `shortlist train` and of the bench) the budget is
the larger of the one given and BUDGET_TRIALS times the default trial's CPU seconds, the
latter capped at BUDGET_CAP; a budget given explicitly is kept as is.

The budget counts this process's CPU seconds (all its threads), not wall seconds: on a host
shared with other work a wall-clock budget ran fewer trials the busier the host was (on a
2-core host at load average 27 LastFM's 120 s ran the defaults alone), so the options a
dataset got depended on its neighbours. CPU seconds measure the search's own work: the same
data gets the same trials on a busy host and an idle one, only later.

Determinism: the plan and the slice depend only on the data, the space and the seed; the
budget decides only how far along the plan the search gets (a budget the whole plan fits
in gives the same result on every run; at the budget's edge a trial's CPU seconds may vary
a little between runs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from shortlist.compute.ranks import in_this_process
from shortlist.data.interactions import Interactions
from shortlist.data.splits import latest_share_mask, select_likes
from shortlist.models import registry
from shortlist.models.progress import bar
from shortlist.models.topk import top_k

K = 20
# CPU seconds `shortlist train` and the bench spend choosing a model's options when none
# are given: one budget for every dataset (the search is the same code whatever the data).
DEFAULT_BUDGET = 120.0
# The scaled budget: this many default trials' CPU seconds (a trial that reuses the SVD
# costs a fraction of one, so this buys a first sweep of the cheap knobs, recency
# included, and a few fresh SVDs), never more than BUDGET_CAP CPU seconds.
BUDGET_TRIALS = 8.0
BUDGET_CAP = 1200.0
# Users of the slice a trial scores (a seeded sample above this): scoring every user of a
# large dataset costs as much as the SVD, and a fixed sample ranks options consistently.
MAX_SCORED_USERS = 5_000
# A move must beat the best so far by this much NDCG@20: smaller gains are noise of the
# slice, and keeping the earlier point (the defaults first) makes ties deterministic.
MIN_GAIN = 1e-4


@dataclass(frozen=True)
class Knob:
    """One option searched: its coarse grid, how to step between points, and its bounds."""

    name: str
    values: tuple[float, ...]
    scale: str = "lin"  # "lin", "log" (halfway = geometric mean) or "int" (rounded)
    lo: float = 0.0
    hi: float = math.inf
    needs_order: bool = False  # only searched where likes are ordered (recency weighting)


# The spectral grids bracket the hand-set presets (LastFM: power 1, item_exp .35, sharpen
# .5, rank 768; Gowalla: power 1, item_exp .4, pop_exp .2, recency 10, recency_power 16)
# and the defaults, ordered by how much the knob moved NDCG in those searches.
SPACES: dict[str, tuple[Knob, ...]] = {
    "spectral": (
        Knob("power", (1.0, 2.0, 3.0), lo=0.25),
        Knob("item_exp", (0.3, 0.4, 0.5), hi=1.0),
        Knob("sharpen", (0.0, 0.25, 0.5), hi=0.9),
        Knob("rank", (256, 512, 768, 1024), scale="int", lo=16),
        Knob("pop_exp", (0.0, 0.1, 0.2), lo=-0.5, hi=1.0),
        Knob("recency", (0.0, 3.0, 10.0), needs_order=True),
        Knob("recency_power", (4.0, 8.0, 16.0), lo=1.0, needs_order=True),
        Knob("ideal_weight", (0.0, 0.3, 0.6)),
        Knob("user_exp", (0.3, 0.5), hi=1.0),
    ),
    "mf-bpr": (
        Knob("epochs", (15, 30, 60), scale="int", lo=5),
        Knob("dim", (32, 64, 128), scale="int", lo=8),
        Knob("l2", (1e-5, 1e-4, 1e-3), scale="log", lo=1e-7),
        Knob("lr", (0.01, 0.02, 0.05), scale="log", lo=1e-3, hi=0.2),
    ),
}


def cost(model: str, options: dict[str, Any]) -> float:
    """A trial's relative cost, to scale the slowest trial so far into an estimate."""
    if model == "mf-bpr":
        return float(options.get("epochs", 30)) * (16 + float(options.get("dim", 32)))
    if model == "spectral":
        return float(max(options.get("rank", 1024), options.get("ideal_rank", 256), 256))
    return 1.0


@dataclass
class Trial:
    options: dict[str, Any]  # the searched knobs only
    ndcg: float
    seconds: float


@dataclass
class TuningResult:
    """The chosen options (base plus the searched knobs) and what was tried to get there."""

    options: dict[str, Any]
    budget_s: float
    slice: str
    held_out_likes: int
    trials: list[Trial] = field(default_factory=list)
    stopped: str = "plan done"
    seconds: float = 0.0
    rule: str = "fixed"  # how budget_s was set (scaled: from the default trial's cost)
    scored_users: int = 0

    def report(self) -> dict[str, Any]:
        """The JSON-ready record a bundle manifest or a bench line keeps."""
        best = max(self.trials, key=lambda t: t.ndcg) if self.trials else None
        return {
            "budget_s": round(self.budget_s, 2),
            "budget_rule": self.rule,
            "clock": "process cpu seconds",
            "seconds": round(self.seconds, 2),
            "slice": self.slice,
            "held_out_likes": self.held_out_likes,
            "scored_users": self.scored_users,
            "stopped": self.stopped,
            "trials": [
                {"options": t.options, "ndcg@20": round(t.ndcg, 4), "seconds": round(t.seconds, 2)}
                for t in self.trials
            ],
            "default_ndcg@20": round(self.trials[0].ndcg, 4) if self.trials else None,
            "chosen_ndcg@20": round(best.ndcg, 4) if best else None,
            "chosen": self.options,
        }


def scaled_budget(
    budget_s: float, default_seconds: float, trials: float = BUDGET_TRIALS, cap: float = BUDGET_CAP
) -> float:
    """The budget once the default trial has taken `default_seconds`: `trials` times that,
    at most `cap`, and never less than `budget_s`."""
    return max(budget_s, min(cap, trials * default_seconds))


def scored_users(held: sp.csr_matrix, most: int = MAX_SCORED_USERS, seed: int = 0) -> sp.csr_matrix:
    """`held` with only a seeded sample of `most` of its users kept (all where fewer)."""
    held = held.tocsr()
    users = np.flatnonzero(np.diff(held.indptr) > 0)
    if len(users) <= most:
        return held
    keep = np.zeros(held.shape[0], np.float32)
    keep[np.random.default_rng(seed).choice(users, most, replace=False)] = 1.0
    return sp.csr_matrix(sp.diags(keep) @ held)


def untuned(options: dict[str, Any], budget_s: float, reason: str) -> dict[str, Any]:
    """The report of a run that did not search (no budget, options given, no space)."""
    return {"budget_s": budget_s, "stopped": reason, "trials": [], "chosen": options}


def holdout(
    data: Interactions, share: float = 0.2, seed: int = 0, min_likes: int = 5
) -> tuple[Interactions, sp.csr_matrix, str]:
    """(the likes fitted, the likes held out, a description of the slice)."""
    if data.recency() is not None:
        held = latest_share_mask(data, share, min_likes)
        how = f"latest {share:.0%} of each user's likes"
    else:
        pos = data.positives.tocsr()
        counts = np.diff(pos.indptr)
        enough = np.repeat(counts >= min_likes, counts)
        held = (np.random.default_rng(seed).random(pos.nnz) < share) & enough
        how = f"random {share:.0%} of each user's likes (seed {seed}; likes have no order)"
    return select_likes(data, ~held), select_likes(data, held).positives, how


def ndcg_at(
    user_factors: np.ndarray, item_factors: np.ndarray, fitted: sp.csr_matrix, held: sp.csr_matrix
) -> float:
    """Mean NDCG@20 over users with held-out likes, their fitted likes never ranked (the
    definition of evaluation.metrics, which training may not import)."""
    held = held.tocsr()
    held.sort_indices()
    users = np.flatnonzero(np.diff(held.indptr) > 0)
    if not len(users):
        return 0.0
    top = top_k(user_factors, item_factors, users, K, exclude=fitted)
    disc = 1.0 / np.log2(np.arange(2, K + 2))
    total = 0.0
    for row, u in enumerate(users):
        liked = held.indices[held.indptr[u] : held.indptr[u + 1]]
        dcg = float(disc[np.isin(top[row], liked)].sum())
        total += dcg / float(disc[: min(len(liked), K)].sum())
    return total / len(users)


def _fine(knob: Knob, chosen: float) -> list[float]:
    """Halfway to the chosen value's neighbours on the grid; one step outward at an edge."""
    grid = sorted({*knob.values, chosen})
    i = grid.index(chosen)
    if knob.scale == "log":
        half = lambda a, b: math.sqrt(a * b)  # noqa: E731
        outward = lambda a, b: a * a / b  # noqa: E731
    else:
        half = lambda a, b: (a + b) / 2  # noqa: E731
        outward = lambda a, b: 2 * a - b  # noqa: E731
    points = []
    if len(grid) > 1:
        points.append(half(chosen, grid[i - 1]) if i > 0 else outward(chosen, grid[1]))
        last = len(grid) - 1
        points.append(half(chosen, grid[i + 1]) if i < last else outward(chosen, grid[-2]))
    out = []
    for p in points:
        if knob.lo <= p <= knob.hi:
            out.append(int(round(p)) if knob.scale == "int" else round(p, 6))
    return [p for p in out if p != chosen]


def search_space(model: str, data: Interactions) -> tuple[Knob, ...]:
    """The model's knobs that can matter on this data (recency only where likes are ordered;
    ranks no larger than the like matrix's smaller side)."""
    ordered = data.recency() is not None
    side = min(data.n_users, data.n_items)
    knobs = []
    for knob in SPACES.get(model, ()):
        if knob.needs_order and not ordered:
            continue
        if knob.name == "rank":
            fitting = tuple(v for v in knob.values if v <= side) or (side,)
            knob = Knob(knob.name, fitting, knob.scale, knob.lo, min(knob.hi, side))
        knobs.append(knob)
    return tuple(knobs)


def tune(
    data: Interactions,
    model: str,
    budget_s: float,
    base: dict[str, Any] | None = None,
    seed: int = 0,
    valid: Interactions | None = None,
    space: Sequence[Knob] | None = None,
    share: float = 0.2,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.process_time,
    scale: bool = False,
) -> TuningResult:
    """The best options for `model` on `data` (training likes only) within `budget_s`.

    `base` holds the options not searched (and the searched knobs' starting point, else the
    model's defaults); `valid`, when given, is the held-out slice instead of `data`'s latest
    likes. With `scale`, the budget grows with the default trial's cost (`scaled_budget`).
    See the module docstring for the plan.
    """
    say = progress or (lambda _m: None)
    started = clock()
    knobs = tuple(space) if space is not None else search_space(model, data)
    base = dict(base or {})
    defaults = _defaults(model)
    if valid is not None:
        fit_data, held, how = data, valid.positives, "valid split"
    else:
        fit_data, held, how = holdout(data, share, seed)
    held = scored_users(held, seed=seed)
    result = TuningResult(dict(base), budget_s, how, int(held.nnz))
    result.scored_users = int((np.diff(held.indptr) > 0).sum())
    say(f"tuning {model}: {len(knobs)} knobs on the {how} ({held.nnz:,} likes), {budget_s:g}s")
    scored: dict[tuple, Trial] = {}
    # the slowest trial so far, in seconds per unit of cost: of those that computed their
    # fit afresh and of those that reused an earlier fit's work (the spectral SVD)
    rate = {"fresh": 0.0, "reused": 0.0}
    shared: dict = {}  # what a model may reuse between fits on fit_data (spectral: its SVD)

    def point(values: dict[str, Any]) -> dict[str, Any]:
        return {k.name: values.get(k.name, base.get(k.name, defaults.get(k.name))) for k in knobs}

    ticked = 0  # the budget's whole seconds the bar has shown as spent

    def run(values: dict[str, Any]) -> float | None:
        """The trial's NDCG@20, or None when it would not fit in what is left."""
        nonlocal ticked
        key = tuple(sorted(values.items()))
        if key in scored:
            return scored[key].ndcg
        options = {**base, **values}
        fitted = registry.build(model, options)
        if hasattr(fitted, "fit_cache"):
            fitted.fit_cache = shared  # same data every trial: the SVD is reused
        kind = "reused" if getattr(fitted, "reuses_cache", lambda: False)() else "fresh"
        per_cost = rate[kind] or rate["fresh"]
        if scored and clock() - started + per_cost * cost(model, options) > result.budget_s:
            result.stopped = "budget"
            return None
        t0 = clock()
        with in_this_process():  # a torch model's trial in the driver: the budget is its CPU
            fitted.fit(fit_data)
        ndcg = ndcg_at(fitted.user_factors, fitted.item_factors, fit_data.positives, held)
        seconds = clock() - t0
        rate[kind] = max(rate[kind], seconds / cost(model, options))
        if scale and not scored:
            result.budget_s = scaled_budget(budget_s, seconds)
            cap, trials = BUDGET_CAP, BUDGET_TRIALS
            result.rule = f"max({budget_s:g}, min({cap:g}, {trials:g} x default trial))"
            say(f"budget {result.budget_s:g}s (the default trial: {seconds:.1f}s)")
        scored[key] = trial = Trial(dict(values), ndcg, seconds)
        result.trials.append(trial)
        say(f"  {values}: ndcg@20 {ndcg:.4f} ({seconds:.1f}s)")
        spent = min(round(clock() - started), total)
        advance(spent - ticked)
        ticked = spent
        return ndcg

    # the bar counts the budget's seconds: its ETA is when the budget runs out at the latest
    # (a scaled budget at most its cap)
    total = max(1, round(max(budget_s, BUDGET_CAP) if scale else budget_s))
    with bar(f"tuning {model}", total) as advance:
        best = point({})
        best_ndcg = run(best) or 0.0
        changed = bool(knobs)
        while changed and result.stopped != "budget":
            changed = False
            for fine in (False, True):
                for knob in knobs:
                    grid = _fine(knob, best[knob.name]) if fine else knob.values
                    for value in grid:
                        candidate = {**best, knob.name: value}
                        ndcg = run(candidate)
                        if ndcg is None:
                            break
                        if ndcg >= best_ndcg + MIN_GAIN:
                            best, best_ndcg, changed = candidate, ndcg, True
                    if result.stopped == "budget":
                        break
                if result.stopped == "budget":
                    break
    result.options = {**base, **best}
    result.seconds = clock() - started
    say(f"tuned {model} in {result.seconds:.1f}s ({len(result.trials)} trials): {best}")
    return result


def _defaults(model: str) -> dict[str, Any]:
    """The option values a model is built with when none are given."""
    config = getattr(registry.build(model), "config", None)
    return dict(vars(config)) if config is not None else {}
