"""Request rules on a ranked list: filters, caps, pins, freshness, and their validation."""

from __future__ import annotations

import numpy as np
import pytest

from shortlist.feedback.stores.base import CatalogueItems
from shortlist.ranking.attributes import ItemAttributes
from shortlist.ranking.rules import Rules, apply_rules, check_against, parse_rules
from shortlist.rpc.validation import InvalidInput
from shortlist.v1 import common_pb2

IDS = [f"i{n}" for n in range(8)]
GENRE = ["jazz", "rock", "jazz", "folk", "jazz", "rock", "", "folk"]
NOW = 1_800_000_000_000


def items(live: CatalogueItems | None = None) -> ItemAttributes:
    index = {i: n for n, i in enumerate(IDS)}
    return ItemAttributes(index, {"genre": GENRE}, live or CatalogueItems(generation=0))


def served(rules: Rules, k: int, attrs: ItemAttributes | None = None) -> list[str]:
    scores = np.linspace(1.0, 0.3, len(IDS)).astype(np.float32)
    out = apply_rules(IDS, np.arange(len(IDS)), scores, rules, k, attrs or items(), NOW)
    return [s.item_id for s in out]


def test_without_rules_the_ranked_order_is_cut_to_k():
    assert served(Rules(), 3) == ["i0", "i1", "i2"]


def test_include_and_exclude_keep_the_ranked_order():
    assert served(Rules(include=(("genre", frozenset({"jazz"})),)), 5) == ["i0", "i2", "i4"]
    assert served(Rules(exclude=(("genre", frozenset({"jazz", "rock"})),)), 3) == [
        "i3",
        "i6",
        "i7",
    ]


def test_caps_count_per_value_and_leave_items_without_a_value_alone():
    assert served(Rules(caps=(("genre", 1),)), 5) == ["i0", "i1", "i3", "i6"]


def test_pins_take_their_positions_and_are_not_filtered():
    rules = Rules(exclude=(("genre", frozenset({"folk"})),), pinned=(("i7", 0), ("i4", 2)))
    out = served(rules, 4)
    assert out == ["i7", "i0", "i4", "i1"]


def test_a_pin_past_a_short_list_goes_last_and_a_hidden_pin_is_left_out():
    rules = Rules(include=(("genre", frozenset({"folk"})),), pinned=(("i0", 3),))
    assert served(rules, 4) == ["i3", "i7", "i0"]
    hidden = items(CatalogueItems(generation=1, hidden={"i0"}))
    assert served(rules, 4, hidden) == ["i3", "i7"]


def test_fresh_items_are_boosted_and_live_attributes_win():
    live = CatalogueItems(
        generation=1,
        attributes={"i5": {"genre": "folk", "label": "x"}},
        updated_ms={"i5": NOW - 1000, "i6": NOW - 10_000_000},
    )
    attrs = items(live)
    rules = Rules(fresh_window_ms=60_000, fresh_boost=10.0)
    assert served(rules, 3, attrs) == ["i5", "i0", "i1"]  # i6 is outside the window
    assert attrs.value("i5", "genre") == "folk" and attrs.names == {"genre", "label"}
    assert served(Rules(include=(("genre", frozenset({"folk"})),)), 5, attrs) == ["i3", "i5", "i7"]


def message(**parts) -> common_pb2.Rules:
    return common_pb2.Rules(**parts)


@pytest.mark.parametrize(
    ("rules", "field"),
    [
        (message(caps=[common_pb2.AttributeCap(attribute="genre", max_items=0)]), "rules.caps[0]"),
        (message(pinned=[common_pb2.PinnedItem(item_id="i1", position=5)]), "rules.pinned[0]"),
        (
            message(
                pinned=[
                    common_pb2.PinnedItem(item_id="i1", position=1),
                    common_pb2.PinnedItem(item_id="i2", position=1),
                ]
            ),
            "rules.pinned[1].position",
        ),
        (message(include=[common_pb2.AttributeFilter(attribute="genre")]), "rules.include[0]"),
        (message(exclude=[common_pb2.AttributeFilter(values=["x"])]), "rules.exclude[0]"),
        (
            message(freshness=common_pb2.FreshnessBoost(boost=1.0)),
            "rules.freshness.window_seconds",
        ),
    ],
)
def test_invalid_rules_name_their_field(rules, field):
    with pytest.raises(InvalidInput, match=rf"^{field.replace('[', '.').replace(']', '.')}"):
        parse_rules(rules, 5, 256)


def test_names_and_pinned_items_are_checked_against_the_catalogue():
    rules = parse_rules(
        message(caps=[common_pb2.AttributeCap(attribute="mood", max_items=2)]), 5, 256
    )
    with pytest.raises(InvalidInput, match=r"rules.caps\[0\].attribute 'mood'.*known: genre"):
        check_against(rules, items())
    pin = parse_rules(message(pinned=[common_pb2.PinnedItem(item_id="zz", position=0)]), 5, 256)
    with pytest.raises(InvalidInput, match=r"rules.pinned\[0\].item_id 'zz'"):
        check_against(pin, items())
    assert parse_rules(None, 5, 256) is None
