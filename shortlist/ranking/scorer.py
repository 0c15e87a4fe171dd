"""The one scoring interface the ranking stage serves: features of one shortlist in, one
score per row out. LambdaRank compiled to native code, blended with DeepFM when the bundle
has one (each ranker's scores standardised over the list, then summed), then with the
retrieval order itself at the weight training chose (`choose_order_weight`)."""

from __future__ import annotations

from collections.abc import Callable

import lightgbm as lgb
import numpy as np

from shortlist.ranking.deepfm import DeepFMWeights
from shortlist.ranking.features import RANK_COLUMN
from shortlist.ranking.lambdarank import compiled_scorer, mean_list_ndcg

Scorer = Callable[[np.ndarray], np.ndarray]  # (candidates x features) -> scores

# Weights of the retrieval order tried beside the ranker's score: 0 is the ranker alone,
# and 1e6 the retrieval order itself (over 200 places the order's neighbouring values are
# at least log(200/199) apart, which times 1e6 outweighs any standardised score), so that
# the choice is never below either stage on the lists it is made on.
ORDER_WEIGHTS = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 1e6)


def _z(a: np.ndarray) -> np.ndarray:
    return (a - a.mean()) / (a.std() + 1e-9)


def blend(lambdarank: np.ndarray, deep: np.ndarray) -> np.ndarray:
    """The two rankers' scores of one shortlist, each standardised over the list, summed."""
    return (_z(lambdarank) + _z(deep)).astype(np.float32)


def with_order(scores: np.ndarray, ranks: np.ndarray, weight: float) -> np.ndarray:
    """A shortlist's ranker scores standardised plus `weight` times its retrieval order's
    standardised score, -log(1 + rank) (a DCG-like discount); weight 0 leaves them as they
    are. Why: where the fused retrieval order is strong, a ranker fit on fewer likes can
    fall below it; leaning on the order by a weight chosen out of fold keeps the two
    stages at least as good as the first on the ranker's held-out lists."""
    if weight == 0:
        return scores
    return (_z(scores) + weight * _z(-np.log1p(ranks))).astype(np.float32)


def lists_with_order(
    scores: np.ndarray, ranks: np.ndarray, sizes: np.ndarray, weight: float
) -> np.ndarray:
    """`with_order` over rows that hold consecutive lists (cut by `sizes`)."""
    if weight == 0:
        return scores
    cuts = np.cumsum(sizes)[:-1]
    parts = zip(np.split(scores, cuts), np.split(ranks, cuts))
    return np.concatenate([with_order(s, r, weight) for s, r in parts])


def choose_order_weight(
    scores: np.ndarray, ranks: np.ndarray, labels: np.ndarray, sizes: np.ndarray
) -> tuple[float, float]:
    """The ORDER_WEIGHTS entry whose `with_order` of out-of-fold scores gives the best mean
    NDCG@20 over the lists (rows cut by `sizes`), and that NDCG; ties go to the smaller
    weight."""
    best = (0.0, -1.0)
    for weight in ORDER_WEIGHTS:
        ndcg = mean_list_ndcg(lists_with_order(scores, ranks, sizes, weight), labels, sizes)
        if ndcg > best[1]:
            best = (weight, ndcg)
    return best


def blended(lambdarank: Scorer, deep: DeepFMWeights) -> Scorer:
    """A scorer of one shortlist's features: `blend` of LambdaRank's and DeepFM's scores."""
    return lambda features: blend(lambdarank(features), deep.score(features))


def ordered(scorer: Scorer, weight: float) -> Scorer:
    """`scorer` blended with the shortlist's retrieval order (`with_order`)."""
    if weight == 0:
        return scorer
    return lambda features: with_order(scorer(features), features[:, RANK_COLUMN], weight)


def serving_scorer(
    ranker: lgb.Booster, deep: DeepFMWeights | None, order_weight: float = 0.0
) -> Scorer:
    """What a bundle's rankers serve: LambdaRank compiled, blended with DeepFM if given and
    with the retrieval order at `order_weight`."""
    lambdarank = compiled_scorer(ranker)
    return ordered(lambdarank if deep is None else blended(lambdarank, deep), order_weight)
