"""Each metric against values computed by hand on a tiny example."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from shortlist.evaluation.metrics import evaluate, hit_matrix, long_tail_items
from shortlist.models.topk import top_k


def _csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(rows), n_items))


# 3 users, 6 items; 1-d factors so the ranking is simply by item score.
ITEM_SCORES = np.array([[6.0], [5.0], [4.0], [3.0], [2.0], [1.0]], np.float32)  # 0 > 1 > ... > 5
USERS = np.ones((3, 1), np.float32)
# user 0 trained on item 0: ranking 1,2,3,4,5;  user 1 trained on 1,2: ranking 0,3,4,5;
# user 2 trained on nothing: ranking 0,1,2,3,4,5.
TRAIN = _csr([[0], [1, 2], []], 6)
TEST = _csr([[2, 5], [4], [0, 1, 3]], 6)


def test_top_k_excludes_training_items():
    top = top_k(USERS, ITEM_SCORES, np.arange(3), 3, exclude=TRAIN)
    assert top.tolist() == [[1, 2, 3], [0, 3, 4], [0, 1, 2]]


def test_top_k_pads_when_catalogue_is_smaller_than_k():
    top = top_k(USERS, ITEM_SCORES, np.array([1]), 6, exclude=TRAIN)
    assert top.tolist() == [[0, 3, 4, 5, -1, -1]]


def test_hit_matrix():
    top = top_k(USERS, ITEM_SCORES, np.arange(3), 3, exclude=TRAIN)
    hits = hit_matrix(top, TEST, np.arange(3))
    assert hits.tolist() == [[False, True, False], [False, False, True], [True, True, False]]


def test_metrics_by_hand_at_3():
    m = evaluate(USERS, ITEM_SCORES, TRAIN, TEST, ks=(3,))
    d = [1 / math.log2(p + 2) for p in range(3)]  # 1, 0.6309, 0.5
    # user 0: hit at rank 2 of 2 test items; user 1: hit at rank 3 of 1; user 2: ranks 1, 2 of 3
    recall = [1 / 2, 1 / 1, 2 / 3]
    ndcg = [d[1] / (d[0] + d[1]), d[2] / d[0], (d[0] + d[1]) / (d[0] + d[1] + d[2])]
    precision = [1 / 3, 1 / 3, 2 / 3]
    assert m["recall@3"] == pytest.approx(np.mean(recall))
    assert m["ndcg@3"] == pytest.approx(np.mean(ndcg))
    assert m["precision@3"] == pytest.approx(np.mean(precision))
    assert m["hitrate@3"] == pytest.approx(1.0)
    assert m["users"] == 3
    # recommended: {1,2,3}, {0,3,4}, {0,1,2} -> items 0..4 of 6 shown
    assert m["coverage@3"] == pytest.approx(5 / 6)
    # training likes: item 0, 1, 2 once each; head = ceil(0.2 * 6) = 2 most liked by stable
    # order (items 0 and 1), so the tail is 2..5: slots 2,3 | 3,4 | 2 -> 5 of 9.
    assert m["longtail@3"] == pytest.approx(5 / 9)


def test_metrics_at_1_and_several_ks():
    m = evaluate(USERS, ITEM_SCORES, TRAIN, TEST, ks=(1, 3))
    # top-1: user 0 -> 1 (miss), user 1 -> 0 (miss), user 2 -> 0 (hit)
    assert m["recall@1"] == pytest.approx((0 + 0 + 1 / 3) / 3)
    assert m["precision@1"] == pytest.approx(1 / 3)
    assert m["hitrate@1"] == pytest.approx(1 / 3)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["recall@3"] == pytest.approx(
        evaluate(USERS, ITEM_SCORES, TRAIN, TEST, (3,))["recall@3"]
    )


def test_users_without_test_items_are_not_averaged():
    test = _csr([[2, 5], [], []], 6)
    m = evaluate(USERS, ITEM_SCORES, TRAIN, test, ks=(3,))
    assert m["users"] == 1
    assert m["recall@3"] == pytest.approx(0.5)
    assert m["hitrate@3"] == 1.0


def test_idcg_is_capped_at_k():
    # 5 test items, K=2, both top slots hit: ndcg 1 (ideal over min(K, |test|) = 2 slots).
    train = _csr([[]], 6)
    test = _csr([[0, 1, 2, 3, 4]], 6)
    m = evaluate(np.ones((1, 1), np.float32), ITEM_SCORES, train, test, ks=(2,))
    assert m["ndcg@2"] == pytest.approx(1.0)
    assert m["recall@2"] == pytest.approx(2 / 5)
    assert m["precision@2"] == pytest.approx(1.0)


def test_training_items_never_count_as_hits():
    # The test item is also a training item (leaky input): it is excluded, so no hit.
    train = _csr([[0]], 6)
    test = _csr([[0]], 6)
    m = evaluate(np.ones((1, 1), np.float32), ITEM_SCORES, train, test, ks=(3,))
    assert m["recall@3"] == 0.0


def test_k_larger_than_catalogue():
    m = evaluate(USERS, ITEM_SCORES, TRAIN, TEST, ks=(20,))
    # every non-training item is ranked, so every test item is found
    assert m["recall@20"] == pytest.approx(1.0)
    assert m["precision@20"] == pytest.approx((2 + 1 + 3) / 3 / 20)
    assert m["coverage@20"] == pytest.approx(1.0)


def test_batches_give_the_same_result():
    rng = np.random.default_rng(0)
    u, i = rng.standard_normal((50, 4)), rng.standard_normal((40, 4))
    train = sp.random(50, 40, density=0.1, random_state=1, format="csr")
    test = sp.random(50, 40, density=0.05, random_state=2, format="csr")
    test = test - test.multiply(train > 0)
    test.eliminate_zeros()
    a = evaluate(u, i, train, test, ks=(5, 10), batch_size=7)
    b = evaluate(u, i, train, test, ks=(5, 10), batch_size=1024)
    assert a == pytest.approx(b)


def test_long_tail_items():
    tail = long_tail_items(np.array([5.0, 1.0, 9.0, 0.0, 3.0]), head_share=0.4)
    assert tail.tolist() == [False, True, False, True, True]


def test_no_test_users():
    m = evaluate(USERS, ITEM_SCORES, TRAIN, _csr([[], [], []], 6), ks=(3,))
    assert m["users"] == 0
    assert m["recall@3"] == 0.0


def test_ties_are_broken_by_item_index_whatever_k():
    # all scores equal: the ranking is item order, and @2 agrees with the first 2 of @5
    items = np.ones((8, 1), np.float32)
    users = np.ones((2, 1), np.float32)
    train = _csr([[1], []], 8)
    assert top_k(users, items, np.arange(2), 5, exclude=train).tolist() == [
        [0, 2, 3, 4, 5],
        [0, 1, 2, 3, 4],
    ]
    items = np.array([[3.0], [1.0], [3.0], [2.0], [3.0], [1.0], [2.0], [0.0]], np.float32)
    assert top_k(users, items, np.arange(2), 4).tolist() == [[0, 2, 4, 3], [0, 2, 4, 3]]
    assert top_k(users, items, np.arange(2), 5, exclude=train).tolist()[1] == [0, 2, 4, 3, 6]
    test = _csr([[3, 6], [3, 6]], 8)
    one = evaluate(users, items, train, test, ks=(4,))
    both = evaluate(users, items, train, test, ks=(4, 7))
    assert one["recall@4"] == both["recall@4"] == pytest.approx(0.5)
