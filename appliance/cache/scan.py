"""Walking a cache directory in reflector.go's layout (`<root>/<h[0:2]>/<h>`), in small batches.

CacheLoader is nginx's "cache loader" for our index: after a crash, or on the first start over an existing
reflector.go cache directory, it adopts every blob file the index does not know and then forgets index
entries whose files are gone, a batch at a time, so the cache manager keeps serving in between. `tmp/`
is never indexed (unfinished writes; the loader removes those of dead writers first), nor are names that are not blob
hashes, files in the wrong prefix directory, or files whose size no blob can have.
"""
from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.blob import MAX_BLOB_SIZE, is_valid_hash
from appliance.cache.index import CacheIndex
from appliance.stores.disk import DiskStore

if TYPE_CHECKING:
    from appliance.cache.localdb import LocalDBIndex

log = logging.getLogger("cache")

PREFIX_LEN = 2


@dataclass
class ScanCounts:
    blobs: int = 0  # blob files found (adopted or already indexed)
    blob_bytes: int = 0  # their total size, when stat'ed (files already indexed are not stat'ed)
    skipped: int = 0  # files that are not blobs: other names, wrong directory, impossible size
    adopted: int = 0  # indexed by this scan
    refused: int = 0  # found but over the capacity: deleted
    forgotten: int = 0  # indexed but missing on disk: dropped from the index


def blob_path(root: str, hash_: str) -> str:
    return os.path.join(root, hash_[:PREFIX_LEN], hash_)


def iter_blob_names(root: str, counts: ScanCounts | None = None) -> Iterator[str]:
    """Names in `<root>/<xx>/` that are blob hashes starting with `xx` (no stat; other names are counted).

    Raises OSError when `root` itself cannot be listed; prefix directories that vanish are skipped.
    """
    counts = counts if counts is not None else ScanCounts()
    with os.scandir(root) as top:
        prefixes = sorted(e.name for e in top if len(e.name) == PREFIX_LEN and e.is_dir(follow_symlinks=False))
    for prefix in prefixes:
        try:
            listing = os.scandir(os.path.join(root, prefix))
        except FileNotFoundError:
            continue
        with listing:
            for entry in listing:
                if is_valid_hash(entry.name) and entry.name.startswith(prefix):
                    yield entry.name
                else:
                    counts.skipped += 1


def blob_size(root: str, hash_: str, counts: ScanCounts | None = None) -> int | None:
    """The size of a blob file, or None when it vanished or is not a blob (not a file, impossible size)."""
    try:
        st = os.stat(blob_path(root, hash_), follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or not 0 < st.st_size <= MAX_BLOB_SIZE:
        if counts is not None:
            counts.skipped += 1
        return None
    if counts is not None:
        counts.blobs += 1
        counts.blob_bytes += st.st_size
    return st.st_size


def iter_blob_files(root: str, counts: ScanCounts | None = None) -> Iterator[tuple[str, int]]:
    """(hash, size) of every blob file under `root`."""
    counts = counts if counts is not None else ScanCounts()
    for hash_ in iter_blob_names(root, counts):
        size = blob_size(root, hash_, counts)
        if size is not None:
            yield hash_, size


class CacheLoader:
    """Adopt unknown files, then drop entries whose files are gone, `batch` files per step."""

    def __init__(self, root: str, index: CacheIndex | LocalDBIndex, batch: int = 1000):
        self.root = root
        self.index = index
        self.batch = batch
        self.counts = ScanCounts()

    def steps(self) -> Iterator[ScanCounts]:
        """Do the work one batch per iteration; the caller serves requests between iterations."""
        DiskStore(self.root).remove_stale_temp_files()  # tmp/ leftovers of crashed writers, ours or reflector.go's
        names: list[str] = []
        for name in iter_blob_names(self.root, self.counts):
            names.append(name)
            if len(names) >= self.batch:
                self._adopt(names)
                names = []
                yield self.counts
        self._adopt(names)
        yield self.counts
        indexed = list(self.index)  # a snapshot: entries added meanwhile were written by us
        for start in range(0, len(indexed), self.batch):
            for hash_ in indexed[start:start + self.batch]:
                if not os.path.exists(blob_path(self.root, hash_)) and self.index.forget(hash_):
                    self.counts.forgotten += 1
            yield self.counts
        log.info("cache %s scanned: %d blobs, %d adopted, %d over capacity deleted, %d missing forgotten, "
                 "%d other files ignored", self.root, self.counts.blobs, self.counts.adopted, self.counts.refused,
                 self.counts.forgotten, self.counts.skipped)

    def run(self, pause: Callable[[], object] = lambda: None) -> ScanCounts:
        """All steps, calling `pause` between them (e.g. `lambda: gevent.sleep(0.05)` in the manager)."""
        for _ in self.steps():
            pause()
        return self.counts

    def _adopt(self, names: list[str]) -> None:
        unknown = self.index.unknown(names)
        self.counts.blobs += len(names) - len(unknown)
        found = []
        for hash_ in unknown:
            size = blob_size(self.root, hash_, self.counts)
            if size is not None:
                found.append((hash_, size))
        refused = self.index.adopt(found)
        self.counts.adopted += len(found) - len(refused)
        for hash_ in refused:
            try:
                os.unlink(blob_path(self.root, hash_))
                self.counts.refused += 1
            except FileNotFoundError:
                pass
