"""Which bundle serves: `<root>/LATEST`, moved only by promotion, with a log to roll back by.

The services follow `LATEST` (shortlist.bundle.watcher). Every move of it (training's gate,
`shortlist promote`, `shortlist rollback`) is appended to `<root>/promotions.jsonl`, so a
rollback goes to the bundle that served before the current one. On disk the newest `keep`
bundles stay, and never the serving one or its rollback target are deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

LATEST = "LATEST"
LOG = "promotions.jsonl"


class PromotionError(ValueError):
    """A promotion or rollback that cannot be done (no such bundle, nothing to go back to)."""


def latest_version(root: Path) -> str | None:
    """The version `<root>/LATEST` names, or None when `root` has no LATEST."""
    try:
        return (Path(root) / LATEST).read_text().strip() or None
    except OSError:
        return None


def versions(root: Path) -> list[str]:
    """Complete bundles under `root`, oldest first (versions sort by their creation time)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if not p.name.startswith(".") and (p / "manifest.json").exists()
    )


def history(root: Path) -> list[dict]:
    """The promotion log, oldest first."""
    path = Path(root) / LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def promote(root: Path, version: str, reason: str) -> None:
    """Point LATEST at `version` (atomically) and log it; the services swap within seconds."""
    root = Path(root)
    if not (root / version / "manifest.json").exists():
        raise PromotionError(
            f"no bundle {version!r} under {root} (have: {', '.join(versions(root)) or 'none'})"
        )
    previous = latest_version(root)
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / LATEST)
    entry = {"version": version, "previous": previous, "reason": reason, "at": _now()}
    with open(root / LOG, "a") as log:
        log.write(json.dumps(entry) + "\n")
        log.flush()
        os.fsync(log.fileno())


def rollback_target(root: Path) -> str:
    """The bundle that served before the current one (skipping any deleted since)."""
    current = latest_version(root)
    if current is None:
        raise PromotionError(f"no bundle serves from {root}: nothing to roll back")
    present = set(versions(root))
    # the promotion that made `current` serve (a rollback's own entry would only point back
    # at what was rolled away from: going back twice goes two bundles back)
    for entry in reversed(history(root)):
        if entry["version"] != current or entry["reason"] == "rollback":
            continue
        if entry.get("previous") in present and entry["previous"] != current:
            return entry["previous"]
    raise PromotionError(f"no earlier promoted bundle of {root} is left to roll back to")


def rollback(root: Path) -> str:
    """Point LATEST back at the bundle that served before; returns that version."""
    target = rollback_target(root)
    promote(root, target, "rollback")
    return target


def prune(root: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` bundles, never the serving one or its rollback
    target; returns the deleted versions."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    root = Path(root)
    protected = {latest_version(root)}
    with contextlib.suppress(PromotionError):  # nothing to roll back to: nothing to keep
        protected.add(rollback_target(root))
    old = versions(root)[:-keep]
    deleted = [v for v in old if v not in protected]
    for version in deleted:
        shutil.rmtree(root / version)
    return deleted


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
