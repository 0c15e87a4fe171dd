"""The bytes each candidate source of a bundle takes, on disk and in memory, for the benches'
JSON: the vector model's FAISS index (and its vectors), the item-item source's sparse
neighbour table, the weighted-MF source's item factors, popularity, and the precomputed
(fused) shortlists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from shortlist.retrieval.precomputed import ITEMS_FILE, ROWS_FILE, SCORES_FILE, SOURCES_FILE


def _file(directory: Path, name: str) -> int:
    path = directory / name
    return path.stat().st_size if path.exists() else 0


def csr_bytes(m: sp.spmatrix) -> int:
    """In-memory bytes of a CSR table: values, column indices and row pointers."""
    m = m.tocsr()
    return int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes)


def source_sizes(bundle_dir: str | Path, bundle: Any) -> dict[str, dict[str, int | str]]:
    """Per source, `file_bytes` (what the bundle stores) and `memory_bytes` (what serving
    holds); `bundle` is the loaded bundle of `bundle_dir`'s latest version."""
    root = Path(bundle_dir)
    latest = root / "LATEST"
    directory = root / latest.read_text().strip() if latest.exists() else root
    fusion = getattr(bundle, "fusion", None)
    primary = fusion.primary if fusion is not None else "vector"
    out: dict[str, dict[str, int | str]] = {}
    index = getattr(bundle, "index", None)
    out[primary] = {
        "kind": "faiss",
        "index_file_bytes": _file(directory, "index.faiss"),
        "index_memory_bytes": int(faiss.serialize_index(index).nbytes)
        if isinstance(index, faiss.Index)
        else 0,
        "item_vectors_bytes": int(np.asarray(bundle.item_vectors).nbytes),
        "user_vectors_bytes": int(np.asarray(bundle.user_vectors).nbytes),
    }
    if getattr(bundle, "item_item", None) is not None:
        out["item-item"] = {
            "kind": "sparse",
            "file_bytes": _file(directory, "item_item.npz"),
            "memory_bytes": csr_bytes(bundle.item_item),
            "nnz": int(bundle.item_item.nnz),
        }
    mf = getattr(bundle, "ials", None)
    if mf is not None:
        out["ials"] = {
            "kind": "dense",
            "file_bytes": _file(directory, "ials.npz"),
            "memory_bytes": int(mf.item_factors.nbytes + mf.gram.nbytes),
            "factors": int(mf.item_factors.shape[1]),
        }
    out["popularity"] = {
        "kind": "dense",
        "file_bytes": _file(directory, "popularity.npy"),
        "memory_bytes": int(np.asarray(bundle.popularity).nbytes),
    }
    pre = sum(_file(directory, f) for f in (ITEMS_FILE, SCORES_FILE, SOURCES_FILE, ROWS_FILE))
    if pre:
        out["precomputed"] = {"kind": "dense", "file_bytes": pre}
    return out
