"""LATEST moves only by promotion, with a log that rollback follows; old bundles are pruned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shortlist.bundle.promotion import (
    PromotionError,
    history,
    latest_version,
    promote,
    prune,
    rollback,
    versions,
)


def _bundle(root: Path, version: str) -> None:
    (root / version).mkdir(parents=True)
    (root / version / "manifest.json").write_text(json.dumps({"version": version}))


def test_promote_points_latest_and_logs_each_move(tmp_path):
    for v in ("v1", "v2"):
        _bundle(tmp_path, v)
    promote(tmp_path, "v1", "trained")
    promote(tmp_path, "v2", "gate")
    assert latest_version(tmp_path) == "v2"
    assert [(e["version"], e["previous"], e["reason"]) for e in history(tmp_path)] == [
        ("v1", None, "trained"),
        ("v2", "v1", "gate"),
    ]


def test_promote_refuses_a_missing_or_incomplete_bundle(tmp_path):
    _bundle(tmp_path, "v1")
    (tmp_path / "v2").mkdir()  # no manifest: not a complete bundle
    promote(tmp_path, "v1", "trained")
    for bad in ("v2", "v9"):
        with pytest.raises(PromotionError, match=bad):
            promote(tmp_path, bad, "promote")
    assert latest_version(tmp_path) == "v1"


def test_rollback_goes_back_one_promotion_at_a_time(tmp_path):
    for v in ("v1", "v2", "v3"):
        _bundle(tmp_path, v)
        promote(tmp_path, v, "trained")
    assert rollback(tmp_path) == "v2"
    assert latest_version(tmp_path) == "v2"
    assert rollback(tmp_path) == "v1"  # not back to v3: a rollback's own entry is skipped
    with pytest.raises(PromotionError, match="roll back"):
        rollback(tmp_path)
    assert latest_version(tmp_path) == "v1"


def test_rollback_without_a_serving_bundle_is_an_error(tmp_path):
    with pytest.raises(PromotionError, match="nothing to roll back"):
        rollback(tmp_path)


def test_prune_keeps_the_newest_and_never_the_serving_bundle_or_its_rollback(tmp_path):
    for v in ("v1", "v2", "v3", "v4", "v5"):
        _bundle(tmp_path, v)
    promote(tmp_path, "v1", "trained")
    promote(tmp_path, "v2", "gate")  # v3..v5 were refused by the gate, never promoted
    deleted = prune(tmp_path, keep=2)
    assert deleted == ["v3"]
    assert versions(tmp_path) == ["v1", "v2", "v4", "v5"]
    assert latest_version(tmp_path) == "v2"
    with pytest.raises(ValueError, match="keep"):
        prune(tmp_path, keep=0)
