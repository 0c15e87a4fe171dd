"""Memory over hot swaps: the co-located gateway's two stages (retrieval and ranking in one
process, as `make bench-serving` runs them) swap to a freshly loaded copy of a bundle again
and again, and the process's resident memory is sampled after each swap."""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from shortlist.bundle.files import load_bundle
from shortlist.config import Settings
from shortlist.feedback.stores import RedisStateStore
from shortlist.models.progress import track
from shortlist.ranking.context import RequestContext
from shortlist.services.local import LocalRanker, LocalRetriever

WARMUP_SWAPS = 5


def run(
    bundle_path: Path,
    swaps: int,
    redis_url: str,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    settings = Settings.from_env({}, redis_url=redis_url, redis_prefix="slbench:swaps:")
    store = RedisStateStore(settings.redis_url, settings.redis_prefix)
    process = psutil.Process()
    first = load_bundle(bundle_path)
    retriever = LocalRetriever(first, store, settings)
    ranker = LocalRanker(first, store, settings)
    del first
    user = retriever.bundle.users.id(0)
    rss = [process.memory_info().rss]
    seconds = []
    for n in track(range(1, swaps + 1), "hot swaps"):
        start = time.perf_counter()
        # a new version each time, as a nightly bundle would be (loaded from disk anew)
        new = dataclasses.replace(load_bundle(bundle_path), version=f"swap-{n}")
        retriever.use_bundle(new)
        ranker.use_bundle(new)
        del new
        candidates = retriever.retrieve(user, 200, [], "", None)
        ranker.rank(user, candidates, RequestContext(), {}, 20, None)
        gc.collect()
        seconds.append(time.perf_counter() - start)
        rss.append(process.memory_info().rss)
        progress(f"swap {n}: rss {rss[-1] / 2**20:.0f} MB ({seconds[-1]:.1f} s)")
    # From the second swap on the set holds two bundles; the allocator takes a few more
    # swaps to settle into reusing the pages freed bundles leave. Growth is measured from
    # the warm-up swap to the last one, and from the second swap too.
    warm = min(WARMUP_SWAPS, swaps // 2)
    return {
        "bench": "swaps",
        "bundle": str(bundle_path),
        "swaps": swaps,
        "bundles_held": len(retriever.bundles.by_version),
        "rss_mb_by_swap": [round(r / 2**20, 1) for r in rss],
        "warmup_swaps": warm,
        "rss_growth_20_swaps": round(rss[-1] / rss[warm] - 1.0, 4),
        "rss_growth_from_second_swap": round(rss[-1] / rss[min(2, swaps)] - 1.0, 4),
        "swap_seconds_mean": round(sum(seconds) / len(seconds), 2),
    }
