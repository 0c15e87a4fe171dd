"""The short-term part of a folded-in user's vector (decision 0030): newest likes weigh
most, halving every `half_life` likes, scaled to the long-term vector's norm."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from shortlist.feedback.vectors import NO_SHORT_TERM, ShortTerm, short_term_vector, with_short_term


def bundle():
    rows = np.eye(4, dtype=np.float32)
    return SimpleNamespace(item_encoder=None, item_vectors=rows)


def test_newest_likes_weigh_most_and_halve_every_half_life():
    v = short_term_vector(bundle(), np.array([2, 0, 1]), ShortTerm(half_life=2.0, window=10))
    assert np.allclose(v, [2**-0.5, 0.5, 1.0, 0.0])
    assert short_term_vector(bundle(), np.array([2, 0, 1]), ShortTerm(window=1))[2] == 1.0


def test_blend_is_scaled_to_the_long_term_norm_and_off_at_weight_zero():
    long = np.array([0.0, 0.0, 0.0, 10.0], np.float32)
    out = with_short_term(bundle(), long, np.array([1]), ShortTerm(weight=0.5))
    assert np.allclose(out, [0.0, 5.0, 0.0, 10.0])
    assert np.array_equal(with_short_term(bundle(), long, np.array([1]), NO_SHORT_TERM), long)
    assert np.array_equal(with_short_term(bundle(), long, np.array([], np.int64)), long)
