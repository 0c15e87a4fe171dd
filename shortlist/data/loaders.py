"""Importers: the LightGCN text format, MovieLens ratings and a generic CSV.

Every loader keeps external ids as strings in `IdMap`s outside the models; matrices use
dense indices. Splits that come as separate files share one id space (the union).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from shortlist.data.ids import IdMap
from shortlist.data.interactions import Interactions, merged_values

SPLIT_NAMES = ("train", "valid", "test")


@dataclass
class SplitData:
    """A dataset with its splits, all sharing one id space and one set of dislikes."""

    name: str
    train: Interactions
    valid: Interactions | None
    test: Interactions

    def train_valid(self) -> Interactions:
        """Train and valid merged (protocol A trains on both)."""
        if self.valid is None:
            return self.train
        merged = (self.train.positives + self.valid.positives).tocsr()
        merged.data[:] = 1.0
        out = self.train.with_positives(merged)
        if self.train.timestamps is not None and self.valid.timestamps is not None:
            out.timestamps = merged_values(
                [
                    (self.train.positives, self.train.timestamps),
                    (self.valid.positives, self.valid.timestamps),
                ]
            ).astype(np.int64)
        if self.train.sequence is not None:
            unknown = np.zeros(self.valid.nnz, np.int64)  # valid likes: position unknown
            out.sequence = merged_values(
                [
                    (self.train.positives, self.train.sequence),
                    (
                        self.valid.positives,
                        self.valid.sequence if self.valid.sequence is not None else unknown,
                    ),
                ]
            ).astype(np.int64)
        out.context = {
            key: merged_values(
                [(self.train.positives, values), (self.valid.positives, self.valid.context[key])]
            )
            for key, values in self.train.context.items()
            if key in self.valid.context
        }
        return out

    def fingerprint(self) -> str:
        """A content hash of all parts (train, valid, test), ids and dislikes included."""
        h = hashlib.sha256()
        for part in (self.train, self.valid, self.test):
            h.update((part.fingerprint() if part is not None else "-").encode())
        return h.hexdigest()[:16]


# ---------------------------------------------------------------- LightGCN text format


def _read_lightgcn_lines(path: Path) -> tuple[list[str], list[str]]:
    users: list[str] = []
    items: list[str] = []
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 2:
                continue
            users.extend([parts[0]] * (len(parts) - 1))
            items.extend(parts[1:])
    return users, items


def _sorted_ids(values: set[str]) -> list[str]:
    """Numeric ids in numeric order (so `IdMap` index == original id when dense)."""
    if all(v.lstrip("-").isdigit() for v in values):
        return sorted(values, key=int)
    return sorted(values)


def _indices(
    rows: list[str], cols: list[str], users: IdMap, items: IdMap
) -> tuple[np.ndarray, np.ndarray]:
    r = np.fromiter((users.index(u) for u in rows), np.int64, len(rows))
    c = np.fromiter((items.index(i) for i in cols), np.int64, len(cols))
    return r, c


def _matrix(r: np.ndarray, c: np.ndarray, users: IdMap, items: IdMap) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(users), len(items)))
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return m


def line_positions(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Each like's 1-based position in its user's line, aligned with `_matrix`'s data (the
    last position where a line repeats an item)."""
    starts = np.r_[True, r[1:] != r[:-1]] if len(r) else np.zeros(0, bool)
    run = np.cumsum(starts) - 1
    pos = np.arange(len(r)) - np.flatnonzero(starts)[run] + 1
    order = np.lexsort((pos, c, r))
    r, c, pos = r[order], c[order], pos[order]
    last = np.r_[(r[1:] != r[:-1]) | (c[1:] != c[:-1]), True] if len(r) else np.zeros(0, bool)
    return pos[last].astype(np.int64)


def load_lightgcn_dir(directory: str | Path) -> SplitData:
    """`train.txt`, optional `valid.txt`, `test.txt`; each line `user item item ...`.

    The format has no times, but a train line lists a user's items in their original order:
    on Gowalla the items at the end of a line are the most like that user's test items
    (docs/decisions/0008-recency-weighted-retrieval.md), so train likes keep
    their line position as `sequence`. The valid part of these splits is a random sample of
    the original training lines, so its likes get no position.
    """
    directory = Path(directory)
    raw: dict[str, tuple[list[str], list[str]]] = {}
    for name in SPLIT_NAMES:
        path = directory / f"{name}.txt"
        if path.exists():
            raw[name] = _read_lightgcn_lines(path)
    if "train" not in raw or "test" not in raw:
        raise FileNotFoundError(f"{directory} needs train.txt and test.txt")
    all_users = set().union(*(set(u) for u, _ in raw.values()))
    all_items = set().union(*(set(i) for _, i in raw.values()))
    users, items = IdMap(_sorted_ids(all_users)), IdMap(_sorted_ids(all_items))
    pairs = {name: _indices(u, i, users, items) for name, (u, i) in raw.items()}
    parts = {
        name: Interactions(users, items, _matrix(r, c, users, items))
        for name, (r, c) in pairs.items()
    }
    parts["train"].sequence = line_positions(*pairs["train"])
    return SplitData(directory.name, parts["train"], parts.get("valid"), parts["test"])


def write_lightgcn_dir(split: SplitData, directory: str | Path) -> Path:
    """Write a split in the LightGCN text format (likes only; users without likes skipped).

    External ids are written as they are, so they must not contain whitespace.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts = {"train": split.train, "valid": split.valid, "test": split.test}
    for name, part in parts.items():
        if part is None:
            continue
        pos = part.positives.tocsr()
        pos.sort_indices()
        with open(directory / f"{name}.txt", "w") as fh:
            for u in range(pos.shape[0]):
                row = pos.indices[pos.indptr[u] : pos.indptr[u + 1]]
                if len(row):
                    fh.write(" ".join([part.users.id(u), *part.items.ids(row)]) + "\n")
    return directory


# ---------------------------------------------------------------------- MovieLens


@dataclass
class RatingThresholds:
    """Ratings >= `like` are likes, ratings <= `dislike` are dislikes, the rest is ignored."""

    like: float = 4.0
    dislike: float = 2.0


def events_to_interactions(
    users: list[str],
    items: list[str],
    labels: np.ndarray,
    times: np.ndarray | None,
    user_ids: list[str] | None = None,
    item_ids: list[str] | None = None,
    context: dict[str, list[str]] | None = None,
) -> Interactions:
    """Build `Interactions` from events; label 1 = like, -1 = dislike, 0 = ignored.

    Repeated (user, item) events keep the last one in time (or file) order. `context`: per
    free-form key, the value each event recorded ("" for none).
    """
    umap = IdMap(user_ids if user_ids is not None else _sorted_ids(set(users)))
    imap = IdMap(item_ids if item_ids is not None else _sorted_ids(set(items)))
    u = np.fromiter((umap.index(x) for x in users), np.int64, len(users))
    i = np.fromiter((imap.index(x) for x in items), np.int64, len(items))
    t = np.zeros(len(u), np.int64) if times is None else np.asarray(times, np.int64)
    # Last event per pair wins: stable sort by time, then keep the last occurrence.
    order = np.argsort(t, kind="stable")
    key = u[order] * len(imap) + i[order]
    _, last_rev = np.unique(key[::-1], return_index=True)
    keep = order[len(order) - 1 - last_rev]
    u, i, t, labels = u[keep], i[keep], t[keep], np.asarray(labels)[keep]
    shape = (len(umap), len(imap))
    like, dis = labels > 0, labels < 0
    pos = sp.csr_matrix((np.ones(like.sum(), np.float32), (u[like], i[like])), shape=shape)
    pos.sort_indices()
    tmat = sp.csr_matrix((t[like].astype(np.float64) + 1.0, (u[like], i[like])), shape=shape)
    tmat.sort_indices()
    neg = sp.csr_matrix((np.ones(dis.sum(), np.float32), (u[dis], i[dis])), shape=shape)
    in_csr_order = np.lexsort((i[like], u[like]))  # the kept likes, as pos.data holds them
    return Interactions(
        users=umap,
        items=imap,
        positives=pos,
        negatives=neg,
        timestamps=(tmat.data - 1.0).astype(np.int64) if times is not None else None,
        context={
            key: np.asarray(values, dtype=str)[keep][like][in_csr_order]
            for key, values in (context or {}).items()
        },
    )


def load_movielens(
    directory: str | Path, thresholds: RatingThresholds | None = None, features: bool = True
) -> Interactions:
    """MovieLens 100K `u.data` (+ `u.item` genres/year and `u.user` attributes as features)."""
    directory = Path(directory)
    th = thresholds or RatingThresholds()
    raw = np.loadtxt(directory / "u.data", dtype=np.int64, ndmin=2)
    ratings = raw[:, 2].astype(np.float64)
    labels = np.where(ratings >= th.like, 1, np.where(ratings <= th.dislike, -1, 0))
    user_ids = item_ids = None
    ufeat: dict[str, np.ndarray] = {}
    ifeat: dict[str, np.ndarray] = {}
    if features and (directory / "u.item").exists() and (directory / "u.user").exists():
        item_ids, ifeat = _movielens_items(directory / "u.item")
        user_ids, ufeat = _movielens_users(directory / "u.user")
    data = events_to_interactions(
        [str(x) for x in raw[:, 0]],
        [str(x) for x in raw[:, 1]],
        labels,
        raw[:, 3],
        user_ids=user_ids,
        item_ids=item_ids,
    )
    data.user_features, data.item_features = ufeat, ifeat
    return data


def _movielens_items(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    ids, genres, years = [], [], []
    with open(path, encoding="latin-1") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("|")
            if len(parts) < 6:
                continue
            ids.append(parts[0])
            genres.append([float(g) for g in parts[5:]])
            date = parts[2]
            years.append(float(date[-4:]) if len(date) >= 4 and date[-4:].isdigit() else np.nan)
    year = np.asarray(years, np.float32)
    year = np.where(np.isnan(year), np.nanmedian(year), year)
    return ids, {
        "genres": np.asarray(genres, np.float32),
        "year": ((year - year.mean()) / (year.std() + 1e-6)).astype(np.float32),
    }


def _movielens_users(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    ids, ages, female, occupations = [], [], [], []
    with open(path, encoding="latin-1") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("|")
            if len(parts) < 4:
                continue
            ids.append(parts[0])
            ages.append(float(parts[1]))
            female.append(1.0 if parts[2] == "F" else 0.0)
            occupations.append(parts[3])
    vocab = sorted(set(occupations))
    occ = np.zeros((len(ids), len(vocab)), np.float32)
    occ[np.arange(len(ids)), [vocab.index(o) for o in occupations]] = 1.0
    age = np.asarray(ages, np.float32)
    return ids, {
        "age": (age - age.mean()) / (age.std() + 1e-6),
        "female": np.asarray(female, np.float32),
        "occupation": occ,
    }
