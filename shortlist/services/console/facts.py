"""What the console shows of the bundles on disk, read without loading a bundle.

The serving processes hold the bundles; the console reads only the small files it shows
(manifests, promotion log, item ids and attribute columns, popularity, precomputed
shortlists), memory-mapped where they grow with the catalogue, and caches them per version.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from shortlist.bundle import promotion
from shortlist.retrieval.precomputed import ITEMS_FILE

ONEHOT_MARK = "_onehot_"  # derived columns (topic_onehot_3): the source column is shown
PRECOMPUTED_TOP = 20  # "how often recommended": appearances in each user's first N


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest as written (for display: the services check digests and signatures)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.pop("files", None)
    return manifest


def summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The figures of a bundle an operator compares: model, sizes, offline metrics, gate."""
    return {
        "version": manifest.get("version"),
        "model": manifest.get("model"),
        "code_version": manifest.get("code_version"),
        "n_users": manifest.get("n_users"),
        "n_items": manifest.get("n_items"),
        "metrics": manifest.get("metrics", {}),
        "gate": manifest.get("gate"),
    }


@dataclass
class BundleFiles:
    """One bundle directory's displayable files, each read on first use."""

    directory: Path
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @cached_property
    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.directory)

    @cached_property
    def item_ids(self) -> list[str]:
        return json.loads((self.directory / "items.json").read_text())

    @cached_property
    def item_index(self) -> dict[str, int]:
        return {item: n for n, item in enumerate(self.item_ids)}

    @cached_property
    def user_index(self) -> dict[str, int]:
        users = json.loads((self.directory / "users.json").read_text())
        return {user: n for n, user in enumerate(users)}

    @cached_property
    def item_features(self) -> np.ndarray:
        return np.load(self.directory / "item_features.npy", mmap_mode="r")

    @cached_property
    def popularity(self) -> np.ndarray:
        return np.load(self.directory / "popularity.npy", mmap_mode="r")

    @cached_property
    def precomputed_lists(self) -> np.ndarray | None:
        """The precomputed shortlists' items, one row per user who has one (None: none)."""
        path = self.directory / ITEMS_FILE
        return np.load(path, mmap_mode="r") if path.exists() else None

    @cached_property
    def recommended_counts(self) -> np.ndarray | None:
        """Per item: in how many trained users' precomputed top-N it is (None: no lists)."""
        if self.precomputed_lists is None:
            return None
        ids = np.asarray(self.precomputed_lists[:, :PRECOMPUTED_TOP]).ravel()
        return np.bincount(ids[ids >= 0], minlength=len(self.item_ids))

    def item(self, item_id: str) -> dict[str, Any] | None:
        """The bundle's facts about one item, None when it was not trained on."""
        n = self.item_index.get(item_id)
        if n is None:
            return None
        names = self.manifest.get("item_feature_names", [])
        row = self.item_features[n] if len(names) else []
        attributes = {
            name: _number(float(value))
            for name, value in zip(names, row)
            if ONEHOT_MARK not in name
        }
        counts = self.recommended_counts
        return {
            "attributes": attributes,
            "training_likes": _number(float(self.popularity[n])),
            "precomputed_lists": None if counts is None else int(counts[n]),
            "precomputed_users": 0 if counts is None else len(self.precomputed_lists),
            "precomputed_top": PRECOMPUTED_TOP,
        }


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() else round(value, 4)


class BundleShelf:
    """The bundle root (or single bundle directory) the services load, and arm b's."""

    def __init__(self, path: str, ab_path: str = "") -> None:
        self.path = Path(path)
        self.ab_path = Path(ab_path) if ab_path else None
        self._cache: dict[Path, BundleFiles] = {}
        self._lock = threading.Lock()

    def _files(self, directory: Path) -> BundleFiles:
        directory = directory.resolve()
        with self._lock:
            if directory not in self._cache:
                self._cache[directory] = BundleFiles(directory)
            return self._cache[directory]

    def serving(self) -> BundleFiles | None:
        """The bundle `LATEST` names (or the configured directory itself)."""
        if (self.path / "manifest.json").exists():
            return self._files(self.path)
        version = promotion.latest_version(self.path)
        if version is None or not (self.path / version / "manifest.json").exists():
            return None
        return self._files(self.path / version)

    def arm_b(self) -> BundleFiles | None:
        if self.ab_path is None:
            return None
        try:
            directory = self._resolve(self.ab_path)
        except FileNotFoundError:
            return None
        return self._files(directory)

    @staticmethod
    def _resolve(path: Path) -> Path:
        if (path / "manifest.json").exists():
            return path
        version = promotion.latest_version(path)
        if version is None:
            raise FileNotFoundError(path)
        return path / version

    def versions(self) -> list[dict[str, Any]]:
        """Every complete bundle under the root, newest first, with its offline figures."""
        if (self.path / "manifest.json").exists():
            return [summary(self._files(self.path).manifest)]
        latest = promotion.latest_version(self.path)
        out = []
        for version in reversed(promotion.versions(self.path)):
            row = summary(self._files(self.path / version).manifest)
            row["serving"] = version == latest
            out.append(row)
        return out

    def promotions(self, last: int = 10) -> list[dict[str, Any]]:
        if (self.path / "manifest.json").exists():
            return []
        return promotion.history(self.path)[-last:][::-1]
