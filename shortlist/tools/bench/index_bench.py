"""`shortlist bench index`: choose the FAISS index by measurement.

For each candidate index over the item vectors: recall@100 of its top-100 against exact
inner-product search, and single-query latency (one thread, batch of one, as the
retrieval service searches). The chosen index is the fastest with recall >= the floor.
Candidates include the form the retrieval service actually searches for a large IVF
index (`served`: fast-scan PQ on the IVF lists, re-scored exactly by IndexRefineFlat).
"""

from __future__ import annotations

import time
from typing import Any

import faiss
import numpy as np

from shortlist.models.progress import track
from shortlist.retrieval.index import SERVED_NPROBE, SERVED_REFINE, build_index, served_index


def exact_top(item_vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    flat = build_index(item_vectors, "flat")
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def recall_against(truth: np.ndarray, found: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth, found))
    return hits / truth.size


def time_single_queries(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[float, float]:
    """(mean, p99) milliseconds per query, one query per search call."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    for row in q[:20]:  # warm caches
        index.search(row[None], k)
    times = []
    for row in q:
        start = time.perf_counter()
        index.search(row[None], k)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.mean(times)), float(np.percentile(times, 99))


def candidate_specs(n_items: int) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = [{"kind": "flat"}]
    for ef in (128, 512):
        specs.append({"kind": "hnsw", "m": 32, "ef_search": ef})
    nlist = int(max(16, 4 * np.sqrt(n_items)))
    for nprobe in (32, 64, 96, 128, 192):
        specs.append({"kind": "ivf", "nlist": nlist, "nprobe": nprobe})
    for nprobe, refine in dict.fromkeys(((256, 3), (256, 4), (SERVED_NPROBE, SERVED_REFINE))):
        specs.append({"kind": "served", "nlist": nlist, "nprobe": nprobe, "refine": refine})
    return specs


def measure(
    item_vectors: np.ndarray,
    user_vectors: np.ndarray,
    n_queries: int = 1000,
    k: int = 100,
    recall_floor: float = 0.98,
    seed: int = 0,
    progress=print,
) -> dict[str, Any]:
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    queries = user_vectors[rng.choice(len(user_vectors), min(n_queries, len(user_vectors)), False)]
    truth = exact_top(item_vectors, queries, k)
    rows = []
    built: dict[tuple, faiss.Index] = {}
    for spec in track(candidate_specs(len(item_vectors)), "index candidates"):
        kind = "ivf" if spec["kind"] == "served" else spec["kind"]
        key = (kind, spec.get("m"), spec.get("nlist"))
        start = time.perf_counter()
        if key not in built:
            built[key] = build_index(
                item_vectors, kind, hnsw_m=spec.get("m", 32), nlist=spec.get("nlist")
            )
        index = built[key]
        if spec["kind"] == "served":
            index = served_index(index, item_vectors, nprobe=spec["nprobe"], refine=spec["refine"])
        build_s = time.perf_counter() - start
        if spec["kind"] == "hnsw":
            index.hnsw.efSearch = spec["ef_search"]
        if spec["kind"] == "ivf":
            index.nprobe = spec["nprobe"]
        found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]
        mean_ms, p99_ms = time_single_queries(index, queries, k)
        row = {
            **spec,
            "recall@100": round(recall_against(truth, found), 4),
            "mean_ms": round(mean_ms, 4),
            "p99_ms": round(p99_ms, 4),
            "build_s": round(build_s, 2),
        }
        progress(str(row))
        rows.append(row)
    exact_ms = rows[0]["mean_ms"]
    for row in rows:
        row["speedup"] = round(exact_ms / row["mean_ms"], 2)
    good = [r for r in rows[1:] if r["recall@100"] >= recall_floor]
    chosen = min(good, key=lambda r: r["mean_ms"]) if good else rows[0]
    return {
        "bench": "index",
        "items": int(item_vectors.shape[0]),
        "dim": int(item_vectors.shape[1]),
        "queries": len(queries),
        "candidates": rows,
        "chosen": chosen,
    }
