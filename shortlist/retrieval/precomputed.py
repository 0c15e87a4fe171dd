"""Each trained user's shortlist, computed offline by exact search and served from the bundle.

A trained user's vector only changes when feedback folds it in, and then retrieval searches
the index as before. Until then their top-N is fixed by the bundle, so `shortlist train`
computes it once for every user (exact inner product over all items, training items
excluded), a little wider than the served N so that the live seen/disliked items and the
request's exclusions can be taken out of it at request time. The search this replaces was
the largest share of a Recommend's CPU (docs/decisions/0001-precomputed-shortlists.md), and
exact search is also at least as good as the ANN index it stands in for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from shortlist.retrieval.fusion import source_sets

ITEMS_FILE = "shortlist_items.npy"
SCORES_FILE = "shortlist_scores.npy"
SOURCES_FILE = "shortlist_sources.npy"


@dataclass
class PrecomputedShortlists:
    """users x width best items (int32, best first) and their scores (float32). A row
    shorter than width (tiny catalogues) is padded with -1 and is then the user's whole
    list of candidates."""

    items: np.ndarray
    scores: np.ndarray
    # fused shortlists: per item a bit per source that proposed it (bit j: source_names[j])
    sources: np.ndarray | None = None
    source_names: tuple[str, ...] = ()

    @classmethod
    def compute(
        cls,
        user_vectors: np.ndarray,
        item_vectors: np.ndarray,
        exclude: sp.csr_matrix,
        width: int,
        batch_size: int = 1024,
    ) -> PrecomputedShortlists:
        """Exact top-`width` by dot product for every user, `exclude` (their training
        items) left out; equal scores in item order."""
        # torch only here, offline: the serving processes never import it
        from shortlist.models.topk import scored_top_k

        users = np.arange(len(user_vectors))
        items, scores = scored_top_k(user_vectors, item_vectors, users, width, exclude, batch_size)
        return cls(items.astype(np.int32), scores)

    def pick(self, user: int, n: int, exclude: np.ndarray) -> np.ndarray | None:
        """Where in the user's row their top-n without the `exclude`d item indices are, or
        None when the stored row cannot tell (fewer than n left of a row cut at width)."""
        row = self.items[user]
        keep = row >= 0
        complete = not keep[-1]
        if len(exclude):
            keep &= ~np.isin(row, exclude)
        picked = np.flatnonzero(keep)[:n]
        if len(picked) < n and not complete:
            return None
        return picked

    def at(self, user: int, picked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The items and scores at positions `picked` of the user's row."""
        return self.items[user, picked].astype(np.int64), np.array(self.scores[user, picked])

    def sources_at(self, user: int, picked: np.ndarray) -> list[tuple[str, ...]]:
        """The sources that proposed the items at positions `picked` of the user's row."""
        if self.sources is None:
            return []
        return source_sets(np.asarray(self.sources[user, picked]), self.source_names)

    def save(self, directory: Path) -> None:
        np.save(directory / ITEMS_FILE, self.items)
        np.save(directory / SCORES_FILE, self.scores)
        if self.sources is not None:
            np.save(directory / SOURCES_FILE, self.sources)

    @classmethod
    def load(
        cls, directory: Path, source_names: tuple[str, ...] = ()
    ) -> PrecomputedShortlists | None:
        """Memory-mapped (processes serving one bundle share its pages); None when the
        bundle has none."""
        if not (directory / ITEMS_FILE).exists():
            return None
        return cls(
            np.load(directory / ITEMS_FILE, mmap_mode="r"),
            np.load(directory / SCORES_FILE, mmap_mode="r"),
            np.load(directory / SOURCES_FILE, mmap_mode="r")
            if (directory / SOURCES_FILE).exists()
            else None,
            source_names,
        )
