"""`shortlist bench state`: the Redis state store on one Redis and on a local Redis Cluster
of three masters (all on this host): memory per user, the feedback worker's write path
(prepare + apply of 500-event chunks, as one consumer does) and request reads, one client
thread each. The per-user and per-core figures docs/scaling.md extrapolates from."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores import RedisStateStore, StateStore
from shortlist.models.progress import track
from shortlist.tools.redis_cluster import LocalRedisCluster
from shortlist.tools.stack import free_port, port_open, wait_for


@dataclass
class StateBenchConfig:
    users: int = 4000
    events_per_user: int = 25
    items: int = 20_000
    dim: int = 1280  # the spectral model's vector size on Gowalla
    reads: int = 5000
    chunk: int = 500
    seed: int = 0


def _events(cfg: StateBenchConfig) -> list[Event]:
    rng = np.random.default_rng(cfg.seed)
    kinds = [Kind.LIKE, Kind.LIKE, Kind.VIEW, Kind.DISLIKE, Kind.SKIP]
    out = []
    for n in range(cfg.users * cfg.events_per_user):
        user = f"user-{int(rng.integers(cfg.users)):07d}"
        item = f"item-{int(rng.integers(cfg.items)):07d}"
        out.append(Event(f"ev-{n:09d}", user, item, kinds[n % len(kinds)], n))
    return out


def _write(store: StateStore, events: list[Event], cfg: StateBenchConfig) -> float:
    """Events per second through prepare + apply (with seqs), chunks of whole users."""
    rng = np.random.default_rng(cfg.seed + 1)
    start = time.perf_counter()
    for lo in track(range(0, len(events), cfg.chunk), "state writes"):
        chunk = events[lo : lo + cfg.chunk]
        pending = store.prepare(chunk, "v1")
        users = {e.user_id for e in chunk}
        vectors = {u: rng.standard_normal(cfg.dim).astype(np.float32) for u in users}
        store.apply(chunk, vectors, "v1", {u: pending.users[u].seq for u in users})
    return len(events) / (time.perf_counter() - start)


def _read(store: StateStore, users: list[str], cfg: StateBenchConfig) -> dict[str, float]:
    rng = np.random.default_rng(cfg.seed + 2)
    latencies = []
    start = time.perf_counter()
    for n in track(rng.integers(len(users), size=cfg.reads), "state reads", every=100):
        t = time.perf_counter()
        store.user_state(users[int(n)], "v1")
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "per_s": round(cfg.reads / elapsed),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def run(cfg: StateBenchConfig, progress=print) -> dict[str, Any]:
    events = _events(cfg)
    users = sorted({e.user_id for e in events})
    result: dict[str, Any] = {
        "bench": "state",
        "users": len(users),
        "events": len(events),
        "dim": cfg.dim,
    }
    folder = tempfile.mkdtemp(prefix="shortlist-state-bench-")
    port = free_port()
    single = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
        + ["--save", "", "--appendonly", "no", "--dir", folder],
        stdout=subprocess.DEVNULL,
    )
    cluster = LocalRedisCluster(masters=3)
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 15, "redis-server")
        cluster.start()
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        for name, target in (("redis", url), ("cluster", cluster.url)):
            store = RedisStateStore(target, "bench:")
            before = client.info("memory")["used_memory"] if name == "redis" else 0
            progress(f"{name}: writing {len(events):,} events of {len(users):,} users")
            row: dict[str, Any] = {"write_events_per_s": round(_write(store, events, cfg))}
            if name == "redis":
                used = client.info("memory")["used_memory"] - before
                row["bytes_per_user"] = round(used / len(users))
                row["vector_bytes"] = 4 * cfg.dim
            progress(f"{name}: {cfg.reads:,} request reads")
            row["read"] = _read(store, users, cfg)
            store.close()
            result[name] = row
    finally:
        cluster.stop()
        single.terminate()
        single.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    return result
