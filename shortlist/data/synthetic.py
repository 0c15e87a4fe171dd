"""The built-in dataset: generated with planted topic structure, so it ships with the repo.

Items belong to topics ("jazz", "rock", ...) and have Zipf-like popularity; each user
prefers one or two topics. Likes are drawn from preferred topics, dislikes from others,
so a model that learns anything at all beats popularity on held-out likes. Each like
records the free-form request context "moment" ("commute" or "home"): items lean to one or
the other, so a ranker that reads the request's moment can tell which of a user's likely
items fit it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from shortlist.data.ids import IdMap
from shortlist.data.interactions import Interactions

TOPICS = (
    "jazz",
    "rock",
    "folk",
    "soul",
    "punk",
    "opera",
    "blues",
    "metal",
    "disco",
    "house",
    "salsa",
    "gospel",
)


def generate(
    n_users: int = 1000,
    n_items: int = 600,
    n_topics: int = 8,
    likes_per_user: int = 30,
    dislikes_per_user: int = 5,
    seed: int = 7,
) -> Interactions:
    """A reproducible dataset with planted topics; ids look like `jazz-0042` and `user-0007`."""
    if not 1 <= n_topics <= len(TOPICS):
        raise ValueError(f"n_topics must be in 1..{len(TOPICS)}")
    rng = np.random.default_rng(seed)
    item_topic = rng.integers(0, n_topics, size=n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.6
    rng.shuffle(popularity)

    # Each user: a main topic and a weaker second one.
    main = rng.integers(0, n_topics, size=n_users)
    second = (main + rng.integers(1, n_topics, size=n_users)) % n_topics if n_topics > 1 else main
    pref = np.full((n_users, n_topics), 0.02)
    pref[np.arange(n_users), main] += 1.0
    pref[np.arange(n_users), second] += 0.35

    rows, cols, times, neg_rows, neg_cols = [], [], [], [], []
    t0 = 1_700_000_000
    for u in range(n_users):
        weights = pref[u, item_topic] * popularity
        n_like = min(n_items // 2, max(3, int(rng.poisson(likes_per_user))))
        liked = rng.choice(n_items, size=n_like, replace=False, p=weights / weights.sum())
        rows.extend([u] * n_like)
        cols.extend(liked.tolist())
        times.extend((t0 + np.sort(rng.integers(0, 90 * 86400, size=n_like))).tolist())
        disliked_pool = np.flatnonzero(pref[u, item_topic] < 0.1)
        disliked_pool = np.setdiff1d(disliked_pool, liked)
        if dislikes_per_user and len(disliked_pool):
            n_dis = min(len(disliked_pool), dislikes_per_user)
            dis = rng.choice(disliked_pool, size=n_dis, replace=False)
            neg_rows.extend([u] * n_dis)
            neg_cols.extend(dis.tolist())

    shape = (n_users, n_items)
    pos = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
    pos.sort_indices()
    # The same sparsity pattern carries the like times, aligned with pos.data.
    tmat = sp.csr_matrix((np.asarray(times, np.float64), (rows, cols)), shape=shape)
    tmat.sort_indices()
    timestamps = tmat.data.astype(np.int64)
    neg = sp.csr_matrix((np.ones(len(neg_rows), np.float32), (neg_rows, neg_cols)), shape=shape)
    # Drawn from their own generator, so the likes are those of a dataset without context.
    ctx_rng = np.random.default_rng(seed + 1)
    commute_share = ctx_rng.choice(np.array([0.1, 0.5, 0.9]), size=n_items)
    commute = ctx_rng.random(pos.nnz) < commute_share[pos.indices]
    moment = np.where(commute, "commute", "home")

    width = len(str(n_items))
    item_ids = [f"{TOPICS[t]}-{i:0{width}d}" for i, t in enumerate(item_topic)]
    user_ids = [f"user-{u:0{len(str(n_users))}d}" for u in range(n_users)]
    topic_onehot = np.eye(n_topics, dtype=np.float32)[item_topic]
    return Interactions(
        users=IdMap(user_ids),
        items=IdMap(item_ids),
        positives=pos,
        negatives=neg,
        timestamps=timestamps,
        item_features={"topic": item_topic.astype(np.float32), "topic_onehot": topic_onehot},
        user_features={"main_topic": main.astype(np.float32)},
        context={"moment": moment},
        item_attribute_values={"topic": [TOPICS[t] for t in item_topic]},
    )


def write_events(data: Interactions, directory: Path) -> tuple[Path, Path]:
    """`data` as the event log and item file `shortlist train --events/--items` reads
    (events.parquet: user_id, item_id, kind, timestamp, moment; items.parquet: item_id, topic),
    so the built-in data trains through the same path as a team's own logs. A dislike is
    timed at its user's first like (the generator draws no time for it)."""
    directory.mkdir(parents=True, exist_ok=True)
    pos, neg = data.positives.tocoo(), data.negatives.tocoo()
    times = np.asarray(data.timestamps, np.int64)
    starts = np.full(data.n_users, np.iinfo(np.int64).max)
    np.minimum.at(starts, pos.row, times)
    starts[starts == np.iinfo(np.int64).max] = times.min() if len(times) else 0
    users, items = np.array(data.users.to_list()), np.array(data.items.to_list())
    moment = data.context.get("moment", np.full(pos.nnz, "", object))
    events = pa.table(
        {
            "user_id": np.concatenate([users[pos.row], users[neg.row]]),
            "item_id": np.concatenate([items[pos.col], items[neg.col]]),
            "kind": ["like"] * pos.nnz + ["dislike"] * neg.nnz,
            "timestamp": np.concatenate([times, starts[neg.row]]),
            "moment": np.concatenate([np.asarray(moment, object), np.full(neg.nnz, "", object)]),
        }
    )
    topic = data.item_features["topic"].astype(np.int64)
    catalogue = pa.table({"item_id": items, "topic": np.array(TOPICS)[topic]})
    paths = directory / "events.parquet", directory / "items.parquet"
    pq.write_table(events, paths[0])
    pq.write_table(catalogue, paths[1])
    return paths
