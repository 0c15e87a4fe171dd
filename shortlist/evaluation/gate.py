"""The promotion gate: a candidate bundle against the serving one, on the same recent slice.

Both bundles answer each slice user the way the services would: the user's earlier events
that a bundle did not train on are folded in as live feedback would have folded them
(`shortlist.feedback.vectors.folded_vectors`), retrieval (`shortlist.retrieval.retrieve`)
excludes everything the user saw before the slice, and the bundle's ranker
(`shortlist.ranking.rank`) orders the shortlist. So the serving bundle is judged with the
live state it really serves with, not frozen at its training day, and neither bundle
trained on the slice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from shortlist.bundle.bundle import Bundle
from shortlist.data.interactions import Interactions, row_items
from shortlist.data.splits import latest_share_holdout, random_holdout, time_slice_holdout
from shortlist.evaluation.metrics import per_user_metrics
from shortlist.feedback.events import Kind
from shortlist.feedback.stores.base import RankingSignals, UserState
from shortlist.feedback.vectors import folded_vectors
from shortlist.ranking.context import RequestContext
from shortlist.ranking.rank import rank
from shortlist.retrieval.retrieve import retrieve

GATE_METRIC = "ndcg@20"


def recent_slice(data: Interactions, share: float) -> tuple[Interactions, Interactions]:
    """(history, recent): the latest `share` of the likes in time (each user's latest share
    where likes are only ordered, a seeded random share where they are not) and the rest."""
    if data.timestamps is not None:
        split = time_slice_holdout(data, test_share=share, valid_share=0.0, name="gate")
    elif data.recency() is not None:
        split = latest_share_holdout(data, share, name="gate")
    else:
        split = random_holdout(data, test_fraction=share, valid_fraction=0.0, name="gate")
    return split.train, split.test


def served_metrics(
    bundle: Bundle,
    history: Interactions,
    test: Interactions,
    k: int = 20,
    candidates: int = 200,
    max_users: int = 5000,
    seed: int = 0,
) -> dict[str, float]:
    """Recall/NDCG/precision/hit rate at `k` of what `bundle` serves the users of `test`.

    `history` and `test` share one id space (the events'; the bundle may know fewer users
    and items: a test item it does not know is a miss). Averaged over the test users with at
    least one like (at most `max_users` of them, a seeded sample), as the LightGCN metrics are.
    """
    users, per_user = served_per_user(bundle, history, test, k, candidates, max_users, seed)
    return {name: round(float(values.mean()), 4) for name, values in per_user.items()} | {
        "users": int(len(users))
    }


def served_per_user(
    bundle: Bundle,
    history: Interactions,
    test: Interactions,
    k: int = 20,
    candidates: int = 200,
    max_users: int = 5000,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(users, metrics): the test users evaluated (row indices of `history`'s id space,
    sorted; all with a like when `max_users` is 0, else a seeded sample of at most that
    many) and each metric per user, in that order (see `served_metrics`)."""
    test_pos = test.positives.tocsr()
    users = np.flatnonzero(np.diff(test_pos.indptr) > 0)
    if max_users and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    if not len(users):
        raise ValueError("the test slice has no likes")
    hits = np.zeros((len(users), k), bool)
    n_relevant = np.zeros(len(users))
    order = history.recency()
    for row, u in enumerate(users):
        user_id = history.users.id(int(u))
        wanted = set(history.items.ids(row_items(test_pos, int(u))))
        n_relevant[row] = len(wanted)
        top = _served_top(bundle, user_id, _history(history, int(u), order), k, candidates)
        hits[row, : len(top)] = [item in wanted for item in top]
    return users, per_user_metrics(hits, n_relevant, [k])


def _history(data: Interactions, u: int, order: np.ndarray | None) -> list[tuple[str, Kind]]:
    """The user's likes (newest first where the data orders them) and dislikes, as ids."""
    pos = data.positives
    lo, hi = pos.indptr[u], pos.indptr[u + 1]
    liked = pos.indices[lo:hi]
    if order is not None:
        liked = liked[np.argsort(-np.asarray(order[lo:hi]), kind="stable")]
    disliked = row_items(data.negatives, u)
    return [(i, Kind.LIKE) for i in data.items.ids(liked)] + [
        (i, Kind.DISLIKE) for i in data.items.ids(disliked)
    ]


def _served_top(
    bundle: Bundle, user_id: str, history: list[tuple[str, Kind]], k: int, n: int
) -> list[str]:
    """The top-k item ids the services would answer, the history not trained on folded in."""
    u = bundle.users.get(user_id)
    trained: set[str] = set()
    if u is not None:
        trained = set(bundle.items.ids(row_items(bundle.likes, u)))
        trained |= set(bundle.items.ids(row_items(bundle.dislikes, u)))
    live = [(item, kind) for item, kind in history if item not in trained]
    vector = folded_vectors(bundle, {user_id: live}).get(user_id) if live else None
    state = UserState(
        vector=vector,
        seen={item for item, _ in history},
        disliked={item for item, kind in history if kind == Kind.DISLIKE},
        history=live,
        likes=sum(kind == Kind.LIKE for _, kind in live),
    )
    shortlist = retrieve(bundle, user_id, state, n)
    if not len(shortlist.items):
        return []
    signals = RankingSignals(live, np.zeros(len(shortlist.items), np.float32), state.likes)
    top, _ = rank(bundle, user_id, shortlist.items, shortlist.scores, signals, RequestContext(), k)
    return bundle.items.ids(top)


@dataclass
class GateResult:
    metric: str
    candidate: dict[str, float]
    serving: dict[str, float]
    serving_version: str
    margin: float  # relative: the candidate may be this share below the serving bundle
    promoted: bool

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verdict = "promoted" if self.promoted else "NOT promoted"
        return (
            f"gate: candidate {self.metric} {self.candidate[self.metric]:.4f}, serving "
            f"{self.serving_version} {self.serving[self.metric]:.4f} on "
            f"{self.candidate['users']} users of the latest slice, margin {self.margin:.1%}: "
            f"{verdict}"
        )


def write_metrics(result: GateResult, path: Path) -> None:
    """The gate's figures in the Prometheus textfile format (a node-exporter textfile
    collector or a push to a Pushgateway publishes a batch job's metrics)."""
    registry = CollectorRegistry()
    figures = Gauge(
        "shortlist_gate_metric",
        "Metric of a bundle on the gate's recent slice",
        ["bundle", "metric"],
        registry=registry,
    )
    for bundle, metrics in (("candidate", result.candidate), ("serving", result.serving)):
        for name, value in metrics.items():
            if name != "users":
                figures.labels(bundle, name).set(value)
    Gauge(
        "shortlist_gate_promoted", "1 when the last candidate was promoted", registry=registry
    ).set(float(result.promoted))
    write_to_textfile(str(path), registry)


def gate(
    candidate: Bundle,
    serving: Bundle,
    history: Interactions,
    recent: Interactions,
    margin: float,
    metric: str = GATE_METRIC,
) -> GateResult:
    """Whether `candidate` may replace `serving`: not worse than it by more than `margin`
    (relative) in `metric` on `recent`, the slice neither trained on."""
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"the gate margin must be in [0, 1), got {margin}")
    cand = served_metrics(candidate, history, recent)
    serv = served_metrics(serving, history, recent)
    promoted = cand[metric] >= serv[metric] * (1.0 - margin)
    return GateResult(metric, cand, serv, serving.version, margin, promoted)
