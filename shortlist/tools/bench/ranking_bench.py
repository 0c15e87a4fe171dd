"""`shortlist bench ranking`: the ranking service alone, over gRPC, on real shortlists.

Starts the ranking service on a free port over the real Redis (features: bundle + one
pipelined Redis round trip per request), takes each sampled user's real retrieval shortlist
(FAISS top-N of their trained vector), sends one Rank request at a time with a request
context, and prints latency percentiles. One request at a time measures the service's own
time, not queueing.

By default the service runs as its own process (`shortlist serve ranking`), as it is
deployed; `in_process=True` serves it from the benchmark's process, where the client's and
the server's threads share one GIL (the former default;
docs/decisions/0006-ranking-service-speed.md).
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shortlist.bundle.files import load_bundle
from shortlist.config import Settings
from shortlist.retrieval.index import search
from shortlist.rpc.server import client_channel
from shortlist.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc

MOMENTS = ("commute", "home")


def run(
    bundle_dir: str | Path,
    requests: int = 2000,
    candidates: int = 200,
    k: int = 20,
    redis_url: str = "redis://127.0.0.1:6379/0",
    progress: Callable[[str], None] | None = None,
    in_process: bool = False,
) -> dict[str, Any]:
    from shortlist.feedback.stores import RedisStateStore
    from shortlist.services.launch import freeze_loaded_objects, start_service
    from shortlist.tools.stack import free_port, serve_process, stop_process

    say = progress or (lambda _m: None)
    bundle = load_bundle(Path(bundle_dir))
    if bundle.ranker is None:
        raise ValueError(f"bundle {bundle.version} has no ranker")
    prefix = f"slbench:{uuid.uuid4().hex[:8]}:"
    settings = Settings.from_env({}, redis_url=redis_url, redis_prefix=prefix)
    store = RedisStateStore(redis_url, prefix)
    rng = np.random.default_rng(0)
    users = rng.choice(len(bundle.users), size=min(requests, len(bundle.users)), replace=False)
    say(f"building {len(users)} shortlists of {candidates} from the bundle's index")
    payloads = []
    for u in users:
        exclude = bundle.seen.indices[bundle.seen.indptr[u] : bundle.seen.indptr[u + 1]]
        idx, scores = search(bundle.index, bundle.user_vectors[u], candidates, exclude)
        payloads.append(
            ranking_pb2.RankRequest(
                user_id=bundle.users.id(int(u)),
                candidates=[
                    common_pb2.ScoredItem(item_id=i, score=float(s))
                    for i, s in zip(bundle.items.ids(idx), scores)
                ],
                # "moment" is a feature only of bundles whose training likes recorded it
                context={"hour": str(int(u) % 24), "device": "ios", "moment": MOMENTS[u % 2]},
                k=k,
            )
        )
    if in_process:
        started = start_service("ranking", settings, bundle, "127.0.0.1:0", store)
        target, stop = f"127.0.0.1:{started.server.port}", started.stop
    else:
        target = f"127.0.0.1:{free_port()}"
        say(f"starting the ranking service on {target}")
        served = settings.replace(
            bundle=str(bundle_dir), ranking_addr=target, ranking_metrics_port=0, bundle_poll_ms=0
        )
        pid = serve_process("ranking", served, "bench-ranking")
        stop = lambda: stop_process(pid)  # noqa: E731
    # as `shortlist serve` does once a service is up; the client's own collections of what
    # it loaded would otherwise add to the latencies too
    freeze_loaded_objects()
    latencies = []
    try:
        with client_channel(target) as channel:
            rank = ranking_pb2_grpc.RankingStub(channel).Rank
            for p in payloads[:50]:  # warm-up
                rank(p, timeout=5)
            say(f"timing {requests} Rank calls, one at a time")
            for n in range(requests):
                p = payloads[n % len(payloads)]
                start = time.perf_counter()
                reply = rank(p, timeout=5)
                latencies.append(time.perf_counter() - start)
                if len(reply.items) != min(k, len(p.candidates)):
                    raise RuntimeError(f"Rank returned {len(reply.items)} items")
    finally:
        stop()
        store.close()
    ms = np.array(latencies) * 1000
    return {
        "bundle": bundle.version,
        "items": len(bundle.items),
        "candidates": candidates,
        "k": k,
        "requests": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
        "server": "in_process" if in_process else "process",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}",
    }
