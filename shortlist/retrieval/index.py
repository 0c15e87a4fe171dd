"""The FAISS item index that serves maximum-inner-product search for retrieval."""

from __future__ import annotations

import ctypes
import glob
import os
from pathlib import Path

import faiss
import numpy as np

# Below this many items exact search is already fast. Above it, IVF: on the Gowalla spectral
# item vectors it kept recall@100 close to exact at several times less time per query, where
# HNSW on inner product fell well short (`shortlist bench index`;
# docs/decisions/0007-served-index.md).
EXACT_MAX_ITEMS = 20_000
IVF_NPROBE = 128
# The served form of a large IVF index (`served_index`): the same inverted lists with 4-bit
# fast-scan PQ codes (4 dimensions per sub-quantizer: 64x less memory to scan than float32),
# more lists probed, and the `SERVED_REFINE` x over-fetched candidates re-scored exactly on
# the float vectors: at least IVF-Flat's recall at less time per query
# (docs/decisions/0007-served-index.md).
SERVED_NPROBE = 320
SERVED_REFINE = 4
SERVED_DIMS_PER_CODE = 4
PQ_TRAIN_SAMPLE = 20_000


def limit_native_threads(n: int = 1) -> None:
    """One thread for FAISS's OpenMP and numpy's OpenBLAS in a serving process: it answers
    one small query per request, and pools of native threads waking (and spinning) beside
    the gRPC threads cost far more CPU than they save. (OpenBLAS goes multi-threaded from
    a few hundred rows, where re-scoring got many times slower;
    docs/decisions/0017-tried-and-not-kept.md.)"""
    faiss.omp_set_num_threads(n)
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*")
    for path in glob.glob(libs):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads"):
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(n))
                break


class RefinedIndex:
    """Candidates from a compressed index (`coarse`), `refine` x over-fetched and re-scored
    exactly on a flat copy of the float vectors (FAISS's IndexRefineFlat), behind the FAISS
    `search` interface."""

    def __init__(
        self, coarse: faiss.Index, vectors: np.ndarray, refine: int, keep: object = None
    ) -> None:
        self.index = faiss.IndexRefineFlat(
            coarse, faiss.swig_ptr(np.ascontiguousarray(vectors, np.float32))
        )
        self.index.k_factor = float(refine)
        self._owners = (coarse, keep)  # FAISS does not own the coarse index nor its quantizer
        self._coarse = faiss.downcast_index(coarse)  # its nprobe, for searches with params
        self.ntotal = coarse.ntotal
        self.recall: dict[str, float] = {}  # measured by served_index when it had queries

    @property
    def vectors(self) -> np.ndarray:
        """The float vectors the index re-scores on: a read-only view of FAISS's own copy
        (items x dim), which can stand for the caller's array instead of a second copy."""
        flat = faiss.downcast_index(self.index.refine_index)
        view = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
        view.flags.writeable = False
        return view

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)

    def search_excluding(
        self, queries: np.ndarray, k: int, exclude: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k never holding an `exclude`d id: FAISS skips them while scanning the lists,
        so the over-fetch and the exact re-scoring stay k-sized however long the list is;
        faster than fetching k + len(exclude) and filtering, most for heavy users
        (docs/decisions/0007-served-index.md)."""
        ids = np.ascontiguousarray(exclude, dtype=np.int64)
        batch = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))  # copies the ids
        skip = faiss.IDSelectorNot(batch)  # holds `batch` by pointer: both live till return
        base = faiss.SearchParametersIVF(sel=skip, nprobe=self._coarse.nprobe)
        params = faiss.IndexRefineSearchParameters(
            k_factor=self.index.k_factor, base_index_params=base
        )
        return self.index.search(queries, k, params=params)


def served_index(
    index: faiss.Index,
    item_vectors: np.ndarray,
    queries: np.ndarray | None = None,
    nprobe: int = SERVED_NPROBE,
    refine: int = SERVED_REFINE,
    k: int = 200,
    tolerance: float = 0.005,
    seed: int = 0,
) -> faiss.Index | RefinedIndex:
    """What the retrieval service searches: a large inner-product IVF-Flat index becomes the
    same lists with fast-scan PQ codes plus exact re-scoring (`RefinedIndex`); any other index
    (exact search on small catalogues, HNSW) is served as it is. Built at load in seconds:
    the coarse quantizer is reused, only the 16-centroid sub-quantizers are trained.

    How much 4-bit codes lose depends on the vectors, so with sample `queries` (e.g. some
    users' vectors) the compressed form is only taken when its recall@k of exact search is
    within `tolerance` of the IVF-Flat index's; `recall` on the result says what was measured.
    """
    ivf = faiss.downcast_index(index)
    if not isinstance(ivf, faiss.IndexIVFFlat) or ivf.metric_type != faiss.METRIC_INNER_PRODUCT:
        return index
    dim = ivf.d
    if dim % SERVED_DIMS_PER_CODE or (dim // SERVED_DIMS_PER_CODE) % 2:
        return index
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    # A copy of the coarse quantizer (nlist x dim, a few MB), so that the IVF-Flat index and
    # its float lists (items x dim) need not stay in memory beside the served form.
    quantizer = faiss.clone_index(faiss.downcast_index(ivf.quantizer))
    pq = faiss.IndexIVFPQFastScan(
        quantizer, dim, ivf.nlist, dim // SERVED_DIMS_PER_CODE, 4, faiss.METRIC_INNER_PRODUCT
    )
    pq.by_residual = False
    rng = np.random.default_rng(seed)
    sample = vectors
    if len(vectors) > PQ_TRAIN_SAMPLE:
        sample = vectors[np.sort(rng.choice(len(vectors), PQ_TRAIN_SAMPLE, replace=False))]
    pq.train(sample)
    pq.add(vectors)
    pq.nprobe = nprobe
    served = RefinedIndex(pq, vectors, refine, keep=quantizer)
    if queries is not None and len(queries):
        q = np.ascontiguousarray(queries, dtype=np.float32)
        exact = np.argpartition(-(q @ vectors.T), k, axis=1)[:, :k]
        served.recall = {
            "ivf_flat": _recall(index.search(q, k)[1], exact),
            "served": _recall(served.search(q, k)[1], exact),
        }
        if served.recall["served"] < served.recall["ivf_flat"] - tolerance:
            return index
    return served


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact))
    return round(hits / exact.size, 4)


def build_index(
    item_vectors: np.ndarray,
    kind: str = "auto",
    hnsw_m: int = 32,
    nlist: int | None = None,
    nprobe: int = IVF_NPROBE,
    ef_search: int = 256,
) -> faiss.Index:
    """An inner-product index over the item vectors: "flat" (exact), "hnsw", "ivf" or "auto".

    `shortlist bench index` measures recall against exact search and latency per query.
    """
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    n, dim = vectors.shape
    if kind == "auto":
        kind = "flat" if n <= EXACT_MAX_ITEMS else "ivf"
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 200
        index.hnsw.efSearch = ef_search
    elif kind == "ivf":
        nlist = nlist or int(max(16, 4 * np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = nprobe
    else:
        raise ValueError(f"unknown index kind {kind!r}: use flat, hnsw, ivf or auto")
    index.add(vectors)
    return index


def save_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load_index(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))


def search(
    index: faiss.Index, query: np.ndarray, n: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-`n` (indices, scores) for one query vector, never returning an excluded index.

    Over-fetches by the number of exclusions and filters, which stays exact for the
    flat index and is cheaper than an id selector for short exclusion lists; the served
    (re-scored) index skips exclusions inside FAISS instead (`search_excluding`).
    """
    n_excl = 0 if exclude is None else len(exclude)
    q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
    skipped_inside = n_excl > 0 and isinstance(index, RefinedIndex)
    if skipped_inside:
        scores, idx = index.search_excluding(q, min(index.ntotal, n), exclude)
    else:
        scores, idx = index.search(q, min(index.ntotal, n + n_excl))
    idx, scores = idx[0], scores[0]
    keep = idx >= 0
    if n_excl and not skipped_inside:
        keep &= ~np.isin(idx, exclude)
    return idx[keep][:n], scores[keep][:n]
