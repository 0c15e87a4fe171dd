"""The candidate sources fused into the shortlist, fit and listed offline.

The primary source is the bundle's vector model (served by the FAISS index); beside it the
item-item model (`shortlist.models.item_item`: EASE under its cap, item-kNN above), a
weighted matrix factorisation (`shortlist.models.ials`) and popularity. Each gives its
ranked top-`width` per user with the user's training items excluded;
`shortlist.retrieval.fusion` fuses them. Another source (a session model) joins by adding
its name and its lists here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from shortlist.data.interactions import Interactions
from shortlist.models import registry
from shortlist.models.popularity import item_popularity
from shortlist.models.topk import model_top_k, scored_top_k
from shortlist.retrieval.fusion import Fused, FusionConfig, choose_fusion, fuse

ITEM_ITEM = "item-item"
IALS = "ials"
POPULARITY = "popularity"


@dataclass
class Sources:
    """Fitted sources: the primary vector model under its name, the item-item model and the
    weighted MF (None: not fused) and the popularity counts."""

    primary_name: str
    primary: object
    item_item: object | None
    popularity: np.ndarray
    ials: object | None = None

    @property
    def names(self) -> list[str]:
        extra = [ITEM_ITEM] if self.item_item is not None else []
        extra += [IALS] if self.ials is not None else []
        return [self.primary_name, *extra, POPULARITY]


def fit_sources(
    data: Interactions,
    primary_name: str,
    primary: object,
    item_item: dict | None,
    ials: dict | None = None,
) -> Sources:
    """The sources over `data`, `primary` already fit; `item_item` and `ials` the options
    of those sources (None: that source is not fused)."""
    model = None
    if item_item is not None:
        model = registry.build(ITEM_ITEM, item_item)
        model.fit(data)
    mf = None
    if ials is not None and primary_name != IALS:
        mf = registry.build(IALS, ials)
        mf.fit(data)
    return Sources(primary_name, primary, model, item_popularity(data), mf)


def ials_refit(sources: Sources | None, options: dict | None) -> dict | None:
    """The weighted-MF options for a refit on more likes: those the fit part chose (its
    regularization searched once), else `options`."""
    if sources is None or sources.ials is None:
        return options
    return asdict(sources.ials.config)


def source_lists(
    sources: Sources,
    history: sp.csr_matrix,
    users: np.ndarray,
    width: int,
    exclude: sp.csr_matrix,
    names: Collection[str] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each source's (items, scores), users x width, `exclude` left out (-1 padded); only
    the sources in `names` when given (a fusion's used ones: the others cannot change it)."""
    wanted = set(sources.names if names is None else names)
    models = [
        (sources.primary_name, sources.primary),
        (ITEM_ITEM, sources.item_item),
        (IALS, sources.ials),
    ]
    out = {
        name: model_top_k(model, history, users, width, exclude)
        for name, model in models
        if model is not None and name in wanted
    }
    if POPULARITY in wanted:
        ones = np.ones((history.shape[0], 1), np.float32)
        pop = sources.popularity[:, None].astype(np.float32)
        out[POPULARITY] = scored_top_k(ones, pop, users, width, exclude)
    return out


def fused_lists(
    lists: dict[str, tuple[np.ndarray, np.ndarray]], fusion: FusionConfig, n: int
) -> Fused:
    return fuse({s: v[0] for s, v in lists.items()}, fusion, n)


def chosen_fusion(
    sources: Sources,
    lists: dict[str, tuple[np.ndarray, np.ndarray]],
    labels: sp.csr_matrix,
    users: np.ndarray,
    budget_s: float = 120.0,
) -> tuple[FusionConfig, dict]:
    """Fusion weights chosen on `labels` (held-out likes of `users`, the lists' rows)."""
    items = {s: v[0] for s, v in lists.items()}
    depth = max(v.shape[1] for v in items.values())
    return choose_fusion(items, labels, users, sources.primary_name, budget_s, depth=depth)
