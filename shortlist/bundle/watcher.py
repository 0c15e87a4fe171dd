"""Hot reload of the bundle a service serves, when its root's LATEST names a new version."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from shortlist.bundle.bundle import Bundle
from shortlist.bundle.files import load_bundle
from shortlist.bundle.promotion import latest_version

log = logging.getLogger(__name__)


class BundleWatcher:
    """Hot reload: when `<root>/LATEST` names another version (polled every `poll_s`, or at
    once after `request_reload()`, e.g. from SIGHUP), the new bundle is loaded in this
    background thread while the old one keeps serving, then handed to `swap`, which replaces
    the services' bundle reference in one assignment. In-flight requests finish on the
    bundle they started with. A bundle that fails to load is logged and retried on the next
    poll; the old one stays in service."""

    def __init__(
        self,
        root: Path,
        current_version: str,
        swap: Callable[[Bundle], None],
        poll_s: float = 2.0,
        loader: Callable[[Path], Bundle] | None = None,
    ) -> None:
        self.root = Path(root)
        self.version = current_version
        self.swap = swap
        self.poll_s = poll_s
        self.loader = loader or load_bundle
        self.swaps = 0
        self.failures = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> BundleWatcher:
        """Check once now, then on each poll or request: a bundle published while the process
        was loading, before its SIGHUP handler was installed, is picked up at once."""
        self._wake.set()
        self._thread = threading.Thread(target=self._loop, name="bundle-watcher", daemon=True)
        self._thread.start()
        return self

    def request_reload(self) -> None:
        """Check LATEST now (safe to call from a signal handler)."""
        self._wake.set()

    def check(self) -> bool:
        """Load and swap in the bundle LATEST names if it is new; True when swapped."""
        version = latest_version(self.root)
        if version is None or version == self.version:
            return False
        try:
            bundle = self.loader(self.root / version)
        except Exception:
            self.failures += 1
            log.exception("could not load bundle %s; still serving %s", version, self.version)
            return False
        old, self.version = self.version, bundle.version
        self.swap(bundle)
        self.swaps += 1
        log.info("switched from bundle %s to %s", old, bundle.version)
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s if self.poll_s > 0 else None)
            self._wake.clear()
            if not self._stop.is_set():
                self.check()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
