"""Request-time business rules (`RecommendRequest.rules`), applied to the ranked list before
it is cut to k: a freshness boost, include/exclude filters on item attributes, at most N
items per attribute value, and pinned items at fixed positions.

Order of application: the boost re-sorts the ranked list; the walk down it then drops what
the filters refuse and what would pass a cap, until the places the pins leave are filled;
the pins go in last, at their positions. Pinned items are the client's explicit choice, so
filters and caps do not apply to them (a hidden one is still never served). A rule that
cannot be met (too few items pass the filters) gives a shorter list, never a wrong one;
the gateway asks retrieval for more candidates first (`shortlist.services.gateway`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from shortlist.ranking.attributes import ItemAttributes
from shortlist.rpc.validation import InvalidInput
from shortlist.v1 import common_pb2

MAX_RULES = 32  # filters, caps and pins each
MAX_VALUES = 1000  # values in one filter


@dataclass(frozen=True)
class Rules:
    include: tuple[tuple[str, frozenset[str]], ...] = ()
    exclude: tuple[tuple[str, frozenset[str]], ...] = ()
    caps: tuple[tuple[str, int], ...] = ()
    pinned: tuple[tuple[str, int], ...] = ()  # (item id, position)
    fresh_window_ms: int = 0
    fresh_boost: float = 0.0

    @property
    def drops_items(self) -> bool:
        """Filters or caps: they may leave fewer than k of the candidates."""
        return bool(self.include or self.exclude or self.caps)


@dataclass
class Served:
    """One item of the answer: `position` in the ranked candidates (-1: a pinned item
    that was not a candidate), the rules that moved it."""

    item_id: str
    score: float
    position: int
    rules: tuple[str, ...] = ()


def parse_rules(message: common_pb2.Rules | None, k: int, max_id_length: int) -> Rules | None:
    """The request's rules, checked for what needs no catalogue (counts, caps, positions,
    the window); None when there are none. InvalidInput names the field that is wrong."""
    if message is None:
        return None
    include = _filters(message.include, "rules.include", max_id_length)
    exclude = _filters(message.exclude, "rules.exclude", max_id_length)
    _count(message.caps, "rules.caps")
    caps = []
    for n, cap in enumerate(message.caps):
        _attribute(cap.attribute, f"rules.caps[{n}].attribute", max_id_length)
        if cap.max_items < 1:
            raise InvalidInput(f"rules.caps[{n}].max_items must be at least 1, got {cap.max_items}")
        caps.append((cap.attribute, cap.max_items))
    _count(message.pinned, "rules.pinned")
    pinned, taken, items = [], {}, set()
    for n, pin in enumerate(message.pinned):
        field = f"rules.pinned[{n}]"
        if not pin.item_id.strip() or len(pin.item_id) > max_id_length:
            raise InvalidInput(f"{field}.item_id must be 1..{max_id_length} characters")
        if not 0 <= pin.position < k:
            raise InvalidInput(
                f"{field}.position must be in 0..{k - 1} (k={k}), got {pin.position}"
            )
        if pin.position in taken:
            raise InvalidInput(f"{field}.position {pin.position} is taken by {taken[pin.position]}")
        if pin.item_id in items:
            raise InvalidInput(f"{field}.item_id {pin.item_id!r} is pinned twice")
        taken[pin.position] = field
        items.add(pin.item_id)
        pinned.append((pin.item_id, pin.position))
    window, boost = message.freshness.window_seconds, message.freshness.boost
    if window < 0:
        raise InvalidInput(f"rules.freshness.window_seconds must not be negative, got {window}")
    if not math.isfinite(boost):
        raise InvalidInput(f"rules.freshness.boost must be a finite number, got {boost}")
    if boost and not window:
        raise InvalidInput("rules.freshness.window_seconds must be positive when boost is set")
    return Rules(
        include=include,
        exclude=exclude,
        caps=tuple(caps),
        pinned=tuple(sorted(pinned, key=lambda p: p[1])),
        fresh_window_ms=window * 1000,
        fresh_boost=float(boost) if window else 0.0,
    )


def _count(entries, field: str) -> None:
    if len(entries) > MAX_RULES:
        raise InvalidInput(f"{field} has {len(entries)} entries, at most {MAX_RULES} allowed")


def _attribute(name: str, field: str, max_length: int) -> None:
    if not name.strip() or len(name) > max_length:
        raise InvalidInput(f"{field} must be 1..{max_length} characters")


def _filters(entries, field: str, max_length: int) -> tuple[tuple[str, frozenset[str]], ...]:
    _count(entries, field)
    out = []
    for n, f in enumerate(entries):
        _attribute(f.attribute, f"{field}[{n}].attribute", max_length)
        if not f.values or len(f.values) > MAX_VALUES:
            raise InvalidInput(f"{field}[{n}].values must hold 1..{MAX_VALUES} values")
        out.append((f.attribute, frozenset(f.values)))
    return tuple(out)


def check_against(rules: Rules, items: ItemAttributes) -> None:
    """What needs the catalogue: every attribute named exists, every pinned item is known
    (a hidden one is accepted and left out, as hiding is the operator's call)."""
    named = [
        *((f"rules.include[{n}].attribute", a) for n, (a, _) in enumerate(rules.include)),
        *((f"rules.exclude[{n}].attribute", a) for n, (a, _) in enumerate(rules.exclude)),
        *((f"rules.caps[{n}].attribute", a) for n, (a, _) in enumerate(rules.caps)),
    ]
    for field, name in named:
        if name not in items.names:
            known = ", ".join(sorted(items.names)) or "none"
            raise InvalidInput(f"{field} {name!r} is not an item attribute (known: {known})")
    for n, (item, _) in enumerate(rules.pinned):
        if item not in items.index and item not in items.live.attributes:
            raise InvalidInput(f"rules.pinned[{n}].item_id {item!r} is not in the catalogue")


def apply_rules(
    ids: list[str],
    positions: np.ndarray,
    scores: np.ndarray,
    rules: Rules,
    k: int,
    items: ItemAttributes,
    now_ms: int,
) -> list[Served]:
    """The first k of the ranked list (`ids` best first, their `positions` in the
    candidates and `scores`) under `rules` (see the module's docstring)."""
    scores = np.asarray(scores, np.float32)
    order = range(len(ids))
    fresh = np.zeros(len(ids), bool)
    if rules.fresh_boost:
        cutoff = now_ms - rules.fresh_window_ms
        fresh = np.array([(items.updated_ms(i) or -1) >= cutoff for i in ids], bool)
        if fresh.any():
            scores = scores + np.float32(rules.fresh_boost) * fresh
            order = np.argsort(-scores, kind="stable").tolist()
    pins = [(item, at) for item, at in rules.pinned if items.known(item)]
    pinned = {item for item, _ in pins}
    room = k - len(pins)
    counts: dict[str, Counter] = {name: Counter() for name, _ in rules.caps}
    kept: list[Served] = []
    for j in order:
        if len(kept) >= room:
            break
        item = ids[j]
        if item in pinned or not _passes(item, rules, items):
            continue
        values = [(name, items.value(item, name), cap) for name, cap in rules.caps]
        if any(v and counts[name][v] >= cap for name, v, cap in values):
            continue
        for name, v, _ in values:
            if v:
                counts[name][v] += 1
        marks = ("fresh",) if fresh[j] else ()
        kept.append(Served(item, float(scores[j]), int(positions[j]), marks))
    where = {item: j for j, item in enumerate(ids)} if pins else {}
    for item, at in pins:
        at = min(at, len(kept))
        # the score of the item it displaces (or of the last), so scores stay in order
        score = kept[at].score if at < len(kept) else (kept[-1].score if kept else 0.0)
        j = where.get(item)
        kept.insert(at, Served(item, score, -1 if j is None else int(positions[j]), ("pinned",)))
    return kept


def _passes(item: str, rules: Rules, items: ItemAttributes) -> bool:
    for name, values in rules.include:
        if items.value(item, name) not in values:
            return False
    return all(items.value(item, name) not in values for name, values in rules.exclude)
