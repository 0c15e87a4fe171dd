"""The ranker-transfer diagnosis on generated data (where valid and test are alike)."""

from __future__ import annotations

import pytest

from shortlist.data.splits import temporal_leave_last_out
from shortlist.data.synthetic import generate
from shortlist.ranking.lambdarank import RankerConfig
from shortlist.tools.bench import ranker_transfer


@pytest.mark.slow
@pytest.mark.timeout(300)  # 5 LightGBM fits: 120 s ran out with a second fit beside it
def test_rows_for_each_feature_group_and_the_test_half_fit():
    data = generate(n_users=500, n_items=300, seed=2)
    split = temporal_leave_last_out(data, n_test=3, n_valid=3, min_train=5, name="generated")
    result = ranker_transfer.run(
        split,
        "mf-bpr",
        {"dim": 16, "epochs": 10, "seed": 0},
        test_users=400,
        ranker_cfg=RankerConfig(rounds=100, early_stopping=30),  # 5 cross-validated fits
    )
    rows = {(r["features"], r["fit_on"]): r for r in result["rows"]}
    assert set(rows) == {
        ("all features", "valid labels"),
        ("co-occurrence only", "valid labels"),
        ("popularity only", "valid labels"),
        ("embedding similarity only", "valid labels"),
        ("all features", "half of the test users"),
    }
    assert result["test_users"] == 400 and result["valid_lists"] > 100
    full = rows[("all features", "valid labels")]
    # here valid and test are drawn alike, so the valid-fit ranker gains on both
    assert full["valid_lift"] > 0.05 and full["test_lift"] > 0.05
    assert rows[("all features", "half of the test users")]["valid_lift"] is None
    # every row compares with the same retrieval order on test
    assert len({tuple(r["test_ndcg@20"][:1]) for r in result["rows"][:4]}) == 1
