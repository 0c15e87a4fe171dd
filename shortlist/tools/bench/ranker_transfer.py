"""`shortlist bench ranker-transfer`: does what the ranker learns on valid labels carry to test?

A diagnosis, never a result to report: under protocol B (one retrieval model fit on train,
one set of feature code), it fits LambdaRank on the valid-label lists as the pipeline does,
with all features and with feature groups alone, and gives each one's NDCG@20 lift over
retrieval order on held-out valid lists and on test lists. Then it fits the same ranker on
half of the test users' lists and scores the other half: that bounds what the features can
give on test at all. A ranker that gains on valid, loses on test, and gains nothing in the
test-half fit points to valid and test labels that differ, not to a weak fit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from shortlist.evaluation.protocols import union_likes
from shortlist.evaluation.two_stage import held_out_lift, list_metrics
from shortlist.models import registry
from shortlist.models.progress import track
from shortlist.ranking.lambdarank import RankerConfig, score
from shortlist.training.pipeline import (
    TrainConfig,
    data_feature_names,
    fit_ranker,
    labelled_users,
    ranking_lists,
)

# Feature groups fit alone (each beside retrieval rank and score ratio).
GROUPS = {
    "co-occurrence": ("cooc_sum_likes", "cooc_max_likes", "cooc_second_likes"),
    "popularity": ("item_log_popularity", "item_log_recent_popularity"),
    "embedding similarity": ("sim_recent_likes", "max_sim_dislikes"),
}
RETRIEVAL = ("retrieval_rank", "retrieval_score_ratio")


def _columns(lists: dict, keep: list[int]) -> dict:
    return {u: (c, x[:, keep], y) for u, (c, x, y) in lists.items()}


def _lift(ranker, lists, labels, users, rank_col: int) -> tuple[float, float]:
    base = list_metrics(lists, lambda x: -x[:, rank_col], labels, users)["ndcg@20"]
    ranked = list_metrics(lists, lambda x: score(ranker, x), labels, users)["ndcg@20"]
    return base, ranked


def run(
    split,
    model: str,
    options: dict[str, Any],
    test_users: int = 8000,
    seed: int = 0,
    ranker_cfg: RankerConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    if split.valid is None:
        raise ValueError("the diagnosis needs a valid split")
    cfg = TrainConfig(model=model, seed=seed)
    ranker_cfg = ranker_cfg or RankerConfig(seed=seed)
    say(f"{model} on train ({split.train.nnz:,} likes)")
    fitted = registry.build(model, options)
    fitted.fit(split.train)
    say("valid-label lists")
    valid = ranking_lists(
        split.train,
        fitted.user_factors,
        fitted.item_factors,
        split.valid.positives,
        split.valid.timestamps,
        cfg,
        users=labelled_users(split.valid.positives, cfg.ranker_max_lists, seed),
        label_context=split.valid.context,
    )
    test = split.test.positives.tocsr()
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    rng = np.random.default_rng(seed)
    users = np.sort(rng.permutation(users)[:test_users])
    say(f"test lists of {len(users):,} users")
    tests = ranking_lists(
        split.train,
        fitted.user_factors,
        fitted.item_factors,
        test,
        split.test.timestamps,
        cfg,
        exclude=union_likes(split.train, split.valid),
        users=users,
        keep_empty=True,
        label_context=split.test.context,
    )
    names = data_feature_names(split.train)
    subsets = {"all features": names}
    for group, members in GROUPS.items():
        subsets[f"{group} only"] = [n for n in names if n in RETRIEVAL or n in members]
    rows = []
    for label, subset in track(subsets.items(), "feature groups", len(subsets)):
        keep = [names.index(n) for n in subset]
        fit_lists, test_lists = _columns(valid, keep), _columns(tests, keep)
        fit = fit_ranker(fit_lists, subset, cfg, ranker_cfg, say)
        held_out = held_out_lift(fit_lists, fit, split.valid.positives)
        v0, v1 = held_out["retrieval_ndcg@20"], held_out["ranker_ndcg@20"]
        t0, t1 = _lift(fit.booster, test_lists, test, users, subset.index("retrieval_rank"))
        rows.append(_row(label, "valid labels", v0, v1, t0, t1, fit.rounds))
    # Fit on half of the test users' lists, score the other half (diagnosis only).
    order = rng.permutation(users)
    fit_half, other_half = order[: len(order) // 2], np.sort(order[len(order) // 2 :])
    half = {int(u): tests[int(u)] for u in fit_half if tests[int(u)][2].sum() > 0}
    fit = fit_ranker(half, names, cfg, ranker_cfg, say)
    t0, t1 = _lift(fit.booster, tests, test, other_half, names.index("retrieval_rank"))
    rows.append(_row("all features", "half of the test users", None, None, t0, t1, fit.rounds))
    return {
        "dataset": split.name,
        "model": model,
        "test_users": int(len(users)),
        "valid_lists": int(len(valid)),
        "rows": rows,
    }


def _row(features, fit_on, v0, v1, t0, t1, rounds) -> dict[str, Any]:
    def lift(a, b):
        return None if a is None else round(b / a - 1, 4)

    return {
        "features": features,
        "fit_on": fit_on,
        "valid_ndcg@20": None if v0 is None else [round(v0, 4), round(v1, 4)],
        "valid_lift": lift(v0, v1),
        "test_ndcg@20": [round(t0, 4), round(t1, 4)],
        "test_lift": lift(t0, t1),
        "rounds": int(rounds),
    }
