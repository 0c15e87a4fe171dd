"""Versioned artifact bundles: everything the services load, written by the offline pipeline.

Layout of `<root>/<version>/`: manifest.json, users.json (for people and tools; services
read users_ids.npy and users_order.npy), items.json, item_vectors.npy, index.faiss,
user_vectors.npy or, for linear models, user_weights.* (each training like's weight; a
user's vector is computed from it and item_encoder.npy per request), likes.*, dislikes.*
and recent_likes.* (training interactions, each a CSR matrix as three `.npy` arrays,
shortlist.data.mapped), cooc.* (the ranking's item co-occurrence neighbours, computed
once here), popularity.npy, item_features.npy, ranker.txt, deep_ranker.npz (the DeepFM
ranker served blended with it; shortlist.ranking.deepfm), item_encoder.npy (linear
models only), user_features.npy, recent_popularity.npy and context_counts.npz (ranking
features; the manifest's context_values name each table's rows), shortlist_items.npy,
shortlist_scores.npy, shortlist_sources.npy and shortlist_rows.npy (the trained users'
precomputed shortlists, which sources proposed each item and, where only some users have
one, each user's row; shortlist.retrieval.precomputed),
sequence.npz (item co-occurrence in like order, where likes were ordered), item_item.npz
(the item-item source's neighbour table, fused into the shortlist; manifest `fusion`),
item_attributes.json (item attributes as text, for request rules; when the data had any).
`<root>/LATEST` names the newest version.

Everything per user is loaded memory-mapped, so that serving memory does not grow with
users and the processes serving a bundle on a node share one copy of it in the page cache
(docs/decisions/0041-serving-memory.md). Bundles written before this layout (users.json,
user_vectors.npy and likes.npz alone) still load, into memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import scipy.sparse as sp

from shortlist import __version__
from shortlist.bundle.bundle import Bundle
from shortlist.bundle.integrity import read_manifest, write_manifest
from shortlist.bundle.promotion import LATEST, promote
from shortlist.data.ids import IdMap
from shortlist.data.mapped import (
    EncodedVectors,
    MappedIds,
    has_csr,
    has_ids,
    load_csr,
    load_mapped,
    save_csr,
    save_ids,
)
from shortlist.feedback.foldin import FoldInTargets
from shortlist.models.ials import MFSource
from shortlist.ranking.context import ContextCounts
from shortlist.ranking.deepfm import DeepFMWeights
from shortlist.ranking.features import feature_names
from shortlist.ranking.item_side import item_neighbours
from shortlist.retrieval.fusion import FusionConfig
from shortlist.retrieval.index import load_index, save_index
from shortlist.retrieval.precomputed import PrecomputedShortlists


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


def save_bundle(
    bundle: Bundle,
    root: Path,
    promote_it: bool = True,
    reason: str = "trained",
    key: str | None = None,
) -> Path:
    """Write root/version (renamed into place when complete) and, with `promote_it`, point
    LATEST at it (shortlist.bundle.promotion). The manifest, written last, lists every
    file's sha256 and is signed with `key` when given (shortlist.bundle.integrity)."""
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
    user_ids = bundle.users.to_list()
    (tmp / "users.json").write_text(json.dumps(user_ids))
    save_ids(tmp, "users", user_ids)
    (tmp / "items.json").write_text(json.dumps(bundle.items.to_list()))
    if bundle.user_weights is not None and bundle.item_encoder is not None:
        save_csr(tmp, "user_weights", bundle.user_weights)
    else:
        np.save(tmp / "user_vectors.npy", np.asarray(bundle.user_vectors, np.float32))
    np.save(tmp / "item_vectors.npy", bundle.item_vectors.astype(np.float32))
    np.save(tmp / "popularity.npy", bundle.popularity.astype(np.float32))
    np.save(tmp / "item_features.npy", bundle.item_features.astype(np.float32))
    save_csr(tmp, "likes", bundle.likes)
    save_csr(tmp, "dislikes", bundle.dislikes)
    save_csr(tmp, "recent_likes", bundle.recent_likes)
    cooc = bundle.cooc if bundle.cooc is not None else item_neighbours(bundle.likes)
    save_csr(tmp, "cooc", cooc, cooc.dtype)
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
    if bundle.item_attribute_values:
        (tmp / "item_attributes.json").write_text(json.dumps(bundle.item_attribute_values))
    if bundle.item_item is not None:
        sp.save_npz(tmp / "item_item.npz", bundle.item_item.tocsr())
    if bundle.ials is not None:
        mf = bundle.ials
        np.savez(tmp / "ials.npz", item_factors=mf.item_factors, gram=mf.gram, alpha=mf.alpha)
    if bundle.fusion is not None:
        manifest["fusion"] = bundle.fusion.to_json()
    manifest = write_manifest(tmp, manifest, key)
    os.replace(tmp, final)
    if promote_it:
        promote(root, bundle.version, reason)
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


def load_bundle(path: Path, with_index: bool = True, key: str | None = None) -> Bundle:
    """The bundle in `path` (a bundle directory, or a root whose LATEST names one).
    `with_index=False` leaves the FAISS index on disk (index None): the ranking, feedback
    and four-service gateway processes never search, and a large catalogue's index is about
    the size of its item vectors (docs/decisions/0007-served-index.md). A bundle whose files
    do not match its manifest, or not signed with `key` when one is given, is refused
    (shortlist.bundle.integrity.BundleIntegrityError)."""
    directory = resolve_bundle_dir(Path(path))
    manifest = read_manifest(directory, key)  # files checked before any is parsed
    ranker_path = directory / "ranker.txt"
    encoder_path = directory / "item_encoder.npy"
    deep_path = directory / "deep_ranker.npz"
    fold = manifest["foldin"]
    items = IdMap(json.loads((directory / "items.json").read_text()))
    # read row by row (user vectors, fold-in): mapped, one copy per node
    encoder = load_mapped(encoder_path) if encoder_path.exists() else None
    n_items = len(items)
    user_vectors = _user_vectors(directory, encoder, n_items)
    bundle = Bundle(
        version=manifest["version"],
        users=_users(directory),
        items=items,
        user_vectors=user_vectors,
        item_vectors=np.load(directory / "item_vectors.npy"),
        index=load_index(directory / "index.faiss") if with_index else None,
        likes=_interactions(directory, "likes", n_items),
        dislikes=_interactions(directory, "dislikes", n_items),
        recent_likes=_interactions(directory, "recent_likes", n_items),
        popularity=np.load(directory / "popularity.npy"),
        item_features=np.load(directory / "item_features.npy"),
        item_feature_names=list(manifest["item_feature_names"]),
        foldin=FoldInTargets(fold["like"], fold["dislike"], fold["prior_strength"]),
        ranker=lgb.Booster(model_file=str(ranker_path)) if ranker_path.exists() else None,
        deep_ranker=DeepFMWeights.load(deep_path) if deep_path.exists() else None,
        item_encoder=encoder,
        manifest=manifest,
        user_features=_optional(directory / "user_features.npy", mapped=True),
        user_feature_names=list(manifest.get("user_feature_names", [])),
        recent_popularity=_optional(directory / "recent_popularity.npy"),
        context_counts=_context_counts(directory, manifest.get("context_values", {})),
        precomputed=PrecomputedShortlists.load(directory, _fused_sources(manifest)),
        sequence=_optional_sparse(directory / "sequence.npz"),
        item_attribute_values=_optional_json(directory / "item_attributes.json"),
        item_item=_optional_sparse(directory / "item_item.npz"),
        ials=_optional_mf(directory / "ials.npz"),
        fusion=FusionConfig.from_json(manifest.get("fusion")),
        cooc=load_csr(directory, "cooc", n_items) if has_csr(directory, "cooc") else None,
        # kept so that a loaded bundle saves as it came
        user_weights=user_vectors.weights if isinstance(user_vectors, EncodedVectors) else None,
    )
    _check_ranker_features(bundle)
    return bundle


def _users(directory: Path) -> IdMap | MappedIds:
    if has_ids(directory, "users"):
        return MappedIds.load(directory, "users")
    return IdMap(json.loads((directory / "users.json").read_text()))  # an older bundle


def _user_vectors(
    directory: Path, encoder: np.ndarray | None, n_items: int
) -> np.ndarray | EncodedVectors:
    """A linear model's vectors computed per request from the mapped like weights and
    the encoder; other models' stored vectors, mapped."""
    if encoder is not None and has_csr(directory, "user_weights"):
        return EncodedVectors(load_csr(directory, "user_weights", n_items), encoder)
    return load_mapped(directory / "user_vectors.npy")


def _interactions(directory: Path, name: str, n_items: int) -> sp.csr_matrix:
    if has_csr(directory, name):
        return load_csr(directory, name, n_items)
    return sp.load_npz(directory / f"{name}.npz").tocsr()  # an older bundle


def _fused_sources(manifest: dict) -> tuple[str, ...]:
    """The sources a fused precomputed shortlist's bits stand for, in bit order."""
    fusion = FusionConfig.from_json(manifest.get("fusion"))
    return tuple(fusion.used) if fusion is not None else ()


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


def _optional(path: Path, mapped: bool = False) -> np.ndarray | None:
    if not path.exists():
        return None
    return load_mapped(path) if mapped else np.load(path)


def _optional_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _optional_sparse(path: Path) -> sp.csr_matrix | None:
    return sp.load_npz(path).tocsr() if path.exists() else None


def _optional_mf(path: Path) -> MFSource | None:
    if not path.exists():
        return None
    with np.load(path) as f:
        return MFSource(f["item_factors"], f["gram"], float(f["alpha"]))
