"""New user vectors from feedback (fold-in), without retraining: what the feedback worker
writes to the state store and retrieval then searches with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from shortlist.data.ids import IdMap
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.foldin import (
    LINEAR_BY_KIND,
    RIDGE_BY_KIND,
    FoldInTargets,
    batched_fold_in,
    fold_in,
    linear_deltas,
    linear_fold_in,
)
from shortlist.feedback.stores.base import UserFeedback


class FoldInData(Protocol):
    """What fold-in reads of a bundle (`shortlist.bundle.Bundle` has it all)."""

    version: str
    users: IdMap
    items: IdMap
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    item_encoder: np.ndarray | None
    foldin: FoldInTargets


def folded_vectors(
    bundle: FoldInData, histories: dict[str, list[tuple[str, Kind]]]
) -> dict[str, np.ndarray]:
    """New vectors for users from their (newest-first) feedback histories."""
    out = {}
    for user, history in histories.items():
        latest: dict[int, Kind] = {}
        for item_id, kind in history:
            i = bundle.items.get(item_id)
            if i is not None and i not in latest:
                latest[i] = kind
        if not latest:
            continue
        u = bundle.users.get(user)
        prior = bundle.user_vectors[u] if u is not None else None
        if bundle.item_encoder is not None:
            out[user] = linear_fold_in(
                bundle.item_encoder, list(latest), list(latest.values()), prior
            )
            continue
        out[user] = fold_in(
            bundle.item_vectors, list(latest), list(latest.values()), bundle.foldin, prior
        )
    return out


def updated_vectors(
    bundle: FoldInData, users: dict[str, UserFeedback], fresh: Sequence[Event]
) -> dict[str, np.ndarray]:
    """New vectors for the users of `fresh` (new events, oldest first) from the state
    `prepare` read; the same vectors `folded_vectors` gives over the users' whole feedback
    (the latest kind per item counts), without a history cap.

    Linear (encoder) bundles: a stored vector moves by the signed encoder rows of what
    changed (new weight minus the item's previous weight), else it is computed from the
    user's whole item -> kind map. Other bundles: the ridge fold-in over the whole map,
    all users solved as one batch. Users without any item the bundle knows get none.
    """
    by_user: dict[str, list[Event]] = {}
    for e in fresh:
        by_user.setdefault(e.user_id, []).append(e)
    items = bundle.items
    if bundle.item_encoder is None:
        names, ids, kinds, lengths = [], [], [], []
        for user, events in by_user.items():
            latest = users[user].kinds  # complete: prepare was asked for every item
            for e in events:
                latest[e.item_id] = int(e.kind)
            names.append(user)
            ids.extend(latest)
            kinds.extend(latest.values())
            lengths.append(len(latest))
        rows = np.repeat(np.arange(len(names)), lengths)
        idx = items.positions(ids)
        kind = np.asarray(kinds, np.int64)
        known = idx >= 0
        # Users with no item the bundle knows get no vector; the others are folded in
        # from the items whose kind has a weight.
        has = np.bincount(rows[known], minlength=len(names)) > 0
        keep = known & (RIDGE_BY_KIND[kind] > 0) & has[rows]
        renumber = np.cumsum(has) - 1
        names = [u for u, h in zip(names, has) if h]
        priors = np.stack([_prior(bundle, u) for u in names]) if names else np.zeros((0, 1))
        solved = batched_fold_in(
            bundle.item_vectors, renumber[rows[keep]], idx[keep], kind[keep], bundle.foldin, priors
        )
        return dict(zip(names, solved))

    names, bases, rows, cols, weights = [], [], [], [], []
    for user, events in by_user.items():
        state = users[user]
        kinds = state.kinds
        r = len(names)
        if state.complete:  # from scratch over the whole map
            for e in events:
                kinds[e.item_id] = int(e.kind)
            n = len(rows)
            for item_id, kind in kinds.items():
                i = items.get(item_id)
                if i is not None:
                    rows.append(r)
                    cols.append(i)
                    weights.append(LINEAR_BY_KIND[kind])
            if len(rows) == n:
                continue  # nothing the bundle knows: no vector
            base = _prior(bundle, user)
        else:  # incremental: what each new event changed
            for e in events:
                kind = int(e.kind)
                old = kinds.get(e.item_id, 0)
                kinds[e.item_id] = kind
                i = items.get(e.item_id)
                if i is not None and kind != old:
                    rows.append(r)
                    cols.append(i)
                    weights.append(LINEAR_BY_KIND[kind] - LINEAR_BY_KIND[old])
            base = state.vector
        names.append(user)
        bases.append(base)
    if not names:
        return {}
    delta = linear_deltas(
        bundle.item_encoder,
        np.asarray(rows, np.int64),
        np.asarray(cols, np.int64),
        np.asarray(weights, np.float64),
        len(names),
    )
    vectors = (np.stack(bases).astype(np.float64) + delta).astype(np.float32)
    return dict(zip(names, vectors))


def new_item_vectors(
    bundle: FoldInData, feedback: dict[str, dict[str, tuple[int, np.ndarray | None]]]
) -> dict[str, np.ndarray]:
    """Vectors of items the bundle does not know, from the users who gave feedback on them
    (`StateStore.item_feedback`): the user fold-in transposed, a ridge regression of the
    item vector on those users' current vectors (folded-in, else trained) toward the like
    target for likers and the dislike target for dislikers (skips weighted down), with a
    zero prior. Users with no vector (new, and no feedback on known items) do not count;
    an item with no liker left gets no vector: it is not recommended until liked."""
    dim = bundle.item_vectors.shape[1]
    out = {}
    for item, users in feedback.items():
        rows, kinds = [], []
        for user, (kind, vector) in users.items():
            if vector is None or vector.shape != (dim,):
                u = bundle.users.get(user)
                if u is None:
                    continue
                vector = bundle.user_vectors[u]
            rows.append(vector)
            kinds.append(Kind(kind))
        if Kind.LIKE not in kinds:
            continue
        out[item] = fold_in(np.stack(rows), range(len(rows)), kinds, bundle.foldin)
    return out


def _prior(bundle: FoldInData, user_id: str) -> np.ndarray:
    u = bundle.users.get(user_id)
    if u is None:
        return np.zeros(bundle.item_vectors.shape[1], np.float32)
    return bundle.user_vectors[u]


@dataclass(frozen=True)
class ShortTerm:
    """How much a user's last likes steer their served vector (decision 0030).

    The served vector is the long-term one (trained, then folded in) plus `weight` times a
    short-term vector scaled to the long-term one's norm: the recency-weighted sum of the
    user's `window` newest likes (live feedback first, then training's), a like `a` places
    older than the newest weighing 2^(-a / half_life). A fold-in alone dilutes a few new
    likes among a long history, so a new interest did not show. weight 0: off.
    """

    # chosen on MovieLens-100K's valid likes (`shortlist bench next-item --split valid --grid`)
    weight: float = 0.5
    half_life: float = 2.0  # in likes
    window: int = 10
    # The ranking stage adds rank_weight times the candidates' scores against the
    # short-term vector (standardised over the list) to the ranker's: the ranker learns
    # from training likes, where a user's interests rarely turn within a few likes.
    # Scaled down as the newest likes agree with the rest (`with_short_term_scores`).
    rank_weight: float = 2.0


SHORT_TERM = ShortTerm()
NO_SHORT_TERM = ShortTerm(weight=0.0, rank_weight=0.0)


def short_term_vector(
    bundle: FoldInData, recent: np.ndarray, short_term: ShortTerm = SHORT_TERM
) -> np.ndarray | None:
    """The recency-weighted sum of the rows of `recent` (item indices, newest first) in the
    space of user vectors: the encoder rows of a linear bundle, else the item vectors."""
    recent = np.asarray(recent, np.int64)[: short_term.window]
    if not len(recent):
        return None
    rows = bundle.item_encoder if bundle.item_encoder is not None else bundle.item_vectors
    w = 2.0 ** (-np.arange(len(recent)) / short_term.half_life)
    return (w @ rows[recent].astype(np.float64)).astype(np.float32)


def with_short_term(
    bundle: FoldInData,
    vector: np.ndarray,
    recent: np.ndarray,
    short_term: ShortTerm = SHORT_TERM,
) -> np.ndarray:
    """`vector` plus the short-term vector of `recent` (newest first), scaled to its norm."""
    short = short_term_vector(bundle, recent, short_term) if short_term.weight > 0 else None
    if short is None:
        return vector
    long_norm, short_norm = float(np.linalg.norm(vector)), float(np.linalg.norm(short))
    if short_norm <= 0:
        return vector
    scale = short_term.weight * (long_norm if long_norm > 0 else 1.0) / short_norm
    return (vector + scale * short).astype(np.float32)
