"""Request context: the keys a client sends with a request (hour, day of week, device, and
free-form keys), parsed once at the edge, and the per-item context tables training records."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

DEVICES = ("ios", "android", "web", "tv")
# Free-form context: a key the training likes record (Interactions.context) becomes the
# feature ctx_<key>_item_lift, log P(value | item) - log P(value), with P(value | item)
# pulled towards P(value) by CONTEXT_PRIOR pseudo-likes (0 for an item without likes). Its
# CONTEXT_VALUES most frequent values are kept; any other value carries no feature (NaN).
KNOWN_CONTEXT = ("hour", "day_of_week", "device")
CONTEXT_VALUES = 64
CONTEXT_PRIOR = 10.0
_CONTEXT_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


@dataclass(frozen=True)
class RequestContext:
    """Parsed request context; NaN marks what the client did not send."""

    hour: float = math.nan
    day_of_week: float = math.nan
    device: float = math.nan
    extra: Mapping[str, str] = field(default_factory=dict)  # free-form keys and their values


def parse_context(context: Mapping[str, str]) -> RequestContext:
    """Validate the known context keys; ValueError names the bad key. Other keys are kept
    as free-form: a bundle whose training likes recorded a key turns it into a feature,
    any other key carries none."""
    hour = _int_in(context, "hour", 0, 23)
    dow = _int_in(context, "day_of_week", 0, 6)
    device = math.nan
    if "device" in context:
        name = context["device"].strip().lower()
        device = float(DEVICES.index(name)) if name in DEVICES else float(len(DEVICES))
    extra = {k: v for k, v in context.items() if k not in KNOWN_CONTEXT}
    return RequestContext(hour=hour, day_of_week=dow, device=device, extra=extra)


def _int_in(context: Mapping[str, str], key: str, lo: int, hi: int) -> float:
    if key not in context:
        return math.nan
    raw = context[key]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"context[{key!r}] must be an integer {lo}..{hi}, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"context[{key!r}] must be in {lo}..{hi}, got {value}")
    return float(value)


def context_at(timestamp_s: float, extra: Mapping[str, str] | None = None) -> RequestContext:
    """The context a request at this unix time would carry (used offline)."""
    days, seconds = divmod(int(timestamp_s), 86400)
    return RequestContext(
        hour=float(seconds // 3600), day_of_week=float((days + 3) % 7), extra=extra or {}
    )


ContextCounts = dict[str, tuple[list[str], np.ndarray]]  # key -> (values, values x items likes)


def context_counts(likes: sp.csr_matrix, context: Mapping[str, np.ndarray]) -> ContextCounts:
    """Per free-form key (sorted): its most frequent recorded values and each value's likes
    per item. `context` is aligned with the data of `likes` (sorted CSR); "" = not recorded."""
    cols = likes.tocsr().indices
    n_items = likes.shape[1]
    out: ContextCounts = {}
    for key in sorted(context):
        if key in KNOWN_CONTEXT or not _CONTEXT_KEY.fullmatch(key):
            raise ValueError(
                f"context key {key!r} must match [A-Za-z0-9_]{{1,64}} and not be "
                f"one of {', '.join(KNOWN_CONTEXT)}"
            )
        values = np.asarray(context[key]).astype(str)
        recorded = values != ""
        names, codes, counts = np.unique(values[recorded], return_inverse=True, return_counts=True)
        kept = np.argsort(-counts, kind="stable")[:CONTEXT_VALUES]
        row_of = np.full(len(names), -1, np.int64)
        row_of[kept] = np.arange(len(kept))
        rows = row_of[codes]
        at = rows >= 0
        flat = rows[at] * n_items + cols[recorded][at]
        table = np.bincount(flat, minlength=len(kept) * n_items).astype(np.float32)
        out[key] = ([str(names[k]) for k in kept], table.reshape(len(kept), n_items))
    return out


def context_lift(counts: np.ndarray) -> np.ndarray:
    """log P(value | item) - log P(value), values x items (see CONTEXT_PRIOR)."""
    overall = counts.sum(axis=1) / max(float(counts.sum()), 1.0)
    per_item = counts.sum(axis=0)
    p = (counts + CONTEXT_PRIOR * overall[:, None]) / (per_item + CONTEXT_PRIOR)[None, :]
    return (np.log(p) - np.log(overall)[:, None]).astype(np.float32)
