"""Versioned artifact bundles: everything the services load, written by the offline pipeline.

Layout of `<root>/<version>/`: manifest.json, users.json, items.json, user_vectors.npy,
item_vectors.npy, index.faiss, likes.npz and dislikes.npz (training interactions),
recent_likes.npz, popularity.npy, item_features.npy, ranker.txt, deep_ranker.npz (the
DeepFM ranker served blended with it; shortlist.deep_ranker), item_encoder.npy (linear
models only), user_features.npy, recent_popularity.npy and context_counts.npz (ranking
features; the manifest's context_values name each table's rows), shortlist_items.npy and
shortlist_scores.npy (each trained user's precomputed shortlist; shortlist.precomputed),
sequence.npz (item co-occurrence in like order, where likes were ordered).
`<root>/LATEST` names the newest version.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import lightgbm as lgb
import numpy as np
import scipy.sparse as sp

from shortlist import __version__
from shortlist.deep_ranker import DeepFMWeights, blended
from shortlist.features import ContextCounts, ItemSide, feature_names, item_side
from shortlist.foldin import FoldInTargets
from shortlist.ids import IdMap
from shortlist.index import load_index, save_index
from shortlist.precomputed import PrecomputedShortlists
from shortlist.ranker import compiled_scorer

LATEST = "LATEST"
log = logging.getLogger(__name__)


@dataclass
class Bundle:
    version: str
    users: IdMap
    items: IdMap
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    index: faiss.Index | None  # None: loaded without it, for a service that never searches
    likes: sp.csr_matrix  # training likes
    dislikes: sp.csr_matrix  # training dislikes
    recent_likes: sp.csr_matrix  # the last likes per user, for similarity features
    popularity: np.ndarray  # likes per item in training
    item_features: np.ndarray  # items x n attribute columns
    item_feature_names: list[str]
    foldin: FoldInTargets
    ranker: lgb.Booster | None = None
    # served blended with `ranker` when present (shortlist.deep_ranker)
    deep_ranker: DeepFMWeights | None = None
    # Linear models (the spectral filter): user vector = sum of encoder rows of their likes,
    # which makes fold-in exact. None: ridge fold-in on the item vectors.
    item_encoder: np.ndarray | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    user_features: np.ndarray | None = None  # users x n attribute columns
    user_feature_names: list[str] = field(default_factory=list)
    recent_popularity: np.ndarray | None = None  # time-decayed likes per item (NaN: no times)
    # free-form context key -> (its values, values x items likes recorded with each value)
    context_counts: ContextCounts = field(default_factory=dict)
    # Each trained user's top-N by exact search, served until feedback moves their vector.
    precomputed: PrecomputedShortlists | None = None
    # items x items co-occurrence in like order (features.sequence_neighbours); None when
    # the training likes had no order
    sequence: sp.csr_matrix | None = None

    def __post_init__(self) -> None:
        # Items a user interacted with in training are never recommended again.
        self.seen = ((self.likes + self.dislikes) > 0).tocsr()
        self.activity = np.diff(self.likes.indptr).astype(np.float32)
        self._pop_order = np.argsort(-self.popularity, kind="stable")
        if self.recent_popularity is None:
            self.recent_popularity = np.full(len(self.popularity), np.nan, np.float32)

    @cached_property
    def item_side(self) -> ItemSide:
        """What the ranking features read of the items, built on first use (only the ranking
        service reads it; it builds it before the bundle serves, see RankingServicer)."""
        return item_side(
            self.likes,
            self.item_vectors,
            self.popularity,
            self.recent_popularity,
            self.item_features,
            self.item_feature_names,
            self.user_feature_names if self.user_features is not None else [],
            self.context_counts,
            self.sequence,
        )

    @cached_property
    def scorer(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """The ranker compiled for serving, blended with the DeepFM ranker when the bundle
        has one (compiled on first use; the ranking service does it before the bundle
        serves); None without a ranker."""
        if self.ranker is None:
            return None
        lambdarank = compiled_scorer(self.ranker)
        return lambdarank if self.deep_ranker is None else blended(lambdarank, self.deep_ranker)

    def popular_items(self, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
        order = self._pop_order
        if exclude is not None and len(exclude):
            order = order[~np.isin(order, exclude)]
        return order[:n]


def new_version() -> str:
    return time.strftime("v%Y%m%d-%H%M%S", time.gmtime())


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def save_bundle(bundle: Bundle, root: Path) -> Path:
    """Write root/version (renamed into place when complete) and point LATEST at it."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / bundle.version
    tmp = root / f".{bundle.version}.tmp"
    tmp.mkdir(parents=True, exist_ok=False)
    manifest = {
        **bundle.manifest,
        "version": bundle.version,
        "code_version": bundle.manifest.get("code_version", code_version()),
        "n_users": len(bundle.users),
        "n_items": len(bundle.items),
        "dim": int(bundle.item_vectors.shape[1]),
        "item_feature_names": bundle.item_feature_names,
        "user_feature_names": bundle.user_feature_names,
        "foldin": {
            "like": bundle.foldin.like,
            "dislike": bundle.foldin.dislike,
            "prior_strength": bundle.foldin.prior_strength,
        },
        "has_ranker": bundle.ranker is not None,
        "has_deep_ranker": bundle.deep_ranker is not None,
        "context_values": {key: values for key, (values, _) in bundle.context_counts.items()},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (tmp / "users.json").write_text(json.dumps(bundle.users.to_list()))
    (tmp / "items.json").write_text(json.dumps(bundle.items.to_list()))
    np.save(tmp / "user_vectors.npy", bundle.user_vectors.astype(np.float32))
    np.save(tmp / "item_vectors.npy", bundle.item_vectors.astype(np.float32))
    np.save(tmp / "popularity.npy", bundle.popularity.astype(np.float32))
    np.save(tmp / "item_features.npy", bundle.item_features.astype(np.float32))
    sp.save_npz(tmp / "likes.npz", bundle.likes.tocsr())
    sp.save_npz(tmp / "dislikes.npz", bundle.dislikes.tocsr())
    sp.save_npz(tmp / "recent_likes.npz", bundle.recent_likes.tocsr())
    save_index(bundle.index, tmp / "index.faiss")
    if bundle.ranker is not None:
        bundle.ranker.save_model(str(tmp / "ranker.txt"))
    if bundle.deep_ranker is not None:
        bundle.deep_ranker.save(tmp / "deep_ranker.npz")
    if bundle.item_encoder is not None:
        np.save(tmp / "item_encoder.npy", bundle.item_encoder.astype(np.float32))
    if bundle.user_features is not None:
        np.save(tmp / "user_features.npy", bundle.user_features.astype(np.float32))
    np.save(tmp / "recent_popularity.npy", np.asarray(bundle.recent_popularity, np.float32))
    np.savez(tmp / "context_counts.npz", **{k: t for k, (_, t) in bundle.context_counts.items()})
    if bundle.precomputed is not None:
        bundle.precomputed.save(tmp)
    if bundle.sequence is not None:
        sp.save_npz(tmp / "sequence.npz", bundle.sequence.tocsr())
    os.replace(tmp, final)
    latest_tmp = root / f".{LATEST}.tmp"
    latest_tmp.write_text(bundle.version + "\n")
    os.replace(latest_tmp, root / LATEST)
    bundle.manifest = manifest
    return final


def resolve_bundle_dir(path: Path) -> Path:
    """A bundle directory itself, or a root whose LATEST names one."""
    if (path / "manifest.json").exists():
        return path
    latest = path / LATEST
    if latest.exists():
        return path / latest.read_text().strip()
    raise FileNotFoundError(f"no artifact bundle at {path} (run `shortlist train` first)")


def load_bundle(path: Path, with_index: bool = True) -> Bundle:
    """The bundle in `path` (a bundle directory, or a root whose LATEST names one).
    `with_index=False` leaves the FAISS index on disk (index None): the ranking, feedback
    and four-service gateway processes never search, and the Gowalla index is 210 MB."""
    directory = resolve_bundle_dir(Path(path))
    manifest = json.loads((directory / "manifest.json").read_text())
    ranker_path = directory / "ranker.txt"
    encoder_path = directory / "item_encoder.npy"
    deep_path = directory / "deep_ranker.npz"
    fold = manifest["foldin"]
    bundle = Bundle(
        version=manifest["version"],
        users=IdMap(json.loads((directory / "users.json").read_text())),
        items=IdMap(json.loads((directory / "items.json").read_text())),
        user_vectors=np.load(directory / "user_vectors.npy"),
        item_vectors=np.load(directory / "item_vectors.npy"),
        index=load_index(directory / "index.faiss") if with_index else None,
        likes=sp.load_npz(directory / "likes.npz").tocsr(),
        dislikes=sp.load_npz(directory / "dislikes.npz").tocsr(),
        recent_likes=sp.load_npz(directory / "recent_likes.npz").tocsr(),
        popularity=np.load(directory / "popularity.npy"),
        item_features=np.load(directory / "item_features.npy"),
        item_feature_names=list(manifest["item_feature_names"]),
        foldin=FoldInTargets(fold["like"], fold["dislike"], fold["prior_strength"]),
        ranker=lgb.Booster(model_file=str(ranker_path)) if ranker_path.exists() else None,
        deep_ranker=DeepFMWeights.load(deep_path) if deep_path.exists() else None,
        item_encoder=np.load(encoder_path) if encoder_path.exists() else None,
        manifest=manifest,
        user_features=_optional(directory / "user_features.npy"),
        user_feature_names=list(manifest.get("user_feature_names", [])),
        recent_popularity=_optional(directory / "recent_popularity.npy"),
        context_counts=_context_counts(directory, manifest.get("context_values", {})),
        precomputed=PrecomputedShortlists.load(directory),
        sequence=_optional_sparse(directory / "sequence.npz"),
    )
    _check_ranker_features(bundle)
    return bundle


def _check_ranker_features(bundle: Bundle) -> None:
    """A ranker scores the columns it was trained on, so a bundle from code that computed
    other features would be scored silently wrong: refuse it."""
    if bundle.ranker is None:
        return
    expected = feature_names(
        bundle.item_feature_names,
        bundle.user_feature_names if bundle.user_features is not None else [],
        list(bundle.context_counts),
    )
    if bundle.ranker.feature_name() != expected:
        raise ValueError(
            f"bundle {bundle.version}: its ranker was trained on the features "
            f"{bundle.ranker.feature_name()}, this code computes {expected}; retrain the bundle"
        )
    deep = bundle.deep_ranker
    if deep is not None and len(deep.scaling.mean) != len(expected):
        raise ValueError(
            f"bundle {bundle.version}: its DeepFM ranker takes {len(deep.scaling.mean)} "
            f"features, its LambdaRank ranker {len(expected)}; retrain the bundle"
        )


def _context_counts(directory: Path, values: dict[str, list[str]]) -> ContextCounts:
    if not values:
        return {}
    with np.load(directory / "context_counts.npz") as tables:
        return {key: (list(names), tables[key]) for key, names in sorted(values.items())}


def _optional(path: Path) -> np.ndarray | None:
    return np.load(path) if path.exists() else None


def _optional_sparse(path: Path) -> sp.csr_matrix | None:
    return sp.load_npz(path).tocsr() if path.exists() else None


def latest_version(root: Path) -> str | None:
    """The version `<root>/LATEST` names, or None when `root` has no LATEST."""
    try:
        return (Path(root) / LATEST).read_text().strip() or None
    except OSError:
        return None


class BundleWatcher:
    """Hot reload: when `<root>/LATEST` names another version (polled every `poll_s`, or at
    once after `request_reload()`, e.g. from SIGHUP), the new bundle is loaded in this
    background thread while the old one keeps serving, then handed to `swap`, which replaces
    the services' bundle reference in one assignment. In-flight requests finish on the
    bundle they started with. A bundle that fails to load is logged and retried on the next
    poll; the old one stays in service."""

    def __init__(
        self,
        root: Path,
        current_version: str,
        swap: Callable[[Bundle], None],
        poll_s: float = 2.0,
        loader: Callable[[Path], Bundle] | None = None,
    ) -> None:
        self.root = Path(root)
        self.version = current_version
        self.swap = swap
        self.poll_s = poll_s
        self.loader = loader or load_bundle
        self.swaps = 0
        self.failures = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> BundleWatcher:
        self._thread = threading.Thread(target=self._loop, name="bundle-watcher", daemon=True)
        self._thread.start()
        return self

    def request_reload(self) -> None:
        """Check LATEST now (safe to call from a signal handler)."""
        self._wake.set()

    def check(self) -> bool:
        """Load and swap in the bundle LATEST names if it is new; True when swapped."""
        version = latest_version(self.root)
        if version is None or version == self.version:
            return False
        try:
            bundle = self.loader(self.root / version)
        except Exception:
            self.failures += 1
            log.exception("could not load bundle %s; still serving %s", version, self.version)
            return False
        old, self.version = self.version, bundle.version
        self.swap(bundle)
        self.swaps += 1
        log.info("switched from bundle %s to %s", old, bundle.version)
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s if self.poll_s > 0 else None)
            self._wake.clear()
            if not self._stop.is_set():
                self.check()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
