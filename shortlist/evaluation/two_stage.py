"""The served two-stage pipeline evaluated offline: retrieval shortlist, then the ranker.

By default (`ranker_labels="served"`) the ranker's labels are held out exactly as
`shortlist train` holds them out of the data the final model is fit on (train+valid for
protocol A, train for B): the latest share of each user's likes where likes are ordered,
else a seeded random share; stage 1 fits the retrieval model on the rest, and its top-N
shortlists with those labels train LambdaRank (early stopping on a separate slice of users).
"latest" and "random" force one rule; "valid" takes the valid split as labels (stage 1 on
train).
Test is touched only to report. Protocol A then refits retrieval on train+valid and ranks
its shortlists; protocol B keeps the train-only model (the test ranking excludes train likes
only, LightGCN++'s rule; valid likes too under "B-valid-excluded"). Retrieval-only and
two-stage figures come from the same users and the same shortlists: the retrieval order of a
top-N shortlist is the retrieval model's own top-20.
With `TrainConfig.deep_ranker` the two-stage order is the served blend of LambdaRank and
DeepFM; each alone is reported beside it (`lambdarank_*`, `deepfm_*`). As served, the
rankers' score is blended with the retrieval order at the weight chosen on the ranker's
out-of-fold lists (`ranking.scorer.choose_order_weight`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np

from shortlist.data.loaders import SplitData
from shortlist.data.splits import select_likes
from shortlist.evaluation.metrics import hit_matrix, per_user_metrics
from shortlist.evaluation.protocols import TEST_EXCLUDES, excluded_at_test, normalize_protocol
from shortlist.models import registry
from shortlist.models.progress import track
from shortlist.ranking.features import RANK_COLUMN
from shortlist.ranking.lambdarank import RankerConfig, score
from shortlist.ranking.scorer import blend, lists_with_order, with_order
from shortlist.training.pipeline import (
    FittedRanker,
    TrainConfig,
    data_feature_names,
    fit_ranker,
    fused_candidates,
    ials_of,
    item_item_table,
    label_kind,
    label_mask,
    labelled_users,
    ranking_lists,
)
from shortlist.training.sources import fit_sources, fused_lists, ials_refit, source_lists

Progress = Callable[[str], None]
KS = (10, 20)
# Ranker labels held out of the training likes by `shortlist train`'s rule: "served" as it
# does (latest where likes are ordered, else random), or "latest" / "random" forced.
LABEL_RULES = ("served", "latest", "random")


@dataclass
class TwoStageResult:
    dataset: str
    protocol: str
    model: str
    retrieval: dict[str, float]
    two_stage: dict[str, float]
    timings: dict[str, float]
    ranker_valid: dict[str, float]
    importance: dict[str, float] = field(default_factory=dict)
    users: int = 0
    # test metrics @20 of LambdaRank and DeepFM each alone, when two-stage is their blend
    rankers_alone: dict[str, float] = field(default_factory=dict)
    # the ablation: test Recall/NDCG@20 of each candidate source alone and of their fusion
    # (the retrieval order of the fused shortlist), and the fusion chosen on the labels
    ablation: dict[str, dict[str, float]] = field(default_factory=dict)
    fusion: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "model": self.model,
            "pipeline": "two-stage",
            "test_excludes": TEST_EXCLUDES[self.protocol],
        }
        out.update({k: round(v, 6) for k, v in self.two_stage.items()})
        out.update({f"retrieval_{k}": round(v, 6) for k, v in self.retrieval.items()})
        base = self.retrieval["ndcg@20"]
        out["ndcg@20_lift"] = round(self.two_stage["ndcg@20"] / base - 1, 4) if base else 0.0
        out["users"] = self.users
        out.update({f"{k}_seconds": round(v, 2) for k, v in self.timings.items()})
        out.update({f"ranker_valid_{k}": round(v, 4) for k, v in self.ranker_valid.items()})
        out.update({k: round(v, 6) for k, v in self.rankers_alone.items()})
        if self.ablation:
            out["ablation"] = {
                name: {k: round(v, 6) for k, v in m.items()} for name, m in self.ablation.items()
            }
            out["ablation"]["two-stage"] = {
                k: round(self.two_stage[k], 6) for k in ("recall@20", "ndcg@20")
            }
        if self.fusion:
            out["fusion"] = self.fusion
        return out


def list_metrics(lists, order_by, test, users: np.ndarray) -> dict[str, float]:
    """Metrics of each user's shortlist ordered by `order_by(features)`, against all test likes."""
    k_max = max(KS)
    top = np.full((len(users), k_max), -1, np.int64)
    for r, u in track(enumerate(users), "ranked lists", len(users), every=1024):
        cand, x, _ = lists[int(u)]
        ranked = cand[np.argsort(-order_by(x), kind="stable")][:k_max]
        top[r, : len(ranked)] = ranked
    n_rel = np.diff(test.indptr)[users]
    per_user = per_user_metrics(hit_matrix(top, test, users), n_rel, KS)
    return {name: float(v.mean()) for name, v in per_user.items()}


def scored_metrics(lists, scores: dict[int, np.ndarray], test, users) -> dict[str, float]:
    """`list_metrics` of shortlists already scored (user -> one score per candidate)."""
    scored = {u: (lists[u][0], v[:, None], None) for u, v in scores.items()}
    return list_metrics(scored, lambda v: v[:, 0], test, users)


def held_out_lift(lists, fit: FittedRanker, labels) -> dict[str, float]:
    """NDCG@20 of the ranker's lists, against all of `labels`, in retrieval order and as
    scored out of fold (each list by the fold model that did not see it)."""
    users = np.sort(fit.users)

    def ordered_by(rows: np.ndarray) -> dict[str, float]:
        return scored_metrics(lists, fit.by_user(rows), labels, users)["ndcg@20"]

    return {
        "retrieval_ndcg@20": ordered_by(-fit.retrieval_rank),
        "ranker_ndcg@20": ordered_by(fit.held_out_scores),
        "order_weight": fit.order_weight,
        "ranker_with_order_ndcg@20": ordered_by(
            lists_with_order(fit.held_out_scores, fit.retrieval_rank, fit.sizes, fit.order_weight)
        ),
    }


def _fit(name: str, options: dict[str, Any], data) -> Any:
    model = registry.build(name, options)
    model.fit(data)
    return model


def run_two_stage(
    split: SplitData,
    protocol: str,
    model_name: str,
    options: dict[str, Any] | None = None,
    cfg: TrainConfig | None = None,
    ranker_cfg: RankerConfig | None = None,
    progress: Progress | None = None,
    ranker_labels: str = "served",
) -> TwoStageResult:
    say = progress or (lambda _m: None)
    cfg = cfg or TrainConfig(model=model_name)
    options = dict(options or {})
    protocol = normalize_protocol(protocol)
    if split.valid is None:
        raise ValueError("the two-stage pipeline needs a valid split for the ranker's labels")
    if ranker_labels == "valid":
        stage1, labels = split.train, split.valid
    elif ranker_labels in LABEL_RULES:
        # `shortlist train`'s own hold-out (train_bundle): the same rule, share and seed
        data = split.train_valid() if protocol == "A" else split.train
        kind = label_kind(data, "auto" if ranker_labels == "served" else ranker_labels)
        held = label_mask(data, kind, cfg.label_share, np.random.default_rng(cfg.seed))
        stage1, labels = select_likes(data, ~held), select_likes(data, held)
        say(f"ranker labels: {held.sum():,} likes held out of the training likes ({kind})")
    else:
        rules = ", ".join(("valid", *LABEL_RULES))
        raise ValueError(f"ranker labels must be one of {rules}, got {ranker_labels!r}")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    say(f"stage 1: {model_name} on {stage1.nnz:,} likes")
    fit_model = _fit(model_name, options, stage1)
    timings["retrieval_fit"] = time.perf_counter() - clock
    clock = time.perf_counter()
    label_users = labelled_users(labels.positives, cfg.ranker_max_lists, cfg.seed)
    sources, fusion, fusion_report, candidates = fused_candidates(
        stage1, fit_model, labels.positives, label_users, cfg, say
    )
    timings["sources_fit"] = time.perf_counter() - clock
    clock = time.perf_counter()
    say(f"stage 1: top-{cfg.candidates} shortlists with {ranker_labels} labels, features")
    lists = ranking_lists(
        stage1,
        fit_model.user_factors,
        fit_model.item_factors,
        labels.positives,
        labels.timestamps,
        cfg,
        users=label_users,
        label_context=labels.context,
        candidates=candidates,
        item_item=item_item_table(sources),
    )
    names = data_feature_names(stage1)
    timings["ranker_features"] = time.perf_counter() - clock
    clock = time.perf_counter()
    fit = fit_ranker(lists, names, cfg, ranker_cfg or RankerConfig(seed=cfg.seed), say)
    ranker = fit.booster
    timings["ranker_fit"] = time.perf_counter() - clock
    ranker_valid = held_out_lift(lists, fit, labels.positives)
    del lists

    clock = time.perf_counter()
    if protocol == "A":
        final_train = split.train_valid()
        say(f"final: {model_name} on train+valid ({final_train.nnz:,} likes)")
        final_model = _fit(model_name, options, final_train)
        exclude = final_train.positives
    else:
        final_train = split.train
        final_model = (
            fit_model if ranker_labels == "valid" else _fit(model_name, options, split.train)
        )
        exclude = excluded_at_test(split, protocol)
    if fusion is not None and final_model is not fit_model:
        sources = fit_sources(
            final_train,
            model_name,
            final_model,
            cfg.item_item_options or {},
            ials_refit(sources, ials_of(cfg)),
        )
    timings["final_fit"] = time.perf_counter() - clock
    clock = time.perf_counter()
    test = split.test.positives.tocsr()
    test_users = np.flatnonzero(np.diff(test.indptr) > 0)
    test_candidates, ablation = None, {}
    if fusion is not None:
        say(f"test: each source's top-{cfg.candidates} and their fusion")
        per_source = source_lists(
            sources, final_train.positives, test_users, cfg.candidates, exclude
        )
        for name, (items, _) in per_source.items():
            ablation[name] = top_metrics(items, test, test_users)
        fused = fused_lists(per_source, fusion, cfg.candidates)
        ablation["fusion"] = top_metrics(fused.items, test, test_users)
        test_candidates = (fused.items, fused.scores)
    say(f"test: shortlists and features for {len(test_users):,} users")
    test_lists = ranking_lists(
        final_train,
        final_model.user_factors,
        final_model.item_factors,
        test,
        split.test.timestamps,
        cfg,
        exclude=exclude,
        users=test_users,
        keep_empty=True,
        label_context=split.test.context,
        candidates=test_candidates,
        item_item=item_item_table(sources),
    )
    timings["test_features"] = time.perf_counter() - clock
    clock = time.perf_counter()
    retrieval = list_metrics(test_lists, lambda x: -x[:, RANK_COLUMN], test, test_users)
    # each list scored once by each ranker; the blend and each alone are ordered from those
    lambdarank = {u: score(ranker, x) for u, (_, x, _) in test_lists.items()}
    lambdarank_metrics = scored_metrics(test_lists, lambdarank, test, test_users)
    alone = {f"lambdarank_{m}": v for m, v in lambdarank_metrics.items() if m.endswith("@20")}
    served = lambdarank
    if fit.deep is not None:
        deep = {u: fit.deep.score(x) for u, (_, x, _) in test_lists.items()}
        deep_metrics = scored_metrics(test_lists, deep, test, test_users)
        alone |= {f"deepfm_{m}": v for m, v in deep_metrics.items() if m.endswith("@20")}
        served = {u: blend(lambdarank[u], deep[u]) for u in lambdarank}
    # as served: with the retrieval order at the weight chosen out of fold
    served = {
        u: with_order(v, test_lists[u][1][:, RANK_COLUMN], fit.order_weight)
        for u, v in served.items()
    }
    two_stage = scored_metrics(test_lists, served, test, test_users)
    timings["evaluate"] = time.perf_counter() - clock
    timings["total"] = sum(timings.values())
    return TwoStageResult(
        dataset=split.name,
        protocol=protocol,
        model=model_name,
        retrieval=retrieval,
        two_stage=two_stage,
        timings=timings,
        ranker_valid=ranker_valid,
        importance=importance(ranker, names),
        rankers_alone=alone,
        users=len(test_users),
        ablation=ablation,
        fusion=fusion_report or {},
    )


def top_metrics(top: np.ndarray, test, users: np.ndarray) -> dict[str, float]:
    """Recall and NDCG@20 of ranked lists (one row per user of `users`, -1 padded)."""
    per_user = per_user_metrics(
        hit_matrix(top[:, :20], test, users), np.diff(test.indptr)[users], (20,)
    )
    return {name: float(per_user[name].mean()) for name in ("recall@20", "ndcg@20")}


def importance(ranker: lgb.Booster, names: list[str]) -> dict[str, float]:
    """Share of total split gain per feature, largest first."""
    gain = ranker.feature_importance("gain")
    total = float(gain.sum()) or 1.0
    pairs = sorted(zip(names, gain), key=lambda p: -p[1])
    return {n: round(float(g) / total, 4) for n, g in pairs if g > 0}
