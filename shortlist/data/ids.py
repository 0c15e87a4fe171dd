"""String ids at the edges, dense integer indices inside the models."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class IdMap:
    """A bijection between external string ids and 0..n-1 indices."""

    def __init__(self, ids: Iterable[str]) -> None:
        self._ids: list[str] = [str(i) for i in ids]
        self._index: dict[str, int] = {s: n for n, s in enumerate(self._ids)}
        if len(self._index) != len(self._ids):
            raise ValueError("duplicate ids in IdMap")

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, external_id: object) -> bool:
        return external_id in self._index

    def index(self, external_id: str) -> int:
        """The index of an id; KeyError when unknown."""
        return self._index[external_id]

    def get(self, external_id: str) -> int | None:
        return self._index.get(external_id)

    def indices(self, external_ids: Iterable[str]) -> np.ndarray:
        """Indices of the known ids among `external_ids` (unknown ones are dropped)."""
        idx = [self._index[e] for e in external_ids if e in self._index]
        return np.asarray(idx, dtype=np.int64)

    def positions(self, external_ids: Iterable[str]) -> np.ndarray:
        """Index per id, -1 for unknown ones (same length as `external_ids`)."""
        get = self._index.get
        return np.fromiter((get(e, -1) for e in external_ids), np.int64)

    def id(self, index: int) -> str:
        return self._ids[int(index)]

    def ids(self, indices: Sequence[int] | np.ndarray) -> list[str]:
        return [self._ids[int(i)] for i in indices]

    def to_list(self) -> list[str]:
        return list(self._ids)
