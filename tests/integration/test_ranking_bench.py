"""`shortlist bench ranking`: the ranking service alone over gRPC, in its own process."""

from __future__ import annotations

import pytest

from shortlist.tools.bench import ranking_bench


@pytest.mark.parametrize("in_process", [False, True])
def test_ranking_bench_times_real_rank_calls(bundle_dir, redis_url, in_process):
    result = ranking_bench.run(
        bundle_dir, requests=40, candidates=50, redis_url=redis_url, in_process=in_process
    )
    assert result["server"] == ("in_process" if in_process else "process")
    assert result["requests"] == 40 and result["candidates"] == 50
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"]


def test_ranking_bench_ranks_the_fused_shortlist_and_sizes_each_source(
    bundle_dir, bundle, redis_url
):
    result = ranking_bench.run(bundle_dir, requests=20, candidates=50, redis_url=redis_url)
    assert bundle.fusion is not None and bundle.item_item is not None  # the default bundle
    assert result["shortlist"] == "fused"
    assert result["fusion"] == bundle.fusion.to_json()
    sizes = result["source_sizes"]
    vector = sizes[bundle.fusion.primary]
    assert vector["kind"] == "faiss" and vector["index_file_bytes"] > 0
    assert vector["item_vectors_bytes"] == bundle.item_vectors.nbytes
    table = bundle.item_item.tocsr()
    assert sizes["item-item"]["nnz"] == table.nnz > 0
    assert sizes["item-item"]["memory_bytes"] == (
        table.data.nbytes + table.indices.nbytes + table.indptr.nbytes
    )
    assert sizes["item-item"]["file_bytes"] > 0
    assert sizes["popularity"]["memory_bytes"] == 4 * len(bundle.items)
    assert sizes["ials"]["memory_bytes"] >= bundle.ials.item_factors.nbytes > 0
    assert sizes["ials"]["file_bytes"] > 0
