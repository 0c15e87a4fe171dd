"""`shortlist bench recency`: choose the spectral model's recency weighting and popularity
prior on training data alone.

The latest share of each user's training likes (by `Interactions.recency`: on the LightGCN
splits, positions in the train lines) is held out, the model is fit on the rest, and a
coordinate search scores settings on the held-out likes: `pop_exp`, `recency`,
`recency_power`, then `pop_exp` again, each keeping the best so far. Test is never read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shortlist.data.interactions import Interactions
from shortlist.data.splits import latest_share_holdout
from shortlist.evaluation.metrics import evaluate
from shortlist.models import registry
from shortlist.models.progress import track

SEARCH: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("pop_exp", (0.0, 0.1, 0.2)),
    ("recency", (0.0, 3.0, 10.0, 20.0)),
    ("recency_power", (4.0, 8.0, 16.0)),
    ("pop_exp", (0.0, 0.1, 0.2)),  # a second pass: the prior's best value moves with recency
)
START = {"pop_exp": 0.0, "recency": 0.0, "recency_power": 8.0}


def run(
    data: Interactions,
    options: dict[str, Any],
    share: float = 0.2,
    search: tuple[tuple[str, tuple[float, ...]], ...] = SEARCH,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every setting tried (options, recall@20, ndcg@20 on the held-out latest likes) and
    the chosen one (best NDCG@20)."""
    say = progress or (lambda _m: None)
    split = latest_share_holdout(data, share)
    held = split.test.positives
    say(f"holdout: latest {share:.0%} of each user's likes, {held.nnz:,} of {data.nnz:,}")
    best = {**options, **START}
    scored: dict[tuple, dict[str, Any]] = {}

    def score(setting: dict[str, Any]) -> float:
        key = tuple(sorted(setting.items()))
        if key not in scored:
            model = registry.build("spectral", setting)
            model.fit(split.train)
            m = evaluate(model.user_factors, model.item_factors, split.train.positives, held)
            scored[key] = {
                "options": {k: setting[k] for k in START},
                "recall@20": round(m["recall@20"], 4),
                "ndcg@20": round(m["ndcg@20"], 4),
            }
            say(f"{scored[key]['options']}: ndcg@20 {scored[key]['ndcg@20']}")
        return scored[key]["ndcg@20"]

    for name, values in track(search, "recency search"):
        best = max(({**best, name: v} for v in values), key=score)
    chosen = scored[tuple(sorted(best.items()))]
    return {"held_out_likes": int(held.nnz), "tried": list(scored.values()), "chosen": chosen}
