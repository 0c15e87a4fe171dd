"""A bundle's files must match the digests its manifest lists, and with a key its manifest
must carry the right signature; otherwise it is refused and a watcher keeps the old one."""

from __future__ import annotations

import dataclasses
import functools
import time

import pytest

from shortlist.bundle.files import load_bundle, save_bundle
from shortlist.bundle.integrity import SIGNATURE, BundleIntegrityError
from shortlist.bundle.promotion import promote
from shortlist.bundle.watcher import BundleWatcher

KEY = "a-signing-key-from-a-secret"


@pytest.fixture
def signed(bundle, tmp_path):
    return save_bundle(dataclasses.replace(bundle, version="v-signed"), tmp_path, key=KEY)


def test_a_signed_bundle_loads_with_its_key_and_lists_every_file(signed):
    loaded = load_bundle(signed, key=KEY)
    assert loaded.version == "v-signed"
    listed = set(loaded.manifest["files"])
    assert {"item_vectors.npy", "index.faiss", "ranker.txt"} <= listed
    assert "manifest.json" not in listed and SIGNATURE not in listed


def test_wrong_key_missing_signature_and_changed_files_are_refused(signed):
    with pytest.raises(BundleIntegrityError, match="signature is wrong"):
        load_bundle(signed, key="another-key")
    with open(signed / "popularity.npy", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleIntegrityError, match="popularity.npy does not match"):
        load_bundle(signed, key=KEY)
    with pytest.raises(BundleIntegrityError, match="popularity.npy does not match"):
        load_bundle(signed)  # no key: the digests are still checked
    (signed / SIGNATURE).unlink()
    with pytest.raises(BundleIntegrityError, match="not signed"):
        load_bundle(signed, key=KEY)


def test_an_extra_or_missing_file_is_refused(signed):
    (signed / "planted.npy").write_bytes(b"x")
    with pytest.raises(BundleIntegrityError, match="planted.npy is not in its manifest"):
        load_bundle(signed)
    (signed / "planted.npy").unlink()
    (signed / "recent_likes.indices.npy").unlink()
    with pytest.raises(BundleIntegrityError, match="recent_likes.indices.npy is missing"):
        load_bundle(signed)


def test_the_watcher_keeps_serving_when_the_new_bundle_is_tampered(bundle, tmp_path):
    first = save_bundle(dataclasses.replace(bundle, version="v1"), tmp_path, key=KEY)
    second = save_bundle(
        dataclasses.replace(bundle, version="v2"), tmp_path, promote_it=False, key=KEY
    )
    swapped = []
    watcher = BundleWatcher(
        tmp_path, "v1", swapped.append, loader=functools.partial(load_bundle, key=KEY)
    )
    with open(second / "item_vectors.npy", "ab") as f:
        f.write(b"\0")
    promote(tmp_path, "v2", "test")
    assert not watcher.check()
    assert swapped == [] and watcher.failures == 1 and watcher.version == "v1"
    assert first.exists()


def test_a_bundle_published_before_the_watcher_starts_is_loaded_at_start(bundle, tmp_path):
    """No poll and no SIGHUP: a bundle that became LATEST while the process was loading
    (before it could hear the signal) is still picked up."""
    save_bundle(dataclasses.replace(bundle, version="v1"), tmp_path)
    save_bundle(dataclasses.replace(bundle, version="v2"), tmp_path)
    swapped = []
    watcher = BundleWatcher(tmp_path, "v1", swapped.append, poll_s=0, loader=load_bundle).start()
    try:
        deadline = time.monotonic() + 30
        while not swapped and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [b.version for b in swapped] == ["v2"] and watcher.version == "v2"
    finally:
        watcher.stop()
