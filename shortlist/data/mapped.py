"""Per-user bundle data as memory-mapped files, so that serving memory does not grow with users.

A serving pod needs a user's row of a few tables (their training likes, dislikes, recent
likes, ids), never the whole table at once. Each table is a plain `.npy` file opened with
`np.load(mmap_mode="r")`: the pages a request touches come from the page cache, which every
process serving the bundle on a node shares, and untouched users cost nothing
(docs/decisions/0041-serving-memory.md).

- `save_csr`/`load_csr`: a CSR matrix as three arrays (`<name>.indptr.npy`,
  `<name>.indices.npy`, `<name>.data.npy`), loaded as a scipy matrix over the mapped arrays.
- `save_ids`/`MappedIds`: string ids as fixed-width UTF-8 bytes in index order plus their
  sort order, looked up by binary search (an `IdMap` with no Python dict).
- `EncodedVectors`: the user vectors of a linear model computed on request from the user's
  weighted likes and the item encoder, instead of a users x dim array.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

INT32_MAX = np.iinfo(np.int32).max


def is_mapped(array: np.ndarray) -> bool:
    """Whether `array` is (a view of) a memory-mapped file, not a copy in the heap."""
    base = array
    while base is not None:
        if isinstance(base, (np.memmap, mmap.mmap)):
            return True
        base = getattr(base, "base", None)
    return False


def load_mapped(path: Path) -> np.ndarray:
    """The `.npy` file at `path` memory-mapped read-only, as a plain ndarray view of the
    mapping: every index into an `np.memmap` builds another memmap through a Python-level
    `__array_finalize__`, a cost paid many times per request; the view reads the same
    pages without it (`is_mapped` still sees the mapping through its base)."""
    return np.load(path, mmap_mode="r").view(np.ndarray)


def csr_files(name: str) -> tuple[str, str, str]:
    return f"{name}.indptr.npy", f"{name}.indices.npy", f"{name}.data.npy"


def save_csr(directory: Path, name: str, matrix: sp.spmatrix, dtype=np.float32) -> None:
    """Write `matrix` as three `.npy` arrays. Index arrays are int32 when the matrix fits
    (scipy then keeps the mapped arrays as they are; mixed widths make it copy one)."""
    csr = sp.csr_matrix(matrix)
    csr.sort_indices()
    wide = max(csr.nnz, *csr.shape) > INT32_MAX
    index_dtype = np.int64 if wide else np.int32
    indptr, indices, data = csr_files(name)
    np.save(directory / indptr, csr.indptr.astype(index_dtype))
    np.save(directory / indices, csr.indices.astype(index_dtype))
    np.save(directory / data, csr.data.astype(dtype))


def has_csr(directory: Path, name: str) -> bool:
    return (directory / csr_files(name)[0]).exists()


def load_csr(directory: Path, name: str, n_cols: int) -> sp.csr_matrix:
    """The matrix `save_csr` wrote, over memory-mapped arrays (rows: len(indptr) - 1)."""
    indptr, indices, data = (load_mapped(directory / f) for f in csr_files(name))
    shape = (len(indptr) - 1, n_cols)
    return sp.csr_matrix((data, indices, indptr), shape=shape, copy=False)


IDS_FILE = "{}_ids.npy"
ORDER_FILE = "{}_order.npy"


def save_ids(directory: Path, name: str, ids: Sequence[str]) -> None:
    """Ids in index order as fixed-width UTF-8 bytes, and their sort order."""
    encoded = np.array([str(i).encode() for i in ids], dtype=np.bytes_)
    if len(encoded) == 0:
        encoded = np.zeros(0, "S1")
    order = np.argsort(encoded, kind="stable")
    if len(order) > 1 and (encoded[order][1:] == encoded[order][:-1]).any():
        raise ValueError(f"duplicate ids in {name}")
    np.save(directory / IDS_FILE.format(name), encoded)
    np.save(directory / ORDER_FILE.format(name), order.astype(np.int64))


def has_ids(directory: Path, name: str) -> bool:
    return (directory / IDS_FILE.format(name)).exists()


class MappedIds:
    """The `IdMap` interface over memory-mapped ids: a lookup is a binary search over the
    sorted order (O(log n) pages touched), and no per-id Python object is made."""

    def __init__(self, ids: np.ndarray, order: np.ndarray) -> None:
        self._ids = ids
        self._order = order
        self._width = ids.dtype.itemsize

    @classmethod
    def load(cls, directory: Path, name: str) -> MappedIds:
        return cls(
            load_mapped(directory / IDS_FILE.format(name)),
            load_mapped(directory / ORDER_FILE.format(name)),
        )

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, external_id: object) -> bool:
        return isinstance(external_id, str) and self.get(external_id) is not None

    def _find(self, keys: list[bytes]) -> np.ndarray:
        """Index per key, -1 where unknown."""
        if not keys or len(self._ids) == 0:
            return np.full(len(keys), -1, np.int64)
        # longer than the widest id, or ending in NUL (numpy bytes drop trailing NULs):
        # never an id here
        fits = np.array([len(k) <= self._width and not k.endswith(b"\0") for k in keys])
        probe = np.array([k if f else b"" for k, f in zip(keys, fits)], dtype=self._ids.dtype)
        at = np.searchsorted(self._ids, probe, sorter=self._order)
        at = np.minimum(at, len(self._order) - 1)
        index = np.asarray(self._order[at], np.int64)
        found = fits & (self._ids[index] == probe)
        return np.where(found, index, -1)

    def get(self, external_id: str) -> int | None:
        index = int(self._find([external_id.encode()])[0])
        return None if index < 0 else index

    def index(self, external_id: str) -> int:
        found = self.get(external_id)
        if found is None:
            raise KeyError(external_id)
        return found

    def positions(self, external_ids: Iterable[str]) -> np.ndarray:
        return self._find([e.encode() for e in external_ids])

    def indices(self, external_ids: Iterable[str]) -> np.ndarray:
        found = self.positions(external_ids)
        return found[found >= 0]

    def id(self, index: int) -> str:
        return bytes(self._ids[int(index)]).decode()

    def ids(self, indices: Sequence[int] | np.ndarray) -> list[str]:
        return [self.id(i) for i in indices]

    def to_list(self) -> list[str]:
        return [bytes(i).decode() for i in self._ids]


class EncodedVectors:
    """Users x dim vectors of a linear model, `weights @ encoder`, computed for the rows
    asked: `vectors[u]` is one user's vector, `vectors[array]` a matrix. `weights` (users x
    items, the model's weight of each training like) is memory-mapped; only the item
    encoder is held."""

    def __init__(self, weights: sp.csr_matrix, encoder: np.ndarray) -> None:
        self.weights = weights
        self.encoder = encoder
        self.shape = (weights.shape[0], encoder.shape[1])
        self.dtype = np.dtype(np.float32)
        # one row is read per request: the arrays, without scipy's per-call checks
        self._indptr, self._indices, self._data = weights.indptr, weights.indices, weights.data

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        if np.ndim(rows) == 0:
            lo, hi = self._indptr[int(rows)], self._indptr[int(rows) + 1]
            vector = self._data[lo:hi] @ self.encoder[self._indices[lo:hi]]
            return np.asarray(vector, np.float32)
        return np.asarray(self.weights[rows] @ self.encoder, np.float32)
