"""`shortlist bench pod-memory`: memory of a retrieval and a ranking pod as users grow.

For each size (users; same item catalogue), a bundle of a linear model with generated likes
is written once (kept under `--work` and reused), then each service runs as its own process
(`python -m shortlist.services NAME`, as in a container) over it, serves requests, and its
memory is read with psutil: RSS, PSS (RSS with shared pages divided among the processes
sharing them) and USS (pages only it holds). `--pods 2` runs two processes of a service on
the bundle at once, as two pods on one node: memory-mapped per-user files are shared between
them (their PSS falls), copies are not.

`--old-code DIR` also runs a checkout of the code before per-user data was memory-mapped
(e.g. the main branch) on the same bundle: the bundle then also carries the older layout's
files (users.json, user_vectors.npy, likes.npz, ...), which that code reads into memory.

The generated bundle is built for memory, not for quality: items have random vectors, each
user's likes are drawn from a skewed popularity, the precomputed shortlists are random items.
Retrieve asks alternately for n=20 (answered from the precomputed shortlist) and n=2*width
(more than it holds: the user's vector, computed from their likes and the item encoder, is
searched), so that both paths run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from shortlist.bundle.bundle import Bundle
from shortlist.bundle.files import resolve_bundle_dir, save_bundle
from shortlist.bundle.integrity import MANIFEST, write_manifest
from shortlist.bundle.promotion import promote
from shortlist.data.ids import IdMap
from shortlist.feedback.foldin import FoldInTargets
from shortlist.models.progress import track
from shortlist.retrieval.index import build_index
from shortlist.retrieval.precomputed import ITEMS_FILE, SCORES_FILE

CHUNK = 200_000  # users generated at a time (bounds the generator's memory)


@dataclass
class PodMemoryConfig:
    sizes: tuple[int, ...] = (30_000, 300_000, 3_000_000)
    items: int = 20_000
    dim: int = 128
    likes_per_user: int = 10
    width: int = 50  # precomputed shortlist per user
    requests: int = 400
    pods: int = 2
    services: tuple[str, ...] = ("retrieval", "ranking")
    old_code: str = ""  # a checkout of the code before (empty: the new code alone)
    # the old code computes the ranking's co-occurrence from every like when it starts:
    # skipped above this many users (it alone would take more than this host has)
    old_ranking_max_users: int = 300_000
    work: Path = Path("reports/pod-memory")
    start_timeout_s: float = 1800.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    seed: int = 0
    notes: list[str] = field(default_factory=list)


def _say(progress, msg: str) -> None:
    if progress:
        progress(msg)


def _likes(n_users: int, cfg: PodMemoryConfig, rng: np.random.Generator) -> sp.csr_matrix:
    """Users x items likes, 1 + Poisson(likes_per_user - 1) per user, items drawn from a
    Zipf-like popularity; built in chunks of users."""
    pop = 1.0 / (np.arange(cfg.items) + 10.0) ** 0.9
    cdf = np.cumsum(pop / pop.sum())
    indices, lengths = [], []
    for lo in track(range(0, n_users, CHUNK), "likes generated"):
        hi = min(n_users, lo + CHUNK)
        counts = 1 + rng.poisson(cfg.likes_per_user - 1, hi - lo)
        cols = np.minimum(np.searchsorted(cdf, rng.random(int(counts.sum()))), cfg.items - 1)
        rows = np.repeat(np.arange(hi - lo), counts)
        part = sp.csr_matrix(
            (np.ones(len(cols), np.float32), (rows, cols)), shape=(hi - lo, cfg.items)
        )
        part.sum_duplicates()
        indices.append(part.indices.astype(np.int32))
        lengths.append(np.diff(part.indptr))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
    nnz = int(indptr[-1])
    return sp.csr_matrix(
        (np.ones(nnz, np.float32), np.concatenate(indices), indptr), shape=(n_users, cfg.items)
    )


def _random_rows(n_rows: int, n_cols: int, per_row: int, rng) -> sp.csr_matrix:
    cols = rng.integers(0, n_cols, n_rows * per_row)
    rows = np.repeat(np.arange(n_rows), per_row)
    m = sp.csr_matrix((rng.random(len(cols)).astype(np.float32), (rows, cols)), (n_rows, n_cols))
    m.sum_duplicates()
    return m


def generate_bundle(n_users: int, cfg: PodMemoryConfig, progress=None) -> Path:
    """The bundle directory for `n_users` (written once, reused while its parameters match)."""
    root = cfg.work / f"users-{n_users}"
    params = {
        "users": n_users,
        "items": cfg.items,
        "dim": cfg.dim,
        "likes_per_user": cfg.likes_per_user,
        "width": cfg.width,
        "seed": cfg.seed,
        "old_layout": bool(cfg.old_code),
    }
    if (root / "LATEST").exists():
        manifest = json.loads((resolve_bundle_dir(root) / MANIFEST).read_text())
        if manifest.get("pod_memory") == params:
            return root
    _say(progress, f"generating a bundle of {n_users:,} users x {cfg.items:,} items")
    rng = np.random.default_rng(cfg.seed)
    likes = _likes(n_users, cfg, rng)
    encoder = (0.1 * rng.normal(size=(cfg.items, cfg.dim))).astype(np.float32)
    item_vectors = rng.normal(size=(cfg.items, cfg.dim)).astype(np.float32)
    item_vectors /= np.linalg.norm(item_vectors, axis=1, keepdims=True)
    counts = np.diff(likes.indptr)
    recent = likes.copy()  # data: age rank within the user, 0 = newest
    recent.data = (np.arange(likes.nnz) - np.repeat(likes.indptr[:-1], counts)).astype(np.float32)
    users = IdMap(f"user-{u:08d}" for u in range(n_users))
    bundle = Bundle(
        version=f"pod-memory-{n_users}",
        users=users,
        items=IdMap(f"item-{i:06d}" for i in range(cfg.items)),
        user_vectors=np.zeros((0, cfg.dim), np.float32),  # replaced by user_weights
        item_vectors=item_vectors,
        index=build_index(item_vectors, "auto"),
        likes=likes,
        dislikes=_random_rows(n_users, cfg.items, 1, rng),
        recent_likes=recent,
        popularity=np.bincount(likes.indices, minlength=cfg.items).astype(np.float32),
        item_features=np.zeros((cfg.items, 0), np.float32),
        item_feature_names=[],
        foldin=FoldInTargets(1.0, 0.0, 1.0),
        item_encoder=encoder,
        user_weights=likes,
        cooc=_random_rows(cfg.items, cfg.items, 20, rng),
        manifest={"model": "spectral", "pod_memory": params},
    )
    del users
    directory = save_bundle(bundle, root, promote_it=False)
    _say(progress, "writing the precomputed shortlists")
    _precomputed(directory, n_users, cfg, rng)
    if cfg.old_code:
        _say(progress, "writing the older layout's files for --old-code")
        _old_layout(directory, bundle)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest.pop("files", None)
    write_manifest(directory, manifest, None)
    promote(root, bundle.version, "pod-memory benchmark")
    return root


def _precomputed(directory: Path, n_users: int, cfg: PodMemoryConfig, rng) -> None:
    items = np.lib.format.open_memmap(directory / ITEMS_FILE, "w+", np.int32, (n_users, cfg.width))
    scores = np.lib.format.open_memmap(
        directory / SCORES_FILE, "w+", np.float32, (n_users, cfg.width)
    )
    for lo in track(range(0, n_users, CHUNK), "precomputed written"):
        hi = min(n_users, lo + CHUNK)
        items[lo:hi] = rng.integers(0, cfg.items, (hi - lo, cfg.width), dtype=np.int32)
        scores[lo:hi] = -np.sort(-rng.random((hi - lo, cfg.width), np.float32), axis=1)
    items.flush()
    scores.flush()
    del items, scores


def _old_layout(directory: Path, bundle: Bundle) -> None:
    """The files code before the mapped layout reads: stored user vectors and .npz
    interactions (users.json is written by both)."""
    weights, encoder = bundle.user_weights, bundle.item_encoder
    vectors = np.lib.format.open_memmap(
        directory / "user_vectors.npy", "w+", np.float32, (weights.shape[0], encoder.shape[1])
    )
    for lo in track(range(0, weights.shape[0], CHUNK), "old-layout vectors"):
        vectors[lo : lo + CHUNK] = weights[lo : lo + CHUNK] @ encoder
    vectors.flush()
    del vectors
    for name in ("likes", "dislikes", "recent_likes"):
        sp.save_npz(directory / f"{name}.npz", getattr(bundle, name).tocsr(), compressed=False)


def _memory(pid: int) -> dict[str, float]:
    import psutil

    info = psutil.Process(pid).memory_full_info()
    mb = 1 << 20
    return {
        "rss_mb": round(info.rss / mb, 1),
        "pss_mb": round(getattr(info, "pss", float("nan")) / mb, 1),
        "uss_mb": round(info.uss / mb, 1),
    }


def _start(name: str, code: str, root: Path, cfg: PodMemoryConfig) -> tuple[Any, str]:
    from shortlist.tools.stack import free_port

    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": code,
        "SHORTLIST_BUNDLE": str(root.resolve()),
        f"SHORTLIST_{name.upper()}_ADDR": f"127.0.0.1:{port}",
        f"SHORTLIST_{name.upper()}_METRICS_PORT": str(free_port()),
        "SHORTLIST_REDIS_URL": cfg.redis_url,
        "SHORTLIST_REDIS_PREFIX": f"podmem-bench-{os.getpid()}:",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "shortlist.services", name],
        cwd=code,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return proc, f"127.0.0.1:{port}"


def _wait_serving(proc, target: str, timeout_s: float) -> float:
    from shortlist.tools.stack import grpc_serving

    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}: {proc.stderr.read().decode()[-600:]}")
        if grpc_serving(target):
            return time.monotonic() - start
        time.sleep(0.5)
    raise TimeoutError(f"not serving after {timeout_s:.0f}s")


def _serve_requests(name: str, target: str, n_users: int, cfg: PodMemoryConfig) -> int:
    """Requests for random users; the number answered."""
    import grpc

    from shortlist.v1 import (
        common_pb2,
        ranking_pb2,
        ranking_pb2_grpc,
        retrieval_pb2,
        retrieval_pb2_grpc,
    )

    rng = np.random.default_rng(1)
    ok = 0
    with grpc.insecure_channel(target) as channel:
        if name == "retrieval":
            stub = retrieval_pb2_grpc.RetrievalStub(channel)
            for r in track(range(cfg.requests), "Retrieve calls", every=20):
                n = 20 if r % 2 == 0 else 2 * cfg.width
                user = f"user-{int(rng.integers(n_users)):08d}"
                reply = stub.Retrieve(retrieval_pb2.RetrieveRequest(user_id=user, n=n), timeout=30)
                ok += len(reply.candidates) > 0
        else:
            stub = ranking_pb2_grpc.RankingStub(channel)
            for _ in track(range(cfg.requests), "Rank calls", every=20):
                user = f"user-{int(rng.integers(n_users)):08d}"
                items = rng.choice(cfg.items, 100, replace=False)
                candidates = [
                    common_pb2.ScoredItem(item_id=f"item-{i:06d}", score=1.0 / (1 + j))
                    for j, i in enumerate(items)
                ]
                request = ranking_pb2.RankRequest(user_id=user, candidates=candidates, k=10)
                ok += len(stub.Rank(request, timeout=30).items) > 0
    return ok


def measure(name: str, code: str, root: Path, n_users: int, cfg: PodMemoryConfig) -> dict:
    """`cfg.pods` processes of service `name` from the checkout `code` over the bundle:
    each one's memory once serving and after the requests."""
    started = [_start(name, code, root, cfg) for _ in range(cfg.pods)]
    try:
        load_s = [_wait_serving(p, t, cfg.start_timeout_s) for p, t in started]
        answered = [_serve_requests(name, t, n_users, cfg) for _, t in started]
        after = [_memory(p.pid) for p, _ in started]
    finally:
        for proc, _ in started:
            proc.terminate()
        for proc, _ in started:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    first = after[0]
    return {
        **first,
        "pss_mb_per_pod": [m["pss_mb"] for m in after],
        "rss_mb_per_pod": [m["rss_mb"] for m in after],
        "answered": answered,
        "start_s": [round(s, 1) for s in load_s],
    }


def vector_cost(
    dim: int, likes_per_user: int, items: int = 40_981, users: int = 30_000, calls: int = 3000
) -> dict[str, Any]:
    """Microseconds to compute one user's vector from their like weights and the item
    encoder (`EncodedVectors`) against reading a stored row, for random users (in-process;
    the default catalogue is Gowalla's size)."""
    from shortlist.data.mapped import EncodedVectors

    rng = np.random.default_rng(0)
    encoder = rng.normal(size=(items, dim)).astype(np.float32)
    counts = 1 + rng.poisson(likes_per_user - 1, users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    cols = rng.integers(0, items, int(indptr[-1])).astype(np.int32)
    weights = sp.csr_matrix((np.ones(len(cols), np.float32), cols, indptr), (users, items))
    computed, stored = EncodedVectors(weights, encoder), np.asarray(weights @ encoder)
    asked = [int(u) for u in rng.integers(0, users, calls)]
    out: dict[str, Any] = {"dim": dim, "likes_per_user": likes_per_user}
    for name, read in (("computed_us", computed.__getitem__), ("stored_us", stored.__getitem__)):
        start = time.perf_counter()
        for u in asked:
            np.array(read(u))
        out[name] = round((time.perf_counter() - start) / calls * 1e6, 1)
    return out


def run(cfg: PodMemoryConfig, progress=None) -> dict[str, Any]:
    _say(progress, "vector cost: computed per request against a stored row")
    costs = [vector_cost(cfg.dim, cfg.likes_per_user), vector_cost(1280, 34)]
    new_code = str(Path(__file__).resolve().parents[3])
    codes = {"new": new_code, **({"old": cfg.old_code} if cfg.old_code else {})}
    rows = []
    for n_users in cfg.sizes:
        row: dict[str, Any] = {"users": n_users}
        try:
            start = time.monotonic()
            root = generate_bundle(n_users, cfg, progress)
            row["generate_s"] = round(time.monotonic() - start, 1)
            row["bundle_mb"] = round(
                sum(f.stat().st_size for f in resolve_bundle_dir(root).iterdir()) / (1 << 20)
            )
        except (MemoryError, OSError) as exc:
            row["error"] = f"bundle not generated: {exc}"
            rows.append(row)
            continue
        for label, code in codes.items():
            for name in cfg.services:
                key = f"{name}_{label}"
                if label == "old" and name == "ranking" and n_users > cfg.old_ranking_max_users:
                    row[key] = None
                    row[f"{key}_why"] = (
                        "the old code computes the co-occurrence table from every like "
                        f"when it starts; not run above {cfg.old_ranking_max_users:,} users"
                    )
                    continue
                _say(progress, f"{n_users:,} users: {name} ({label} code), {cfg.pods} pod(s)")
                try:
                    row[key] = measure(name, code, root, n_users, cfg)
                except (RuntimeError, TimeoutError, MemoryError) as exc:
                    row[key] = None
                    row[f"{key}_why"] = str(exc)[-300:]
                _say(progress, f"  {key}: {row[key]}")
        rows.append(row)
    settings = asdict(cfg)
    settings["work"] = str(cfg.work)
    settings.pop("notes")
    return {
        "sizes": rows,
        "vector_cost": costs,
        "config": settings,
        "load_average": list(os.getloadavg()),
    }
