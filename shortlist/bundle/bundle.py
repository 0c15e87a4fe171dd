"""The bundle: everything a trained model serves from, as one object (`shortlist.bundle.files`
writes and reads it as a versioned directory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import faiss
import lightgbm as lgb
import numpy as np
import scipy.sparse as sp

from shortlist.data.ids import IdMap
from shortlist.data.interactions import row_items
from shortlist.data.mapped import EncodedVectors, MappedIds
from shortlist.feedback.foldin import FoldInTargets
from shortlist.models.ials import MFSource
from shortlist.ranking.context import ContextCounts
from shortlist.ranking.deepfm import DeepFMWeights
from shortlist.ranking.item_side import ItemSide, item_side
from shortlist.ranking.scorer import Scorer, serving_scorer
from shortlist.retrieval.fusion import FusionConfig
from shortlist.retrieval.precomputed import PrecomputedShortlists


@dataclass
class Bundle:
    version: str
    # per-user data (users, user_vectors, likes, dislikes, recent_likes, user_features,
    # precomputed) is memory-mapped when loaded from disk (shortlist.bundle.files); a
    # linear model's user vectors are then computed per request (EncodedVectors)
    users: IdMap | MappedIds
    items: IdMap
    user_vectors: np.ndarray | EncodedVectors
    item_vectors: np.ndarray
    index: faiss.Index | None  # None: loaded without it, for a service that never searches
    likes: sp.csr_matrix  # training likes
    dislikes: sp.csr_matrix  # training dislikes
    recent_likes: sp.csr_matrix  # the last likes per user, for similarity features
    popularity: np.ndarray  # likes per item in training
    item_features: np.ndarray  # items x n attribute columns
    item_feature_names: list[str]
    foldin: FoldInTargets
    ranker: lgb.Booster | None = None
    # served blended with `ranker` when present (shortlist.ranking.deepfm)
    deep_ranker: DeepFMWeights | None = None
    # Linear models (the spectral filter): user vector = sum of encoder rows of their likes,
    # which makes fold-in exact. None: ridge fold-in on the item vectors.
    item_encoder: np.ndarray | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    user_features: np.ndarray | None = None  # users x n attribute columns
    user_feature_names: list[str] = field(default_factory=list)
    recent_popularity: np.ndarray | None = None  # time-decayed likes per item (NaN: no times)
    # free-form context key -> (its values, values x items likes recorded with each value)
    context_counts: ContextCounts = field(default_factory=dict)
    # Each trained user's top-N by exact search, served until feedback moves their vector.
    precomputed: PrecomputedShortlists | None = None
    # items x items co-occurrence in like order (features.sequence_neighbours); None when
    # the training likes had no order
    sequence: sp.csr_matrix | None = None
    # item attribute -> its value per item as text ("" none): what request rules filter on
    item_attribute_values: dict[str, list[str]] = field(default_factory=dict)
    # The item-item source (items x items neighbour weights, shortlist.models.item_item) and
    # how retrieval fuses it with the vector search and popularity; None: vector search alone
    item_item: sp.csr_matrix | None = None
    fusion: FusionConfig | None = None
    # The weighted-MF source (shortlist.models.ials): item factors and its user step, so
    # retrieval lists a user's top items from their current likes; None: not fused
    ials: MFSource | None = None
    # its inner-product index over the item factors, built at load for large catalogues
    # (shortlist.retrieval.retrieve.prepare_for_retrieval); None: exact scoring
    ials_index: faiss.Index | None = None
    # Linear models: users x items, each training like's weight in the user's vector
    # (user_vectors == user_weights @ item_encoder); saved instead of the user vectors
    user_weights: sp.csr_matrix | None = None
    # items x items `item_neighbours(likes)` (a ranking feature); None: computed on first
    # use (shortlist.bundle.files stores it, so that a service does not redo it)
    cooc: sp.csr_matrix | None = None

    def __post_init__(self) -> None:
        self._pop_order = np.argsort(-self.popularity, kind="stable")
        if self.recent_popularity is None:
            self.recent_popularity = np.full(len(self.popularity), np.nan, np.float32)

    def seen_items(self, user: int) -> np.ndarray:
        """The items the user liked or disliked in training (never recommended again),
        read from their rows: no users x items table is built."""
        return np.union1d(row_items(self.likes, user), row_items(self.dislikes, user))

    def activity_of(self, user: int) -> float:
        """The user's number of training likes."""
        return float(self.likes.indptr[user + 1] - self.likes.indptr[user])

    @cached_property
    def item_side(self) -> ItemSide:
        """What the ranking features read of the items, built on first use (only the ranking
        service reads it; it builds it before the bundle serves, see RankingServicer)."""
        return item_side(
            self.likes,
            self.item_vectors,
            self.popularity,
            self.recent_popularity,
            self.item_features,
            self.item_feature_names,
            self.user_feature_names if self.user_features is not None else [],
            self.context_counts,
            self.sequence,
            self.item_item,
            self.cooc,
        )

    @cached_property
    def scorer(self) -> Scorer | None:
        """The ranker compiled for serving, blended with the DeepFM ranker when the bundle
        has one and with the retrieval order at the manifest's weight (compiled on first use;
        the ranking service does it before the bundle serves); None without a ranker."""
        if self.ranker is None:
            return None
        weight = float(self.manifest.get("ranker_order_weight", 0.0))
        return serving_scorer(self.ranker, self.deep_ranker, weight)

    def popular_items(self, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
        order = self._pop_order
        if exclude is not None and len(exclude):
            # the excluded items can take at most len(exclude) of the first places
            order = order[: n + len(exclude)]
            order = order[~np.isin(order, exclude)]
        return order[:n]
