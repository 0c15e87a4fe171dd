"""The two benchmark protocols of the datasets' `../shared/data/README.md`.

A (LightGCN paper, BARS): train on train+valid with fixed settings, report test; the test
ranking excludes train+valid (the training items).
B (LightGCN++): train on train, choose the epoch / setting by valid NDCG@20, report test;
the test ranking excludes the TRAIN items only, so valid items stay rankable (and count as
misses). This is LightGCN++'s rule: geon0325/LightGCNpp at commit 474c9bec,
`code/Procedure.py`, `Test` (line 76): line 104 `allPos =
dataset.getUserPosItems(batch_users)` reads `UserItemNet`, built from train.txt alone
(`code/dataloader.py`, `Loader.__init__`); lines 111-116 set those items' scores to -(1<<10)
before `torch.topk` (line 117). Recall and NDCG are summed per user (lines 136-139) and
divided by `len(users)` (lines 140-142), the users of `testDict` (line 92): averaged over
test users, as `metrics.evaluate` does. See docs/decisions/0025-protocol-b-train-only.md.
B-valid-excluded: B's training, with valid items excluded from the test ranking too (this
repository's rule before decision 0025); never compare it with published figures.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shortlist.data.interactions import Interactions
from shortlist.data.loaders import SplitData
from shortlist.evaluation.metrics import evaluate, evaluate_model
from shortlist.models import registry
from shortlist.models.base import EmbeddingModel, FitReport, Validator

PROTOCOLS = ("A", "B", "B-valid-excluded")
# What each protocol's test ranking excludes; printed in the bench's JSON line so a figure
# never travels without its rule.
TEST_EXCLUDES = {"A": "train+valid", "B": "train", "B-valid-excluded": "train+valid"}


def normalize_protocol(name: str) -> str:
    """The canonical protocol name (case-insensitive), or ValueError."""
    for known in PROTOCOLS:
        if name.strip().upper() == known.upper():
            return known
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {name!r}")


def trains_on_train_only(protocol: str) -> bool:
    """B and its variant fit on train and select on valid; A fits on train+valid."""
    return normalize_protocol(protocol) != "A"


def excluded_at_test(split: SplitData, protocol: str) -> Any:
    """The likes the test ranking excludes under `protocol` (see `TEST_EXCLUDES`)."""
    protocol = normalize_protocol(protocol)
    if TEST_EXCLUDES[protocol] == "train":
        return split.train.positives
    return union_likes(split.train, split.valid)


@dataclass
class ProtocolResult:
    dataset: str
    protocol: str
    model: str
    metrics: dict[str, float]
    train_seconds: float
    eval_seconds: float
    fingerprint: str
    config: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    valid_metrics: dict[str, float] = field(default_factory=dict)
    fitted: EmbeddingModel | None = None

    def summary(self) -> dict[str, Any]:
        """The flat JSON record printed as the bench's last line."""
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "model": self.model,
            "test_excludes": TEST_EXCLUDES[self.protocol],
        }
        out.update({k: round(v, 6) for k, v in self.metrics.items() if k != "users"})
        out["users"] = int(self.metrics.get("users", 0))
        out["train_seconds"] = round(self.train_seconds, 2)
        out["eval_seconds"] = round(self.eval_seconds, 2)
        out["fingerprint"] = self.fingerprint
        if self.valid_metrics:
            out["valid_ndcg@20"] = round(self.valid_metrics.get("ndcg@20", 0.0), 6)
        return out


def _fit(model: EmbeddingModel, train: Interactions, valid: Interactions | None) -> FitReport:
    if valid is not None and "validate" in inspect.signature(model.fit).parameters:
        return model.fit(train, validate=validator(train, valid))  # type: ignore[call-arg]
    return model.fit(train)


def validator(train: Interactions, valid: Interactions) -> Validator:
    """Early stopping on `valid`'s likes, `train`'s excluded from the ranking."""
    return lambda users, items, k: evaluate(users, items, train.positives, valid.positives, ks=(k,))


def union_likes(a: Interactions, b: Interactions | None) -> Any:
    """The likes of `a` and `b` as one binary matrix (the items a test ranking excludes)."""
    if b is None:
        return a.positives
    m = (a.positives + b.positives).tocsr()
    m.data[:] = 1.0
    return m


def run_protocol(
    split: SplitData,
    protocol: str,
    model_name: str,
    config: dict[str, Any] | None = None,
    ks: tuple[int, ...] = (10, 20, 50),
    build: Callable[[str, dict[str, Any]], EmbeddingModel] | None = None,
) -> ProtocolResult:
    """Train `model_name` under protocol A, B or B-valid-excluded and evaluate on test.
    `build` makes models outside the registry (the bench's peers) with the same protocol."""
    protocol = normalize_protocol(protocol)
    config = dict(config or {})
    model = (build or registry.build)(model_name, config)
    if protocol == "A":
        train = split.train_valid()
        fit_valid = None
        exclude = train.positives
    else:
        if split.valid is None:
            raise ValueError("protocol B needs a valid split")
        train, fit_valid = split.train, split.valid
        exclude = excluded_at_test(split, protocol)
    start = time.perf_counter()
    report = _fit(model, train, fit_valid)
    train_seconds = time.perf_counter() - start

    valid_metrics: dict[str, float] = {}
    history = train.positives
    if fit_valid is not None:
        valid_metrics = evaluate_model(
            model, history, train.positives, fit_valid.positives, ks=(20,)
        )
    start = time.perf_counter()
    metrics = evaluate_model(model, history, exclude, split.test.positives, ks)
    eval_seconds = time.perf_counter() - start
    return ProtocolResult(
        dataset=split.name,
        protocol=protocol,
        model=model_name,
        metrics=metrics,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        fingerprint=split.fingerprint(),
        config={k: v for k, v in vars(getattr(model, "config", None) or object()).items()}
        if getattr(model, "config", None) is not None
        else {},
        history=report.history,
        valid_metrics=valid_metrics,
        fitted=model,
    )


def random_scores_baseline(split: SplitData, seed: int = 0, dim: int = 8) -> dict[str, float]:
    """Metrics of random vectors: the floor any trained model must clear."""
    rng = np.random.default_rng(seed)
    train = split.train_valid()
    u = rng.standard_normal((train.n_users, dim)).astype(np.float32)
    i = rng.standard_normal((train.n_items, dim)).astype(np.float32)
    return evaluate(u, i, train.positives, split.test.positives, ks=(20,))
