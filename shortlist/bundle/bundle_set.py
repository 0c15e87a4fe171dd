"""The bundles a retrieval or ranking stage holds, found by the version a request names.

The default bundle is arm "a" (and what hot swap replaces); A/B adds arm "b". Per-bundle
lookups (item id lists and positions) are built once, before a bundle becomes reachable.
A hot swap keeps the default it replaces (a request that began before the swap may still
name it) and releases the one before: memory holds at most three bundles however many
swaps there are, and a released bundle is freed once the calls that hold it finish.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from shortlist.bundle.bundle import Bundle
from shortlist.rpc.validation import InvalidInput


class BundleSet:
    def __init__(
        self,
        default: Bundle,
        others: Sequence[Bundle] = (),
        prepare: Callable[[Bundle], None] | None = None,
    ) -> None:
        self._prepare = prepare
        self.by_version: dict[str, tuple[Bundle, str]] = {}
        self.item_ids: dict[str, list[str]] = {}
        self.item_index: dict[str, dict[str, int]] = {}
        for bundle, arm in zip((default, *others), "ab"):
            self._add(bundle, arm)
        self.default = default

    def _add(self, bundle: Bundle, arm: str) -> None:
        if self._prepare is not None:
            self._prepare(bundle)
        ids = bundle.items.to_list()
        self.item_ids[bundle.version] = ids
        self.item_index[bundle.version] = {s: n for n, s in enumerate(ids)}
        self.by_version[bundle.version] = (bundle, arm)

    def use(self, bundle: Bundle) -> list[str]:
        """Hot swap of the default bundle: lookups first, then the one reference; returns
        the versions released (see the module's docstring)."""
        previous = self.default.version
        self._add(bundle, "a")
        self.default = bundle
        keep = {bundle.version, previous} | {
            v for v, (_, arm) in self.by_version.items() if arm == "b"
        }
        released = [v for v in self.by_version if v not in keep]
        for version in released:
            del self.by_version[version], self.item_ids[version], self.item_index[version]
        return released

    def find(self, version: str) -> tuple[Bundle, str]:
        """(bundle, arm) for `version` ("" = the default); NOT_FOUND for one not loaded."""
        found = self.by_version.get(version) if version else (self.default, "a")
        if found is None:
            raise InvalidInput(
                f"model_version {version!r} is not loaded here "
                f"(serving {', '.join(self.by_version)})",
                grpc.StatusCode.NOT_FOUND,
            )
        return found
