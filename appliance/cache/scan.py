"""Walking a cache directory in reflector.go's layout (`<root>/<h[0:2]>/<h>`), in small batches.

CacheLoader is nginx's "cache loader" for our index: after a crash, or on the first start over an existing
reflector.go cache directory, it adopts every blob file the index does not know and then forgets index
entries whose files are gone, a batch at a time, so the cache manager keeps serving in between. `tmp/`
is never indexed (unfinished writes; the disk store removes stale ones), nor are names that are not blob
hashes, files in the wrong prefix directory, or files whose size no blob can have.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass

from appliance.blob import MAX_BLOB_SIZE, is_valid_hash
from appliance.cache.index import CacheIndex

log = logging.getLogger("cache")

PREFIX_LEN = 2


@dataclass
class ScanCounts:
    blobs: int = 0  # blob files found (adopted or already indexed)
    blob_bytes: int = 0  # their total size, when stat'ed (files already indexed are not)
    skipped: int = 0  # files that are not blobs: other names, wrong directory, impossible size
    adopted: int = 0  # indexed by this scan
    refused: int = 0  # found but over the capacity: deleted
    forgotten: int = 0  # indexed but missing on disk: dropped from the index


def blob_path(root: str, hash_: str) -> str:
    return os.path.join(root, hash_[:PREFIX_LEN], hash_)


def iter_blob_files(root: str, counts: ScanCounts | None = None,
                    known: Container[str] = ()) -> Iterator[tuple[str, int]]:
    """(hash, size) of each blob file under `root`; hashes in `known` are counted but not stat'ed or yielded.

    Raises OSError when `root` itself cannot be listed; files that vanish while listing are skipped.
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
                name = entry.name
                if not (is_valid_hash(name) and name.startswith(prefix)):
                    counts.skipped += 1
                    continue
                if name in known:
                    counts.blobs += 1
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        counts.skipped += 1
                        continue
                    size = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
                if not 0 < size <= MAX_BLOB_SIZE:
                    counts.skipped += 1
                    continue
                counts.blobs += 1
                counts.blob_bytes += size
                yield name, size


class CacheLoader:
    """Adopt unknown files, then drop entries whose files are gone, `batch` files per step."""

    def __init__(self, root: str, index: CacheIndex, batch: int = 1000):
        self.root = root
        self.index = index
        self.batch = batch
        self.counts = ScanCounts()

    def steps(self) -> Iterator[ScanCounts]:
        """Do the work one batch per iteration; the caller serves requests between iterations."""
        pending: list[tuple[str, int]] = []
        for found in iter_blob_files(self.root, self.counts, known=self.index):
            pending.append(found)
            if len(pending) >= self.batch:
                self._adopt(pending)
                pending = []
                yield self.counts
        self._adopt(pending)
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

    def _adopt(self, found: list[tuple[str, int]]) -> None:
        refused = self.index.adopt(found)
        self.counts.adopted += len(found) - len(refused)
        for hash_ in refused:
            try:
                os.unlink(blob_path(self.root, hash_))
                self.counts.refused += 1
            except FileNotFoundError:
                pass
