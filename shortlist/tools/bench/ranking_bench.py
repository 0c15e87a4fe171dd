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

`reasons_and_rules=True` sends every request in four variants, interleaved so that a shared
host's noise falls on all alike: plain, with reasons, with rules (a filter, a cap, a pin
and a freshness boost, `bench_rules`), and with both; each variant's percentiles and its
p50 over the plain one's are reported (docs/decisions/0035-reasons-and-rules.md).
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
from shortlist.feedback.stores.base import UserState
from shortlist.models.progress import track
from shortlist.retrieval.index import search
from shortlist.retrieval.retrieve import fused_source, retrieve
from shortlist.rpc.server import client_channel
from shortlist.tools.bench.sizes import source_sizes
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
    reasons_and_rules: bool = False,
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
    fused = fused_source(bundle)
    say(
        f"building {len(users)} shortlists of {candidates} "
        + ("as retrieval serves them (fused)" if fused else "from the bundle's index")
    )
    payloads = []
    for u in users:
        idx, scores, sources = _shortlist(bundle, int(u), candidates)
        payloads.append(
            ranking_pb2.RankRequest(
                user_id=bundle.users.id(int(u)),
                candidates=[
                    common_pb2.ScoredItem(
                        item_id=i, score=float(s), reasons=common_pb2.Reasons(sources=src)
                    )
                    for i, s, src in zip(bundle.items.ids(idx), scores, sources)
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
    variants = bench_variants(bundle) if reasons_and_rules else {"plain": {}}
    latencies: dict[str, list[float]] = {name: [] for name in variants}
    try:
        with client_channel(target) as channel:
            rank = ranking_pb2_grpc.RankingStub(channel).Rank
            for p in payloads[:50]:  # warm-up
                for extra in variants.values():
                    rank(_with(p, extra), timeout=5)
            say(f"timing {requests} Rank calls per variant, one at a time")
            for n in track(range(requests), "Rank calls", every=50):
                for name, extra in variants.items():
                    p = _with(payloads[n % len(payloads)], extra)
                    start = time.perf_counter()
                    reply = rank(p, timeout=5)
                    latencies[name].append(time.perf_counter() - start)
                    expected = min(k, len(p.candidates))
                    # caps may leave fewer than k of a shortlist short of some values
                    if not 0 < len(reply.items) <= expected or (
                        "rules" not in extra and len(reply.items) != expected
                    ):
                        raise RuntimeError(f"Rank returned {len(reply.items)} items")
    finally:
        stop()
        store.close()
    result = {
        "bundle": bundle.version,
        "items": len(bundle.items),
        "candidates": candidates,
        "k": k,
        **_percentiles(latencies["plain"]),
        "server": "in_process" if in_process else "process",
        "shortlist": "fused" if fused else "vector",
        "fusion": bundle.fusion.to_json() if bundle.fusion is not None else None,
        "source_sizes": source_sizes(bundle_dir, bundle),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}",
    }
    if reasons_and_rules:
        base = result["p50_ms"]
        result["variants"] = {
            name: {
                **_percentiles(values),
                "p50_over_plain_ms": round(_percentiles(values)["p50_ms"] - base, 3),
            }
            for name, values in latencies.items()
        }
    return result


def _shortlist(bundle, u: int, n: int) -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    """User `u`'s shortlist of `n` as the retrieval service answers a trained user without
    live feedback: the fused one (with each item's sources) where the bundle fuses sources,
    else the FAISS top-n of their vector."""
    if fused_source(bundle):
        found = retrieve(bundle, bundle.users.id(u), UserState(), n)
        return found.items, found.scores, list(found.sources) or [()] * len(found.items)
    exclude = bundle.seen_items(u)
    idx, scores = search(bundle.index, bundle.user_vectors[u], n, exclude)
    return idx, scores, [()] * len(idx)


def _percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.array(latencies) * 1000
    return {
        "requests": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def bench_rules(bundle) -> common_pb2.Rules:
    """Every kind of rule once: exclude one value and cap every value of the bundle's
    first item attribute at 3, pin one item, boost items upserted in the last hour."""
    rules = common_pb2.Rules()
    if bundle.item_attribute_values:
        name, values = sorted(bundle.item_attribute_values.items())[0]
        rules.exclude.add(attribute=name, values=[values[0]])
        rules.caps.add(attribute=name, max_items=3)
    rules.pinned.add(item_id=bundle.items.id(0), position=1)
    rules.freshness.window_seconds = 3600
    rules.freshness.boost = 0.5
    return rules


def bench_variants(bundle) -> dict[str, dict[str, Any]]:
    rules = bench_rules(bundle)
    return {
        "plain": {},
        "reasons": {"with_reasons": True},
        "rules": {"rules": rules},
        "both": {"with_reasons": True, "rules": rules},
    }


def _with(request: ranking_pb2.RankRequest, extra: dict[str, Any]) -> ranking_pb2.RankRequest:
    if not extra:
        return request
    copy = ranking_pb2.RankRequest()
    copy.CopyFrom(request)
    if extra.get("with_reasons"):
        copy.with_reasons = True
    if "rules" in extra:
        copy.rules.CopyFrom(extra["rules"])
    return copy
