"""A/B arms: which bundle serves a user when two are configured.

Arm "a" is the default bundle (`bundle`), arm "b" the one named by `ab_bundle_b`. A user is
in arm "b" when a stable hash of (salt, user id) falls below `ab_share_b`: the same user
always lands in the same arm, across processes, restarts and machines, and changing the
salt reshuffles everyone for a new experiment.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from shortlist.bundle.bundle import Bundle
from shortlist.bundle.files import load_bundle
from shortlist.config import Settings

ARM_A, ARM_B = "a", "b"
_SCALE = float(1 << 64)


def bucket(user_id: str, salt: str) -> float:
    """A uniform number in [0, 1) from the user id (blake2b, not Python's salted hash)."""
    digest = hashlib.blake2b(f"{salt}\x1f{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def arm_for(user_id: str, share_b: float, salt: str) -> str:
    if share_b <= 0:
        return ARM_A
    return ARM_B if bucket(user_id, salt) < share_b else ARM_A


def ab_enabled(settings: Settings) -> bool:
    return bool(settings.ab_bundle_b)


def load_arms(
    settings: Settings, bundle: Bundle | None = None, with_index: bool = True
) -> dict[str, Bundle]:
    """{"a": default bundle} plus {"b": ab_bundle_b} when an experiment is configured."""
    key = settings.bundle_key or None
    arms = {ARM_A: bundle or load_bundle(Path(settings.bundle), with_index, key)}
    if ab_enabled(settings):
        arms[ARM_B] = load_bundle(Path(settings.ab_bundle_b), with_index, key)
        check_arms(arms)
    return arms


def check_arms(arms: dict[str, Bundle]) -> None:
    """The request names a bundle by version, so the two arms' versions must differ."""
    if ARM_B in arms and arms[ARM_B].version == arms[ARM_A].version:
        raise ValueError(
            f"A/B arms must serve different bundle versions, both are {arms[ARM_A].version}"
        )
