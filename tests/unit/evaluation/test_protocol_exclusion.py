"""Protocol B's test ranking excludes the train items only (LightGCN++'s rule, decision 0025),
checked on a case small enough to rank by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shortlist.data.loaders import load_lightgcn_dir
from shortlist.evaluation.metrics import top_k
from shortlist.evaluation.protocols import (
    TEST_EXCLUDES,
    excluded_at_test,
    normalize_protocol,
    run_protocol,
)

# Popularity on train: item 0 (5 likes) > 1 (3) > 2 (2) > 3 (1). Only user 0 has a test item
# (2); user 0 likes 0 in train and 1 in valid.
TRAIN = ["0 0", "1 0 1 2", "2 0 1 2", "3 0 1", "4 0 3"]
VALID = ["0 1"]
TEST = ["0 2"]


@pytest.fixture
def hand_dir(tmp_path: Path) -> Path:
    for name, lines in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_protocol_b_ranks_valid_items_and_never_train_items(hand_dir: Path) -> None:
    split = load_lightgcn_dir(hand_dir)
    result = run_protocol(split, "B", "popularity", {}, ks=(1, 2))
    model = result.fitted
    assert model is not None
    # user 0's ranking without train item 0: [1 (valid, a miss), 2 (test, a hit), 3]
    top = top_k(
        model.user_factors,
        model.item_factors,
        np.array([0]),
        3,
        exclude=excluded_at_test(split, "B"),
    )
    assert top[0].tolist() == [1, 2, 3]
    assert result.metrics["recall@1"] == 0.0 and result.metrics["hitrate@1"] == 0.0
    assert result.metrics["recall@2"] == 1.0
    assert result.metrics["ndcg@2"] == pytest.approx(1 / np.log2(3))
    assert result.summary()["test_excludes"] == "train"


def test_the_valid_excluded_variant_and_protocol_a_keep_their_names(hand_dir: Path) -> None:
    split = load_lightgcn_dir(hand_dir)
    variant = run_protocol(split, "b-valid-excluded", "popularity", {}, ks=(1,))
    # valid item 1 is excluded too: item 2 comes first
    assert variant.metrics["recall@1"] == 1.0 and variant.metrics["ndcg@1"] == 1.0
    assert variant.summary()["protocol"] == "B-valid-excluded"
    assert variant.summary()["test_excludes"] == "train+valid"
    a = run_protocol(split, "A", "popularity", {}, ks=(1,))
    assert a.summary()["test_excludes"] == "train+valid" and a.metrics["recall@1"] == 1.0
    assert TEST_EXCLUDES == {"A": "train+valid", "B": "train", "B-valid-excluded": "train+valid"}
    with pytest.raises(ValueError, match="protocol must be one of"):
        normalize_protocol("C")
