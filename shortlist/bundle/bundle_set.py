"""The bundles a retrieval or ranking servicer holds, found by the version a request names.

The default bundle is arm "a" (and what hot swap replaces); A/B adds arm "b". Per-bundle
lookups (item id lists and positions) are built once, before a bundle becomes reachable.
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

    def use(self, bundle: Bundle) -> None:
        """Hot swap of the default bundle: lookups first, then the one reference."""
        self._add(bundle, "a")
        self.default = bundle

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
