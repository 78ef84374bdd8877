"""The LBRY SDK test vectors, kept in this repository under tests/vectors/ (see its README.md).

    from tests.vectors import vectors_dir
    vectors_dir() / "peer.json"; vectors_dir() / "streams" / "fbf470131440" / "plain.bin"

The two large streams are stored as `streams/<folder>.tar.gz` holding the SDK's blobs and manifest, without
`plain.bin`: that file is an input made by the recipe in the manifest (SHAKE-256 of a fixed label), so it is
regenerated here rather than stored. On first use the vectors are laid out, complete, in a cache directory
(tests/vectors/.unpacked/<digest>/, or a temp directory if the checkout is read-only); every blob is checked
against its SHA-384 name and every plain.bin against the manifest's plain_sha384 before it is used.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "vectors"
CACHE = SOURCE / ".unpacked"
SHAKE_RECIPE = re.compile(r"SHAKE-256\(b'(?P<label>[^']*)'\), first (?P<length>\d+) bytes")


class VectorsError(RuntimeError):
    """The stored vectors are incomplete or do not match their hashes."""


def _source_files() -> list[Path]:
    """The stored files, without walking into the cache: other test processes build and rename there."""
    found = []
    for directory, subdirs, files in os.walk(SOURCE):
        if Path(directory) == SOURCE:
            subdirs[:] = [d for d in subdirs if SOURCE / d != CACHE]
        found += [Path(directory) / name for name in files]
    return sorted(found)


def _digest() -> str:
    h = hashlib.sha256()
    for path in _source_files():
        h.update(str(path.relative_to(SOURCE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _plain_bytes(manifest: dict) -> bytes:
    match = SHAKE_RECIPE.fullmatch(manifest.get("plain_recipe", ""))
    if not match:
        raise VectorsError(f"stream {manifest.get('stream')}: no plain.bin and no SHAKE-256 recipe to make it")
    return hashlib.shake_256(match["label"].encode()).digest(int(match["length"]))


def _check_stream(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    plain = folder / manifest["plain_file"]
    if not plain.exists():
        plain.write_bytes(_plain_bytes(manifest))
    if hashlib.sha384(plain.read_bytes()).hexdigest() != manifest["plain_sha384"]:
        raise VectorsError(f"{plain}: does not match the manifest's plain_sha384")
    for name in [manifest["sd_hash"], *(b["blob_hash"] for b in manifest["blobs"] if b.get("length"))]:
        path = folder / name
        if not path.exists() or hashlib.sha384(path.read_bytes()).hexdigest() != name:
            raise VectorsError(f"{path}: missing or does not match its hash")


def _build(target: Path) -> None:
    """Lay the vectors out complete in `target` (a fresh directory)."""
    for path in _source_files():
        relative = path.relative_to(SOURCE)
        if path.name.endswith(".tar.gz"):
            with tarfile.open(path) as archive:
                archive.extractall(target / relative.parent, filter="data")
        else:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / relative)
    index = json.loads((target / "streams" / "index.json").read_text())
    for stream in index["streams"]:
        _check_stream(target / "streams" / stream["folder"])


@functools.cache
def vectors_dir() -> Path:
    """The complete vectors folder (built on first use, then reused while tests/vectors/ is unchanged)."""
    digest = _digest()
    try:
        CACHE.mkdir(exist_ok=True)
        parent = CACHE
    except OSError:
        parent = Path(tempfile.mkdtemp(prefix="reflector-vectors-"))
    final = parent / digest
    if final.is_dir():
        return final
    for stale in parent.iterdir() if parent == CACHE else ():
        if stale.name != digest and not stale.name.startswith("."):
            shutil.rmtree(stale, ignore_errors=True)
    building = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=parent))
    building.chmod(0o755)
    try:
        _build(building)
        os.rename(building, final)  # whole or not at all; another process may have won the race
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return final
