"""Valid-only ablation of the ranker's per-source features (decision 0048).

`python -m shortlist.tools.bench.source_ablation DATA OPTIONS_JSON` runs the bench's stage 1
under protocol B with the served labels (each user's latest 20% of train held out where
likes are ordered, else a random 20%), builds one set of ranker lists from the fused
shortlists, and cross-validates LambdaRank on them twice: with every feature and without
the `src_*` columns; and a probe of one more column, the vector source's own score over the
list's largest (`vector_score_ratio`, the confidence gaps reciprocal-rank fusion drops),
with and without them. All are scored out of fold on the held-out training likes, so the
choice reads neither valid's nor test's likes, and the arms see the same lists. The
retrieval options are given (those the bench chose), so no tuning runs. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from shortlist.data.splits import select_likes
from shortlist.evaluation.two_stage import held_out_lift
from shortlist.models import registry
from shortlist.ranking.features import SOURCE_FEATURES
from shortlist.ranking.lambdarank import RankerConfig
from shortlist.tools.bench.quality import load_split
from shortlist.training.pipeline import (
    TrainConfig,
    data_feature_names,
    fit_ranker,
    fused_candidates,
    item_item_table,
    label_kind,
    label_mask,
    labelled_users,
    ranking_lists,
)

COLUMNS = [*SOURCE_FEATURES, "src_count"]


def ablate(data_dir: str, options: dict, model: str = "spectral") -> dict:
    torch.set_num_threads(2)
    split = load_split(data_dir)
    cfg = TrainConfig(model=model, deep_ranker=False)
    data = split.train
    kind = label_kind(data, "auto")
    held = label_mask(data, kind, cfg.label_share, np.random.default_rng(cfg.seed))
    stage1, labels = select_likes(data, ~held), select_likes(data, held)
    started = time.perf_counter()
    fitted = registry.build(model, options)
    fitted.fit(stage1)
    users = labelled_users(labels.positives, cfg.ranker_max_lists, cfg.seed)
    sources, fusion, _, candidates = fused_candidates(
        stage1, fitted, labels.positives, users, cfg, print
    )
    lists = ranking_lists(
        stage1,
        fitted.user_factors,
        fitted.item_factors,
        labels.positives,
        labels.timestamps,
        cfg,
        users=users,
        label_context=labels.context,
        candidates=candidates,
        item_item=item_item_table(sources),
    )
    names = data_feature_names(stage1)
    drop = {names.index(n) for n in COLUMNS}
    out: dict = {"labels": kind, "fusion": fusion.to_json(), "options": options}
    out["lists"] = len(lists)
    # the probe column: the vector model's score of each candidate over the list's largest
    for u, (c, x, y) in lists.items():
        dots = fitted.item_factors[c] @ fitted.user_factors[u]
        top = dots.max() if len(dots) else 0.0
        ratio = dots / top if top > 0 else np.full(len(c), np.nan)
        lists[u] = (c, np.column_stack([x, ratio.astype(np.float32)]), y)
    names = [*names, "vector_score_ratio"]
    probe = len(names) - 1
    every = list(range(len(names)))
    for arm, cols in (
        ("with", every[:probe]),
        ("without", [j for j in every[:probe] if j not in drop]),
        ("without_plus_vector_score", [j for j in every if j not in drop]),
        ("with_plus_vector_score", every),
    ):
        sub = {u: (c, x[:, cols], y) for u, (c, x, y) in lists.items()}
        arm_names = [names[j] for j in cols]
        fit = fit_ranker(sub, arm_names, cfg, RankerConfig(seed=cfg.seed), print)
        out[arm] = {k: round(v, 5) for k, v in held_out_lift(sub, fit, labels.positives).items()}
        if arm == "with":
            gain = fit.booster.feature_importance("gain")
            total = float(gain.sum()) or 1.0
            out["src_gain_share"] = {
                n: round(float(gain[arm_names.index(n)]) / total, 4) for n in COLUMNS
            }
        print(arm, out[arm], flush=True)
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


if __name__ == "__main__":
    print(json.dumps(ablate(sys.argv[1], json.loads(sys.argv[2]))), flush=True)
