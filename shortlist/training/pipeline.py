"""The offline pipeline that produces a servable bundle: retrieval model, index and ranker.

1. Hold out a share of each user's likes as ranker labels (their latest, where the data
   orders likes; else at random); train the retrieval model on the rest and take its top-N
   shortlist per user (the ranker never sees test data).
2. Fit LambdaRank on those shortlists with the shared feature definitions; early-stop on
   a separate slice of users and record the lift over retrieval order.
3. Retrain the retrieval model on everything, build the FAISS index, write the bundle.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from shortlist import compute
from shortlist.bundle.bundle import Bundle
from shortlist.bundle.files import code_version, new_version
from shortlist.data.interactions import Interactions, row_items
from shortlist.data.splits import latest_share_mask, select_likes
from shortlist.feedback.foldin import calibrate_targets
from shortlist.models import registry
from shortlist.models.ials import MFSource
from shortlist.models.popularity import item_popularity
from shortlist.models.progress import track
from shortlist.ranking.context import RequestContext, context_at, context_counts
from shortlist.ranking.deepfm import DeepFMConfig, DeepFMWeights, train_deepfm
from shortlist.ranking.features import build_features, feature_names
from shortlist.ranking.item_side import (
    SEQUENCE_WINDOW,
    ItemSide,
    item_side,
    recent_popularity,
    sequence_neighbours,
)
from shortlist.ranking.lambdarank import RankerConfig, RankerFit, mean_list_ndcg, train_ranker
from shortlist.ranking.scorer import choose_order_weight
from shortlist.ranking.user_signals import UserSignals, recent_in_order
from shortlist.retrieval.index import build_index
from shortlist.retrieval.precomputed import (
    PRECOMPUTE_PAIRS,
    PrecomputedShortlists,
    precompute_users,
    user_rows,
)
from shortlist.training.sources import (
    Sources,
    chosen_fusion,
    fit_sources,
    fused_lists,
    ials_refit,
    source_lists,
)
from shortlist.training.tuning import SPACES, tune, untuned

Progress = Callable[[str], None]

# Users per part of the precomputed shortlists: each part's per-source lists (users x depth
# per source) stay bounded whatever the user count, and on Dask the parts are the tasks.
PRECOMPUTE_USERS = 16_384


@dataclass
class TrainConfig:
    dim: int = 32
    epochs: int = 30
    candidates: int = 200
    label_share: float = 0.2
    # Which likes become ranker labels: "latest" (each user's latest label_share, by time or
    # line order), "random", or "auto" (latest where the data orders likes). Serving predicts
    # a user's next likes, and on Gowalla only latest labels carried over to the later test
    # likes; a random slice lost far more (docs/decisions/0011-ranker-labels.md).
    labels: str = "auto"
    recent_likes: int = 50
    # Places apart in a user's like order within which two likes co-occur for the
    # seq_cooc_likes feature (features.sequence_neighbours); 0: no such feature (NaN).
    sequence_window: int = SEQUENCE_WINDOW
    # Lists (users) the ranker is cross-validated and fit on: on Gowalla the test lift grew
    # up to this many and not beyond, while more lists took the whole pipeline past its
    # 30-minute bound and cost more CPU per served call
    # (docs/decisions/0010-list-relative-features.md).
    ranker_max_lists: int = 18_000
    # Also fit a DeepFM on the same lists and serve the two rankers blended
    # (shortlist.ranking.deepfm): the blend beat LambdaRank alone on Gowalla and
    # MovieLens-100K (docs/decisions/0012-deepfm-blend.md).
    deep_ranker: bool = True
    index: str = "auto"
    # Width of each trained user's precomputed shortlist (shortlist.retrieval.precomputed): the
    # served N (200) plus room for live exclusions; 0: none, retrieval always searches.
    precomputed: int = 256
    # Precompute only while users x items stays within this many pairs, else the most
    # active users' shortlists up to it (shortlist.retrieval.precomputed.precompute_users):
    # exact search grows with users x items (docs/decisions/0051-precompute-budget.md).
    precomputed_pairs: float = PRECOMPUTE_PAIRS
    seed: int = 0
    model: str = "mf-bpr"
    # Options of the retrieval model (registry names); dim/epochs/seed above apply to MF-BPR.
    model_options: dict | None = None
    # Seconds to choose the retrieval model's options on the latest slice of the training
    # likes (shortlist.training.tuning) when model_options is None; 0: the defaults above.
    tune_budget: float = 0.0
    # Grow tune_budget with the data (tuning.scaled_budget): `shortlist train`'s default.
    tune_scaled: bool = False
    # Fuse the item-item source (EASE under its cap, item-kNN above) and popularity with
    # the vector model's shortlist (shortlist.retrieval.fusion), weights chosen on the
    # ranker's label likes within fusion_budget seconds; False: the vector model alone.
    fusion: bool = True
    item_item_options: dict | None = None
    # Also fuse a weighted matrix factorisation of the likes (shortlist.models.ials); its
    # weight is chosen with the others (0 drops it). False: not fit at all.
    ials: bool = True
    ials_options: dict | None = None
    fusion_budget: float = 120.0


def retrieval_options(cfg: TrainConfig) -> dict:
    if cfg.model_options is not None:
        return dict(cfg.model_options)
    if cfg.model == "mf-bpr":
        return {"dim": cfg.dim, "epochs": cfg.epochs, "seed": cfg.seed}
    return {}


def chosen_options(
    data: Interactions, cfg: TrainConfig, say: Progress
) -> tuple[dict, dict[str, Any]]:
    """The retrieval options to train with and the tuning report the manifest keeps:
    explicit options win, else a search within `tune_budget` seconds, else the defaults."""
    options = retrieval_options(cfg)
    if cfg.model_options is not None:
        return options, untuned(options, cfg.tune_budget, "options given")
    if cfg.tune_budget <= 0:
        return options, untuned(options, 0.0, "no budget: model defaults")
    if cfg.model not in SPACES:
        return options, untuned(options, cfg.tune_budget, f"no search space for {cfg.model}")
    result = tune(
        data,
        cfg.model,
        cfg.tune_budget,
        base=options,
        seed=cfg.seed,
        progress=say,
        scale=cfg.tune_scaled,
    )
    return result.options, result.report()


def train_bundle(
    data: Interactions, config: TrainConfig | None = None, progress: Progress | None = None
) -> Bundle:
    cfg = config or TrainConfig()
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    options, tuning = chosen_options(data, cfg, say)

    part = fit_part_stage(data, options, cfg, say)
    labels, names, fit, fusion = part.labels, part.names, part.fit, part.fusion

    say("training the serving model on all likes")
    model = registry.build(cfg.model, options)
    report = model.fit(data)
    coo = data.positives.tocoo()
    foldin = calibrate_targets(model.user_factors, model.item_factors, coo.row, coo.col)
    sources = None
    if fusion is not None:
        say("training the fused sources (item-item, weighted MF) on all likes")
        sources = fit_sources(
            data,
            cfg.model,
            model,
            cfg.item_item_options or {},
            part.ials_options,
        )
    precomputed, precomputed_seconds = None, 0.0
    users = precompute_users(data.positives, cfg.precomputed_pairs)
    if cfg.precomputed > 0 and len(users):
        say(
            f"precomputing the top-{cfg.precomputed} of {len(users):,} of {data.n_users:,}"
            " users by exact search"
        )
        precomputed_seconds = -time.perf_counter()
        seen = data.positives + data.negatives
        if sources is None:
            precomputed = PrecomputedShortlists.compute(
                model.user_factors, model.item_factors, seen, cfg.precomputed, users=users
            )
        else:
            precomputed = fused_precomputed(
                sources, fusion, data.positives, seen, cfg.precomputed, users
            )
        precomputed_seconds += time.perf_counter()
    bundle = Bundle(
        version=new_version(),
        users=data.users,
        items=data.items,
        user_vectors=model.user_factors,
        item_vectors=model.item_factors,
        index=build_index(model.item_factors, cfg.index),
        likes=data.positives,
        dislikes=data.negatives,
        recent_likes=recent_likes(data.positives, data.recency(), cfg.recent_likes),
        popularity=item_popularity(data),
        item_features=attribute_table(data.item_features, data.n_items),
        item_feature_names=attribute_names(data.item_features),
        item_attribute_values=data.item_attribute_values,
        user_features=attribute_table(data.user_features, data.n_users),
        user_feature_names=attribute_names(data.user_features),
        recent_popularity=recent_popularity(data.positives, data.timestamps),
        context_counts=context_counts(data.positives, data.context),
        sequence=sequence_neighbours(data.positives, data.recency(), cfg.sequence_window),
        foldin=foldin,
        ranker=fit.booster,
        deep_ranker=fit.deep,
        item_encoder=getattr(model, "item_encoder", None),
        user_weights=getattr(model, "user_weights", None),
        precomputed=precomputed,
        item_item=item_item_table(sources),
        ials=mf_source(sources),
        fusion=fusion,
        manifest={
            "dataset_fingerprint": data.fingerprint(),
            "model": cfg.model,
            "engine": compute.current().name,  # where it trained (shortlist.compute)
            "model_options": options,
            "tuning": tuning,
            "fusion_choice": part.fusion_report,
            "config": asdict(cfg),
            "code_version": code_version(),
            "feature_names": names,
            # the retrieval order's weight beside the rankers' scores (ranking.scorer)
            "ranker_order_weight": fit.order_weight,
            "metrics": {
                # over the ranker's lists, each scored by a fold model that did not see it
                "ranker_labels": labels,
                "ranker_lists": int(len(fit.users)),
                "ranker_rounds": fit.rounds,
                "retrieval_order_ndcg@20": round(part.retrieval_ndcg, 4),
                "lambdarank_ndcg@20": round(part.lambdarank_ndcg, 4),
                # LambdaRank's with the retrieval order at the weight chosen on these lists
                "ranker_ndcg@20": round(fit.order_ndcg, 4),
                # DeepFM's, on the share of the lists it held out for early stopping
                "deep_ranker_epochs": fit.deep_epochs,
                "deep_ranker_valid_ndcg@20": round(fit.deep_valid_ndcg, 4),
                "train_seconds": round(time.perf_counter() - started, 2),
                "final_model_seconds": round(report.seconds, 2),
                "precomputed_seconds": round(precomputed_seconds, 2),
                "precomputed_users": 0 if precomputed is None else len(precomputed.items),
            },
        },
    )
    return bundle


@dataclass
class FitPart:
    """What the ranker's stage leaves for the serving bundle: the rankers, the fusion, the
    weighted-MF options for the refit and the lists' figures."""

    labels: str
    names: list[str]
    fit: FittedRanker
    fusion: Any
    fusion_report: dict | None
    ials_options: dict | None
    retrieval_ndcg: float
    lambdarank_ndcg: float


def fit_part_stage(data: Interactions, options: dict, cfg: TrainConfig, say: Progress) -> FitPart:
    """The models fit on part of the likes, the fusion and the rankers learnt from the held
    out rest. Its own function so that those models, their lists and features are freed
    when it returns, before the serving models train on all likes (they are the size of
    the serving ones: kept, they doubled training's peak memory)."""
    rng = np.random.default_rng(cfg.seed)
    labels = label_kind(data, cfg.labels)
    say(f"splitting likes into model-fit and ranker-label ({labels}) parts")
    held = label_mask(data, labels, cfg.label_share, rng)
    fit_data, label_data = select_likes(data, ~held), select_likes(data, held)
    fit_pos, label_pos = fit_data.positives, label_data.positives

    say(f"training {cfg.model} on the fit part ({fit_pos.nnz:,} likes)")
    fit_model = registry.build(cfg.model, options)
    fit_model.fit(fit_data)

    label_users = labelled_users(label_pos, cfg.ranker_max_lists, cfg.seed)
    fit_sources_, fusion, fusion_report, candidates = fused_candidates(
        fit_data, fit_model, label_pos, label_users, cfg, say
    )
    say(f"building top-{cfg.candidates} shortlists and ranking features")
    names = data_feature_names(data)
    lists = ranking_lists(
        fit_data,
        fit_model.user_factors,
        fit_model.item_factors,
        label_pos,
        label_data.timestamps,
        cfg,
        users=label_users,
        label_context=label_data.context,
        candidates=candidates,
        item_item=item_item_table(fit_sources_),
    )
    fit = fit_ranker(lists, names, cfg, RankerConfig(seed=cfg.seed), say)
    return FitPart(
        labels,
        names,
        fit,
        fusion,
        fusion_report,
        ials_refit(fit_sources_, ials_of(cfg)),
        mean_list_ndcg(-fit.retrieval_rank, fit.labels, fit.sizes),
        mean_list_ndcg(fit.held_out_scores, fit.labels, fit.sizes),
    )


def ials_of(cfg: TrainConfig) -> dict | None:
    """The weighted-MF source's options, None when it is not fused."""
    return dict(cfg.ials_options or {}) if cfg.ials else None


def mf_source(sources: Sources | None) -> MFSource | None:
    """What serving keeps of the weighted-MF source (None: not fused)."""
    if sources is None or sources.ials is None:
        return None
    return MFSource.of(sources.ials)


def item_item_table(sources: Sources | None) -> sp.csr_matrix | None:
    if sources is None or sources.item_item is None:
        return None
    return sources.item_item.neighbours


def fused_candidates(
    fit_data: Interactions,
    fit_model: object,
    labels: sp.csr_matrix,
    users: np.ndarray,
    cfg: TrainConfig,
    say: Progress,
) -> tuple[Sources | None, Any, dict | None, tuple[np.ndarray, np.ndarray] | None]:
    """With `cfg.fusion`: the sources fit on `fit_data`, the fusion chosen on `labels`
    (held-out likes of `users`) and the fused (items, scores) of those users; else Nones
    (the vector model's own shortlist)."""
    if not cfg.fusion:
        return None, None, None, None
    say("training the fused sources (item-item, weighted MF) on the fit part")
    sources = fit_sources(fit_data, cfg.model, fit_model, cfg.item_item_options or {}, ials_of(cfg))
    seen = ((fit_data.positives + fit_data.negatives) > 0).tocsr()
    lists = source_lists(sources, fit_data.positives, users, cfg.candidates, seen)
    fusion, report = chosen_fusion(sources, lists, labels.tocsr(), users, cfg.fusion_budget)
    say(f"fusion chosen on the label likes: {fusion.to_json()} (ndcg@20 {report['ndcg@20']})")
    fused = fused_lists(lists, fusion, cfg.candidates)
    return sources, fusion, report, (fused.items, fused.scores)


def fused_precomputed(
    sources: Sources,
    fusion: Any,
    history: sp.csr_matrix,
    seen: sp.csr_matrix,
    width: int,
    users: np.ndarray | None = None,
) -> PrecomputedShortlists:
    """`users`' (all by default) fused top-`width` (each source's top `fusion.depth`, as
    served) with the sources that proposed each item, PRECOMPUTE_USERS users at a time on
    the training engine (on Dask, the parts on the workers)."""
    n_users = history.shape[0]
    users = np.arange(n_users) if users is None else users
    parts = np.array_split(users, max(1, -(-len(users) // PRECOMPUTE_USERS)))
    done = compute.current().map(
        fused_part, parts, sources=sources, fusion=fusion, history=history, seen=seen, width=width
    )
    items, scores, bits = (np.concatenate([d[k] for d in done]) for k in range(3))
    return PrecomputedShortlists(items, scores, bits, done[0][3], user_rows(users, n_users))


def fused_part(
    users: np.ndarray,
    *,
    sources: Sources,
    fusion: Any,
    history: sp.csr_matrix,
    seen: sp.csr_matrix,
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """`users`' fused (items, scores, source bits) and the sources' names, in bit order."""
    lists = source_lists(sources, history, users, fusion.depth, seen, fusion.used)
    fused = fused_lists(lists, fusion, width)
    return fused.items.astype(np.int32), fused.scores, fused.source_bits(), tuple(fused.ranks)


def label_kind(data: Interactions, labels: str) -> str:
    """ "latest" or "random" for TrainConfig.labels ("auto": latest when likes are ordered)."""
    if labels == "auto":
        return "latest" if data.recency() is not None else "random"
    if labels not in ("latest", "random"):
        raise ValueError(f"ranker labels must be auto, latest or random, got {labels!r}")
    if labels == "latest" and data.recency() is None:
        raise ValueError("latest ranker labels need ordered likes (timestamps or sequence)")
    return labels


def label_mask(
    data: Interactions, labels: str, share: float, rng: np.random.Generator
) -> np.ndarray:
    """The likes held out as ranker labels (aligned with positives.data)."""
    if labels == "latest":
        return latest_share_mask(data, share)
    return holdout_mask(data.positives, share, rng)


def holdout_mask(
    positives: sp.csr_matrix, share: float, rng: np.random.Generator, min_likes: int = 5
) -> np.ndarray:
    """Per-user random holdout of `share` of the likes (only users with >= min_likes), as a
    mask aligned with the data of `positives` (sorted CSR)."""
    counts = np.diff(positives.indptr)
    row_of = np.repeat(np.arange(positives.shape[0]), counts)
    return (rng.random(positives.nnz) < share) & (counts[row_of] >= min_likes)


def holdout_split(
    positives: sp.csr_matrix, share: float, rng: np.random.Generator, min_likes: int = 5
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """`holdout_mask` as the (kept, held-out) like matrices."""
    csr = positives.tocsr()
    held = holdout_mask(csr, share, rng, min_likes)
    keep, label = csr.copy(), csr.copy()
    keep.data = np.where(held, 0, csr.data).astype(np.float32)
    label.data = np.where(held, csr.data, 0).astype(np.float32)
    keep.eliminate_zeros()
    label.eliminate_zeros()
    return keep, label


def data_feature_names(data: Interactions) -> list[str]:
    """The ranker's feature columns for a dataset (its attributes and context keys)."""
    return feature_names(
        attribute_names(data.item_features), attribute_names(data.user_features), list(data.context)
    )


def recent_likes(positives: sp.csr_matrix, order: np.ndarray | None, n: int) -> sp.csr_matrix:
    """Each user's `n` latest likes (by `Interactions.recency` when known); data = 1 for the
    newest, 2, ..."""
    csr = positives.tocsr()
    counts = np.diff(csr.indptr)
    rows = np.repeat(np.arange(csr.shape[0]), counts)
    key = order if order is not None else np.zeros(csr.nnz)
    newest_first = np.lexsort((-key, rows))
    rank = np.arange(csr.nnz) - csr.indptr[rows[newest_first]]
    pick = newest_first[rank < n]
    return sp.csr_matrix(
        ((rank[rank < n] + 1).astype(np.float32), (rows[pick], csr.indices[pick])),
        shape=csr.shape,
    )


def attribute_names(table: dict[str, np.ndarray]) -> list[str]:
    """Column names of the flattened attribute table: `name` or `name_j` for 2-d ones."""
    out = []
    for name, values in sorted(table.items()):
        out += [name] if values.ndim == 1 else [f"{name}_{j}" for j in range(values.shape[1])]
    return out


def attribute_table(table: dict[str, np.ndarray], n_rows: int) -> np.ndarray:
    cols = [v.reshape(len(v), -1) for _, v in sorted(table.items())]
    if not cols:
        return np.zeros((n_rows, 0), np.float32)
    return np.hstack(cols).astype(np.float32)


def fit_item_side(
    data: Interactions,
    item_vectors: np.ndarray,
    sequence_window: int = SEQUENCE_WINDOW,
    item_item: sp.csr_matrix | None = None,
) -> ItemSide:
    """The item-side feature data of a training set (what a bundle of it would serve)."""
    return item_side(
        data.positives,
        item_vectors,
        item_popularity(data),
        recent_popularity(data.positives, data.timestamps),
        attribute_table(data.item_features, data.n_items),
        attribute_names(data.item_features),
        attribute_names(data.user_features),
        context_counts(data.positives, data.context),
        sequence_neighbours(data.positives, data.recency(), sequence_window),
        item_item,
    )


def ranking_lists(
    fit: Interactions,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    labels: sp.csr_matrix,
    label_times: np.ndarray | None,
    cfg: TrainConfig,
    exclude: sp.csr_matrix | None = None,
    users: np.ndarray | None = None,
    keep_empty: bool = False,
    label_context: dict[str, np.ndarray] | None = None,
    candidates: tuple[np.ndarray, np.ndarray] | None = None,
    item_item: sp.csr_matrix | None = None,
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per user with labels: (candidates, feature rows, binary labels) over the top-N shortlist.

    `exclude` (default: the fit data's likes and dislikes) is never in a shortlist. Lists
    without a positive are dropped unless `keep_empty` (evaluation keeps them). A list's
    request context is that of the user's first label like (the earliest, with times):
    its hour and day, and its free-form values from `label_context` (aligned with labels).
    `candidates` (items, scores; one row per user of `users`, -1 padded) are the
    shortlists when given (the fused ones), else the vector model's top-N; `item_item` is
    the item-item source's table the features read.
    """
    seen = exclude if exclude is not None else ((fit.positives + fit.negatives) > 0).tocsr()
    recent = recent_likes(fit.positives, fit.recency(), cfg.recent_likes)
    activity = np.diff(fit.positives.indptr)
    items = fit_item_side(fit, item_vectors, cfg.sequence_window, item_item)
    user_attrs = attribute_table(fit.user_features, fit.n_users)
    no_live = np.zeros(cfg.candidates, np.float32)
    if users is None:
        users = np.flatnonzero(np.diff(labels.indptr) > 0)
    out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    n = min(cfg.candidates, fit.n_items)
    for lo in track(range(0, len(users), 1024), "ranking features"):
        batch = users[lo : lo + 1024]
        if candidates is None:
            scores = user_vectors[batch] @ item_vectors.T
            seen_rows = seen[batch].tocoo()
            scores[seen_rows.row, seen_rows.col] = -np.inf
            top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        for row, u in enumerate(batch):
            if candidates is None:
                cand = top[row][np.argsort(-scores[row, top[row]], kind="stable")]
                cand_scores = scores[row, cand]
            else:
                at = lo + row
                keep = candidates[0][at] >= 0
                cand, cand_scores = candidates[0][at][keep], candidates[1][at][keep]
            start, end = labels.indptr[u], labels.indptr[u + 1]
            y = np.isin(cand, labels.indices[start:end]).astype(np.float32)
            if y.sum() == 0 and not keep_empty:
                continue
            first = start
            if label_times is not None and end > start:
                first = start + int(np.argmin(label_times[start:end]))
            extra = {
                key: str(values[first])
                for key, values in (label_context or {}).items()
                if end > start and values[first] != ""
            }
            ctx = (
                context_at(label_times[first], extra)
                if label_times is not None and end > start
                else RequestContext(extra=extra)
            )
            signals = UserSignals(
                activity=float(activity[u]),
                recent_likes=recent_in_order(recent, u),
                recent_dislikes=row_items(fit.negatives, u),
                attributes=user_attrs[u] if user_attrs.shape[1] else None,
            )
            x = build_features(cand, cand_scores, signals, ctx, items, no_live[: len(cand)])
            out[int(u)] = (cand, x, y.astype(np.float32))
    return out


@dataclass
class FittedRanker(RankerFit):
    users: np.ndarray  # whose lists the ranker was fit on, in the order of held_out_scores
    sizes: np.ndarray  # their lengths
    labels: np.ndarray  # and, row by row, the labels and retrieval ranks
    retrieval_rank: np.ndarray
    deep: DeepFMWeights | None = None  # the DeepFM fit on the same lists, if any
    deep_epochs: int = 0  # its early-stopped epoch count and held-out NDCG@20
    deep_valid_ndcg: float = 0.0
    # the retrieval order's weight beside the rankers (ranking.scorer.choose_order_weight),
    # chosen on the out-of-fold scores, and their NDCG@20 with it
    order_weight: float = 0.0
    order_ndcg: float = 0.0

    def by_user(self, rows: np.ndarray) -> dict[int, np.ndarray]:
        """A row-aligned array (held_out_scores, labels, retrieval_rank) cut into lists."""
        parts = np.split(rows, np.cumsum(self.sizes)[:-1])
        return {int(u): p for u, p in zip(self.users, parts)}


def fit_ranker(
    lists: dict, names: list[str], cfg: TrainConfig, ranker_cfg: RankerConfig, say: Progress
) -> FittedRanker:
    """LambdaRank cross-validated on at most `ranker_max_lists` random lists (their users in
    `users`, in the order of `held_out_scores`)."""
    users = np.array(sorted(lists))
    np.random.default_rng(cfg.seed).shuffle(users)
    users = users[: cfg.ranker_max_lists]
    say(f"LambdaRank on {len(users):,} lists, {ranker_cfg.folds}-fold cross-validated")
    x, y, sizes = _stack(lists, users)
    fit = train_ranker((x, y, sizes), names, ranker_cfg)
    rank = x[:, names.index("retrieval_rank")]
    fitted = FittedRanker(fit.booster, fit.rounds, fit.held_out_scores, users, sizes, y, rank)
    chosen = choose_order_weight(fit.held_out_scores, rank, y, sizes)
    fitted.order_weight, fitted.order_ndcg = chosen
    say(f"retrieval order weighted {fitted.order_weight:g} beside the ranker")
    if cfg.deep_ranker:
        say(f"DeepFM on the same {len(users):,} lists")
        deep = train_deepfm((x, y, sizes), DeepFMConfig(seed=cfg.seed))
        fitted.deep, fitted.deep_epochs, fitted.deep_valid_ndcg = deep
    return fitted


def labelled_users(labels: sp.csr_matrix, max_lists: int, seed: int) -> np.ndarray:
    """Users with labels, at most 2 * max_lists of them at random (lists whose shortlist
    holds no label are dropped later, so this leaves room for about max_lists)."""
    users = np.flatnonzero(np.diff(labels.indptr) > 0)
    if len(users) > 2 * max_lists:
        users = np.sort(np.random.default_rng(seed).permutation(users)[: 2 * max_lists])
    return users


def _stack(lists, users) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = [lists[u][1] for u in users]
    ys = [lists[u][2] for u in users]
    return np.vstack(xs), np.concatenate(ys), np.array([len(y) for y in ys])


def retrieval_bundle(data: Interactions, model, index: str = "auto") -> Bundle:
    """A bundle around an already fitted retrieval model, without a ranker (benchmarks)."""
    coo = data.positives.tocoo()
    return Bundle(
        version=new_version(),
        users=data.users,
        items=data.items,
        user_vectors=model.user_factors,
        item_vectors=model.item_factors,
        index=build_index(model.item_factors, index),
        likes=data.positives,
        dislikes=data.negatives,
        recent_likes=recent_likes(data.positives, data.recency(), 50),
        popularity=item_popularity(data),
        item_features=attribute_table(data.item_features, data.n_items),
        item_feature_names=attribute_names(data.item_features),
        item_attribute_values=data.item_attribute_values,
        user_features=attribute_table(data.user_features, data.n_users),
        user_feature_names=attribute_names(data.user_features),
        recent_popularity=recent_popularity(data.positives, data.timestamps),
        context_counts=context_counts(data.positives, data.context),
        foldin=calibrate_targets(model.user_factors, model.item_factors, coo.row, coo.col),
        item_encoder=getattr(model, "item_encoder", None),
        user_weights=getattr(model, "user_weights", None),
        manifest={"dataset_fingerprint": data.fingerprint(), "model": model.name},
    )
