"""Why each served item was recommended (`RecommendRequest.with_reasons`): the candidate
sources that proposed it, the user's liked items closest to it, and the ranker's largest
feature contributions.

"Because you liked X" uses the dot product of retrieval vectors, the similarity behind the
ranker's `sim_recent_likes` and `max_sim_dislikes` features, over the same recent likes
(`shortlist.ranking.user_signals`). Contributions are LightGBM's per-row SHAP values
(`pred_contrib=True`) of the LambdaRank booster on the served rows only: the served
scorer may be compiled (lleaves) and blended with DeepFM, which has no such breakdown, so
they explain the LambdaRank half of a blended score. Computed only when asked for.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightgbm as lgb
import numpy as np

from shortlist.ranking.item_side import ItemSide
from shortlist.v1 import common_pb2

LIKED_SHOWN = 2  # liked items named per recommended item
FEATURES_SHOWN = 3  # feature contributions per recommended item


def because_liked(
    item_side: ItemSide, item: int, likes: np.ndarray, names: Sequence[str]
) -> list[str]:
    """The liked items (bundle indices `likes`) most similar to bundle item `item`."""
    if not len(likes):
        return []
    sims = item_side.vectors[likes] @ item_side.vectors[item]
    best = np.argsort(-sims, kind="stable")[:LIKED_SHOWN]
    return [names[likes[b]] for b in best.tolist()]


def top_contributions(booster: lgb.Booster, rows: np.ndarray) -> list[list[tuple]]:
    """Per row, the FEATURES_SHOWN largest contributions by magnitude as (feature, value,
    contribution), zero contributions left out."""
    if not len(rows):
        return []
    contrib = np.asarray(booster.predict(rows, pred_contrib=True, num_threads=1))
    contrib = contrib[:, :-1]  # the last column is the expected value
    names = booster.feature_name()
    out = []
    for row, c in zip(rows, contrib):
        best = np.argsort(-np.abs(c), kind="stable")[:FEATURES_SHOWN]
        out.append([(names[f], float(row[f]), float(c[f])) for f in best.tolist() if c[f] != 0])
    return out


def reasons_message(
    sources: Sequence[str],
    liked: Sequence[str] = (),
    contributions: Sequence[tuple] = (),
    rules: Sequence[str] = (),
) -> common_pb2.Reasons:
    return common_pb2.Reasons(
        sources=sources,
        because_liked=liked,
        top_features=[
            common_pb2.FeatureContribution(feature=f, value=v, contribution=c)
            for f, v, c in contributions
        ],
        rules=rules,
    )
