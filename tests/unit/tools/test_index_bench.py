"""`shortlist bench index` on small generated vectors: what it measures can fail."""

import numpy as np

from shortlist.tools.bench.index_bench import measure


def test_index_bench_measures_every_candidate_including_the_served_form():
    rng = np.random.default_rng(0)
    items = rng.standard_normal((3000, 32)).astype(np.float32)
    users = rng.standard_normal((400, 32)).astype(np.float32)
    result = measure(items, users, n_queries=200, k=50, progress=lambda _: None)
    rows = {(r["kind"], r.get("nprobe"), r.get("refine")): r for r in result["candidates"]}
    assert rows[("flat", None, None)]["recall@100"] == 1.0
    served = [r for r in result["candidates"] if r["kind"] == "served"]
    assert served and all(0.0 < r["recall@100"] <= 1.0 for r in served)
    ivf = [r["recall@100"] for r in result["candidates"] if r["kind"] == "ivf"]
    assert ivf == sorted(ivf), "more lists probed never finds fewer true neighbours"
    chosen = result["chosen"]
    assert chosen["kind"] == "flat" or chosen["recall@100"] >= 0.98
