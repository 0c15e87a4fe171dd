"""Next-item benchmark over live feedback: does the very next request reflect what a user
just liked?

For each test user (at least `min_likes` likes), their likes in time order (MovieLens
timestamps, Gowalla line order) are cut into: the training part, then `replay` likes sent
as live feedback, then the `next` likes that are scored. The bundle is trained on every
other user's likes and the test users' training parts. The replayed likes go through the
real fold-in path (the feedback worker's code: the in-memory bus and store stand in for
Kafka and Redis), then each test user's top 20 comes from the real `retrieve()` and
`rank()`; Recall@20 / NDCG@20 of the next likes are compared with the same bundle without
the replay (the replayed items excluded there too, so only what the user's vector and the
ranker make of them differs).

`split="valid"` drops each test user's last `next` likes first, so the scored likes are
the ones before the test's: the short-term settings are chosen there, never on test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

import numpy as np

from shortlist.config import Settings
from shortlist.data.interactions import Interactions, rank_in_user
from shortlist.data.splits import select_likes
from shortlist.feedback.bus import InMemoryBus
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores import InMemoryStateStore
from shortlist.feedback.stores.base import RankingSignals, UserState
from shortlist.feedback.vectors import NO_SHORT_TERM, SHORT_TERM, ShortTerm
from shortlist.feedback.worker import FeedbackWorker
from shortlist.models.progress import track
from shortlist.ranking.context import RequestContext
from shortlist.ranking.rank import rank
from shortlist.retrieval.retrieve import retrieve

K = 20
CANDIDATES = 200


def split_next_items(
    data: Interactions, replay: int, next_items: int, min_likes: int, split: str = "test"
) -> tuple[Interactions, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(training data, test users, each one's replayed likes oldest first, next likes)."""
    order = data.recency()
    if order is None:
        raise ValueError("the likes carry no order (no timestamps nor line positions)")
    pos = data.positives.tocsr()
    pos.sort_indices()
    rank_ = rank_in_user(pos, order)
    counts = np.diff(pos.indptr)
    per_like = np.repeat(counts, counts)
    if split == "valid":  # the last `next_items` likes of every user are not there at all
        per_like = per_like - next_items
    elif split != "test":
        raise ValueError(f"split must be test or valid, got {split!r}")
    eligible = per_like >= min_likes
    tail = per_like - rank_  # 0 for the newest like kept
    is_next = eligible & (tail >= 0) & (tail < next_items)
    is_replay = eligible & (tail >= next_items) & (tail < next_items + replay)
    dropped = tail < 0
    users = np.flatnonzero(np.diff(pos.indptr) > 0)
    users = users[(counts[users] - (next_items if split == "valid" else 0)) >= min_likes]
    train = select_likes(data, ~(is_next | is_replay | dropped))
    replayed, nexts = [], []
    for u in users:
        lo, hi = pos.indptr[u], pos.indptr[u + 1]
        in_user = slice(lo, hi)
        r = np.flatnonzero(is_replay[in_user])
        replayed.append(pos.indices[lo + r[np.argsort(-tail[in_user][r])]])  # oldest first
        nexts.append(pos.indices[lo + np.flatnonzero(is_next[in_user])])
    return train, users, replayed, nexts


def replay_through_worker(bundle, users: list[str], items: list[list[str]]) -> InMemoryStateStore:
    """The replayed likes, in order per user, applied by the feedback worker's code."""
    store, bus = InMemoryStateStore(), InMemoryBus()
    worker = FeedbackWorker(bundle, store, bus.consumer(), Settings.from_env({}, backend="memory"))
    events, now = [], int(time.time() * 1000)
    for user, liked in zip(users, items):
        for n, item in enumerate(liked):
            events.append(Event(f"{user}:{n}", user, item, Kind.LIKE, now + n))
    # one like per user per batch, in order: as likes arrive one by one
    rounds = max((len(x) for x in items), default=0)
    for n in track(range(rounds), "replaying likes"):
        bus.publisher().publish([e for e in events if e.event_id.endswith(f":{n}")], 5.0)
        while worker.run_once(10):
            pass
    return store


def _metrics(top: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    hits = np.isin(top[:K], targets)
    discounts = 1.0 / np.log2(np.arange(2, K + 2))
    ideal = discounts[: min(len(targets), K)].sum()
    return hits.sum() / len(targets), float((hits * discounts[: len(hits)]).sum() / ideal)


def score(
    bundle,
    store: InMemoryStateStore | list[UserState] | None,
    users: list[str],
    replayed: list[list[str]],
    nexts: list[np.ndarray],
    short_term: ShortTerm,
    two_stage: bool,
) -> dict[str, float]:
    """Mean Recall@20 / NDCG@20 of the next likes, of retrieval order and (two_stage) of
    the ranked top 20; `store` None: no replay (the replayed items excluded all the same)."""
    out = {"retrieval": [], "two_stage": []}
    for n, (user, items, targets) in track(
        enumerate(zip(users, replayed, nexts)), "next-item scoring", len(users), every=64
    ):
        if isinstance(store, list):
            state = store[n]
        else:
            state = store.user_state(user, bundle.version) if store is not None else UserState()
        exclude = () if store is not None else items
        found = retrieve(bundle, user, state, CANDIDATES, exclude, short_term=short_term)
        out["retrieval"].append(_metrics(found.items, targets))
        if two_stage:
            signals = RankingSignals(state.history, np.zeros(len(found.items)), state.likes)
            top, _ = rank(
                bundle, user, found.items, found.scores, signals, RequestContext(), K, short_term
            )
            out["two_stage"].append(_metrics(top, targets))
    result = {}
    for stage, values in out.items():
        if values:
            arr = np.asarray(values)
            result[f"{stage}_recall@20"] = round(float(arr[:, 0].mean()), 4)
            result[f"{stage}_ndcg@20"] = round(float(arr[:, 1].mean()), 4)
    return result


def session_states(
    model, fit: Interactions, users: np.ndarray, replay_ids: list[list[str]], replayed: list
) -> list[UserState]:
    """A session model's fold-in (`encode`): the user's vector recomputed from their
    training likes then the replayed ones, in order; the replayed items seen."""
    from shortlist.models.sasrec import ordered_likes

    sequences = ordered_likes(fit)
    vectors = model.encode([np.r_[sequences[u], r] for u, r in zip(users, replayed)])
    return [
        UserState(
            vector=v,
            seen=set(ids),
            history=[(i, Kind.LIKE) for i in reversed(ids)],
            likes=len(ids),
        )
        for v, ids in zip(vectors, replay_ids)
    ]


def grid(
    two_stage: bool,
    half_lives: Iterable[float] = (1.0, 2.0, 5.0),
    weights: Iterable[float] = (0.25, 0.5, 1.0, 2.0),
    rank_weights: Iterable[float] = (0.0, 1.0, 2.0, 4.0),
) -> list[ShortTerm]:
    """Short-term settings to score: half-life and weight for retrieval; for two stages, the
    rank weight with the half-life and weight retrieval chose (2 likes, .5)."""
    if two_stage:
        half_lives, weights = (2.0,), (0.5,)
    ranks = list(rank_weights) if two_stage else [0.0]
    return [
        ShortTerm(weight=w, half_life=h, rank_weight=r)
        for h in half_lives
        for w in weights
        for r in ranks
    ]


def run(
    data: Interactions,
    dataset: str,
    train: Callable[[Interactions], tuple[Any, Any]],
    two_stage: bool,
    split: str = "test",
    replay: int = 5,
    next_items: int = 5,
    min_likes: int = 20,
    max_users: int = 0,
    settings: list[ShortTerm] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    started = time.perf_counter()
    fit, users, replayed, nexts = split_next_items(data, replay, next_items, min_likes, split)
    if max_users and len(users) > max_users:
        pick = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
        users = users[pick]
        replayed = [replayed[i] for i in pick]
        nexts = [nexts[i] for i in pick]
    progress(f"{dataset} ({split}): {len(users):,} test users, training on {fit.nnz:,} likes")
    bundle, model = train(fit)
    train_s = time.perf_counter() - started
    names = data.users.ids(users)
    replay_ids = [data.items.ids(r) for r in replayed]
    store = replay_through_worker(bundle, names, replay_ids)
    progress(f"replayed {sum(map(len, replayed)):,} likes through the feedback worker")
    rows = [
        {
            "arm": "no_replay",
            **score(bundle, None, names, replay_ids, nexts, NO_SHORT_TERM, two_stage),
        },
        {
            "arm": "foldin",
            **score(bundle, store, names, replay_ids, nexts, NO_SHORT_TERM, two_stage),
        },
    ]
    for st in settings if settings is not None else [SHORT_TERM]:
        figures = score(bundle, store, names, replay_ids, nexts, st, two_stage)
        rows.append({"arm": "short_term", **asdict(st), **figures})
        progress(f"{st}: {figures}")
    if hasattr(model, "encode"):
        states = session_states(model, fit, users, replay_ids, replayed)
        figures = score(bundle, states, names, replay_ids, nexts, NO_SHORT_TERM, two_stage)
        rows.append({"arm": "session_encode", **figures})
        progress(f"session model's own fold-in: {figures}")
    stage = "two_stage" if two_stage else "retrieval"
    best = max(rows, key=lambda r: r[f"{stage}_ndcg@20"])
    result = {
        "bench": "next-item",
        "dataset": dataset,
        "split": split,
        "pipeline": stage,
        "users": len(users),
        "replay": replay,
        "next": next_items,
        "rows": rows,
        "no_replay": rows[0],
        "foldin": rows[1],
        "short_term": rows[2] if settings is None else None,
        "session_encode": next((r for r in rows if r["arm"] == "session_encode"), None),
        "best": best,
        "seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(train_s, 1),
    }
    for arm in ("foldin", "short_term", "session_encode"):
        if result[arm] is not None:
            base = rows[0][f"{stage}_ndcg@20"]
            result[f"{arm}_ndcg@20_lift"] = round(result[arm][f"{stage}_ndcg@20"] / base - 1, 4)
    return result
