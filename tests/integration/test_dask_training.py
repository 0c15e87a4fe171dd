"""`shortlist train --engine dask`: the same pipeline on a Dask LocalCluster of two worker
processes (SVD in row blocks, the item-kNN table per block, DaskLGBMRanker, Parquet through
dask.dataframe) serves a bundle of the same quality as the in-process path."""

from __future__ import annotations

import pytest

from shortlist.compute import InProcess, engine_for, using
from shortlist.data.events import load_events
from shortlist.data.synthetic import generate, write_events
from shortlist.evaluation.gate import recent_slice, served_metrics
from shortlist.training.pipeline import TrainConfig, train_bundle

# seconds on a quiet host; the timeout leaves room for a loaded shared one
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Small enough for seconds, large enough that the spectral model takes the randomized SVD
# (not the exact one) and the item-item source is item-kNN (above the EASE cap).
CONFIG = TrainConfig(
    model="spectral",
    model_options={"rank": 48, "ideal_rank": 16},
    item_item_options={"max_items": 100},
    deep_ranker=False,
    candidates=50,
    ranker_max_lists=300,
    precomputed=32,
    # the whole weight grid, whatever the host's load: a time-cut search would differ per run
    fusion_budget=3600.0,
)


@pytest.fixture(scope="module")
def dask_engine():
    with engine_for("dask", workers=2) as engine:
        yield engine


def test_dask_bundle_quality_matches_in_process(dask_engine, tmp_path):
    data = generate(n_users=800, n_items=500, likes_per_user=30, seed=11)
    events, _ = write_events(data, tmp_path)
    with using(InProcess()):
        local_data = load_events([events])
    with using(dask_engine):
        dask_data = load_events([events])  # read by dask.dataframe
    assert dask_data.fingerprint() == local_data.fingerprint()
    history, test = recent_slice(local_data, 0.2)
    with using(InProcess()):
        local = train_bundle(history, CONFIG)
    with using(dask_engine):
        remote = train_bundle(history, CONFIG)
    assert local.manifest["engine"] == "inprocess" and remote.manifest["engine"] == "dask"
    assert remote.manifest["fusion_choice"] is not None  # the item-kNN table was built
    a = served_metrics(local, history, test, max_users=300)["ndcg@20"]
    b = served_metrics(remote, history, test, max_users=300)["ndcg@20"]
    print(f"served NDCG@20: in process {a:.4f}, dask {b:.4f}")
    assert a > 0.05, a  # a real model, not noise
    assert abs(a - b) <= 0.005 * a, (a, b)
