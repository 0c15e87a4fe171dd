"""Long fits report through the one progress mechanism: a sink sees steps climb to the total."""

from __future__ import annotations

import numpy as np

from shortlist.data.synthetic import generate
from shortlist.models.mf_bpr import MFBPR, MFBPRConfig
from shortlist.models.progress import observe
from shortlist.ranking.lambdarank import RankerConfig, train_ranker


def _record(fit) -> dict[str, list[tuple[int, int]]]:
    seen: dict[str, list[tuple[int, int]]] = {}
    with observe(lambda label, done, total: seen.setdefault(label, []).append((done, total))):
        fit()
    return seen


def _climbs_to_total(updates: list[tuple[int, int]]) -> None:
    done = [d for d, _ in updates]
    totals = {t for _, t in updates}
    assert len(totals) == 1 and done[0] >= 1
    assert all(b > a for a, b in zip(done, done[1:]))
    assert done[-1] == totals.pop()


def test_mf_bpr_fit_reports_every_batch_up_to_the_total():
    data = generate(n_users=60, n_items=40, n_topics=3, likes_per_user=8, seed=1)
    model = MFBPR(MFBPRConfig(dim=8, epochs=3, batch_size=128))
    seen = _record(lambda: model.fit(data))
    assert list(seen) == ["mf-bpr"]
    _climbs_to_total(seen["mf-bpr"])
    assert len(seen["mf-bpr"]) > 1
    n = data.positives.nnz
    assert seen["mf-bpr"][-1][1] == 3 * ((n + 127) // 128)


def test_lightgbm_ranker_reports_boosting_rounds_up_to_the_total():
    rng = np.random.default_rng(0)
    n_lists, size = 40, 20
    x = rng.normal(size=(n_lists * size, 3)).astype(np.float32)
    labels = (x[:, 0] + 0.3 * rng.normal(size=len(x)) > 1.0).astype(np.int32)
    groups = np.full(n_lists, size)
    cfg = RankerConfig(rounds=30, early_stopping=30, min_data_in_leaf=5, folds=2)
    result = {}
    seen = _record(
        lambda: result.update(fit=train_ranker((x, labels, groups), ["a", "b", "c"], cfg))
    )
    assert list(seen) == ["lambdarank cv", "lambdarank fit"]
    for updates in seen.values():
        _climbs_to_total(updates)
    assert seen["lambdarank cv"][-1][1] == 30 and len(seen["lambdarank cv"]) > 1
    assert seen["lambdarank fit"][-1][1] == result["fit"].rounds
