"""Bundle integrity: the manifest lists a sha256 of every file, and is signed with an HMAC
key when one is configured (`SHORTLIST_BUNDLE_KEY`, from a Secret in production).

A service follows `<root>/LATEST` and hot-loads what it names, and FAISS and LightGBM
parse their files as trusted input: a bundle with a changed, missing or extra file, or
(with a key) without the right signature, is refused before any of its files is parsed.
The watcher then keeps serving the bundle it has.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
CHUNK = 1 << 20


class BundleIntegrityError(ValueError):
    """A bundle whose files or signature do not match its manifest."""


def file_digests(directory: Path) -> dict[str, str]:
    """sha256 (hex) of every file in the bundle but the manifest and its signature."""
    out = {}
    for path in sorted(Path(directory).iterdir()):
        if path.name in (MANIFEST, SIGNATURE) or not path.is_file():
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
        out[path.name] = digest.hexdigest()
    return out


def signature(manifest: bytes, key: str) -> str:
    return hmac.new(key.encode(), manifest, hashlib.sha256).hexdigest()


def write_manifest(directory: Path, manifest: dict, key: str | None) -> dict:
    """Record the files' digests in the manifest, write it, and sign it when `key`."""
    manifest = {**manifest, "files": file_digests(directory)}
    text = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (Path(directory) / MANIFEST).write_bytes(text)
    if key:
        (Path(directory) / SIGNATURE).write_text(signature(text, key) + "\n")
    return manifest


def read_manifest(directory: Path, key: str | None) -> dict:
    """The manifest, once the files match it and (with `key`) its signature is right."""
    directory = Path(directory)
    text = (directory / MANIFEST).read_bytes()
    if key:
        sig_path = directory / SIGNATURE
        if not sig_path.exists():
            raise BundleIntegrityError(f"bundle {directory}: not signed ({SIGNATURE} missing)")
        if not hmac.compare_digest(signature(text, key), sig_path.read_text().strip()):
            raise BundleIntegrityError(f"bundle {directory}: the manifest's signature is wrong")
    manifest = json.loads(text)
    listed = manifest.get("files")
    if listed is None:
        if key:
            raise BundleIntegrityError(f"bundle {directory}: its manifest lists no file digests")
        return manifest  # a bundle from before digests were recorded, and no key asked for
    actual = file_digests(directory)
    for name in sorted(set(listed) | set(actual)):
        if name not in actual:
            raise BundleIntegrityError(f"bundle {directory}: {name} is missing")
        if name not in listed:
            raise BundleIntegrityError(f"bundle {directory}: {name} is not in its manifest")
        if listed[name] != actual[name]:
            raise BundleIntegrityError(f"bundle {directory}: {name} does not match its digest")
    return manifest
