"""The one scoring interface the ranking stage serves: features of one shortlist in, one
score per row out. LambdaRank compiled to native code, blended with DeepFM when the bundle
has one (each ranker's scores standardised over the list, then summed)."""

from __future__ import annotations

from collections.abc import Callable

import lightgbm as lgb
import numpy as np

from shortlist.ranking.deepfm import DeepFMWeights
from shortlist.ranking.lambdarank import compiled_scorer

Scorer = Callable[[np.ndarray], np.ndarray]  # (candidates x features) -> scores


def blend(lambdarank: np.ndarray, deep: np.ndarray) -> np.ndarray:
    """The two rankers' scores of one shortlist, each standardised over the list, summed."""

    def z(a: np.ndarray) -> np.ndarray:
        return (a - a.mean()) / (a.std() + 1e-9)

    return (z(lambdarank) + z(deep)).astype(np.float32)


def blended(lambdarank: Scorer, deep: DeepFMWeights) -> Scorer:
    """A scorer of one shortlist's features: `blend` of LambdaRank's and DeepFM's scores."""
    return lambda features: blend(lambdarank(features), deep.score(features))


def serving_scorer(ranker: lgb.Booster, deep: DeepFMWeights | None) -> Scorer:
    """What a bundle's rankers serve: LambdaRank compiled, blended with DeepFM if given."""
    lambdarank = compiled_scorer(ranker)
    return lambdarank if deep is None else blended(lambdarank, deep)
