"""Hot swaps release replaced bundles: memory holds at most three however many swaps."""

from __future__ import annotations

import gc
import weakref

import grpc
import pytest

from shortlist.bundle.bundle_set import BundleSet
from shortlist.data.ids import IdMap
from shortlist.rpc.validation import InvalidInput


class FakeBundle:
    """What BundleSet reads of a bundle: its version and catalogue."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.items = IdMap([f"{version}-item-{n}" for n in range(3)])


def test_twenty_swaps_hold_at_most_three_bundles_and_free_the_rest():
    arm_b = FakeBundle("b")
    bundles = BundleSet(FakeBundle("v0"), [arm_b])
    refs = []
    for n in range(1, 21):
        new = FakeBundle(f"v{n}")
        refs.append(weakref.ref(new))
        released = bundles.use(new)
        assert released == ([f"v{n - 2}"] if n >= 2 else [])
        assert set(bundles.by_version) == {f"v{n}", f"v{n - 1}", "b"}
        assert set(bundles.item_ids) == set(bundles.item_index) == set(bundles.by_version)
        del new
    gc.collect()
    assert [r() is not None for r in refs[-3:]] == [False, True, True]
    assert all(r() is None for r in refs[:-2])
    # the default before the swap still answers a request that names it; older ones do not
    assert bundles.find("v19")[0].version == "v19" and bundles.find("b")[1] == "b"
    with pytest.raises(InvalidInput) as gone:
        bundles.find("v18")
    assert gone.value.code == grpc.StatusCode.NOT_FOUND


def test_a_call_in_flight_keeps_its_bundle_until_it_finishes():
    bundles = BundleSet(FakeBundle("v0"))
    in_flight, _ = bundles.find("")  # a request holding the bundle it started with
    ref = weakref.ref(in_flight)
    bundles.use(FakeBundle("v1"))
    bundles.use(FakeBundle("v2"))  # v0 released from the set
    gc.collect()
    assert ref() is in_flight and in_flight.items.to_list()[0] == "v0-item-0"
    del in_flight
    gc.collect()
    assert ref() is None
