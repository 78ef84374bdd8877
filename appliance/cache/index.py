"""The persistent disk-cache index: an in-memory eviction policy whose state is saved in SQLite.

Design (why this shape):
- The policy lives in memory because every decision (is it cached, what to evict) must be instant in the
  cache manager, and reads are reported in batches that would otherwise each cost a write.
- Its state is written behind, in batches: the manager calls flush() about once a second; each flush is one
  transaction holding only the entries changed since the previous one (policies report them, see
  appliance.cache.policies). Losing the last second in a crash is harmless: a blob added but not saved is
  found again by the loader (appliance.cache.scan) and one evicted but not saved is noticed as missing.
- SQLite (stdlib, WAL, synchronous=NORMAL) keyed by `rank INTEGER PRIMARY KEY`: the table is stored in
  eviction order, so a restart reads it sequentially with no sort. Measured on this machine: 1,000,000
  entries load in about 1.5 s (the goal is 5 s); the database is ~240 MB.
- The index lives inside the cache directory (`<path>/index.sqlite3`), so it shares the cache's lifetime:
  wiping or replacing the directory cannot leave an index describing files that are not there. The file
  name is not a blob hash, so reflector.go's layout and our scans ignore it.
- diskcache (anchors §5) was not used: it stores values itself, offers no LFUDA or ARC, counts items not
  our file sizes, and writes on every read.
- A crash (no clean close) or a new database sets `needs_scan`: the manager then runs the loader in the
  background to adopt files the index does not know and forget entries whose files are gone.
- A cache is only a speed-up, so an index that cannot be opened (a full or read-only disk) or written does
  not stop the cache: `run_in_memory` starts it empty and unsaved (the loader rebuilds it from a scan), and
  a flush that fails turns persistence off. The file left behind is marked unclean, so the next start that
  can open it scans the directory again. `persistence_error` says why the index is not saved.

Not thread-safe: one caller at a time (the cache manager's loop). SQLite calls block a gevent hub, which is
why only the cache-manager process uses this.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable

from appliance.cache.policies import Policy

log = logging.getLogger("cache")

INDEX_FILE = "index.sqlite3"
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    rank INTEGER PRIMARY KEY,      -- eviction order within a list (low leaves first)
    hash TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    lst INTEGER NOT NULL,          -- ARC: 0 T1, 1 T2, 2 B1, 3 B2 (ghosts); other policies: 0
    freq INTEGER NOT NULL,         -- LFUDA uses
    prio INTEGER NOT NULL          -- LFUDA priority
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class CacheIndexError(Exception):
    """The index cannot be opened or written; one line for the operator."""


def index_path(cache_dir: str) -> str:
    return os.path.join(cache_dir, INDEX_FILE)


class CacheIndex:
    """One disk cache's index: the policy API plus load(), flush() and close()."""

    def __init__(self, path: str, policy: Policy):
        self.path = path
        self.policy = policy
        self.needs_scan = False
        self.persistence_error: str | None = None  # why the index is not saved (None: it is)
        self._db: sqlite3.Connection | None = None
        self._saved_meta: dict[str, float] | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------

    def load(self) -> list[str]:
        """Open (or create) the database and restore the policy; returns hashes to delete (over capacity).

        Raises CacheIndexError (one line) when the file cannot be opened or written: see run_in_memory.
        """
        try:
            try:
                return self._load()
            except sqlite3.OperationalError:  # locked, read-only, no space: not the file's fault
                raise
            except sqlite3.DatabaseError as exc:
                # A damaged index is rebuilt from the directory: keep the bad file for inspection, start empty.
                self._close_quietly()
                self.policy = type(self.policy)(self.policy.capacity)  # drop whatever was half loaded
                aside = f"{self.path}.broken"
                log.warning("cache index %s is unreadable (%s): moved to %s, the directory will be rescanned",
                            self.path, exc, aside)
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(self.path + suffix):
                        os.replace(self.path + suffix, aside + suffix)
                return self._load()
        except (sqlite3.Error, OSError) as exc:
            self._close_quietly()
            raise CacheIndexError(f"cannot open cache index {self.path}: {exc}") from None

    def _load(self) -> list[str]:
        new = not os.path.exists(self.path)
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.OperationalError) as exc:
            raise CacheIndexError(f"cannot open cache index {self.path}: {exc}") from None
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA cache_size=-32768")  # 32 MiB of pages: big flushes (adoption) stay fast
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a power loss may drop the last flushes only
        db.executescript(_SCHEMA)
        meta = dict(db.execute("SELECT key, value FROM meta"))
        if meta.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"unknown index version {meta['version']}")
        policy_meta = json.loads(meta.get("policy_meta", "{}"))
        stored = meta.get("policy")
        if stored and stored != self.policy.name:
            log.info("cache %s: policy changed from %s to %s; entries kept in their eviction order",
                     os.path.dirname(self.path), stored, self.policy.name)
            with db:
                db.execute("BEGIN")
                db.execute("DELETE FROM entries WHERE lst >= 2")  # ARC ghosts mean nothing to others
                db.execute("UPDATE entries SET lst = 0, freq = 0, prio = 0")
            policy_meta = {}
        rows = db.execute("SELECT hash, size, lst, rank, freq, prio FROM entries ORDER BY rank")
        overflow = self.policy.load(rows, policy_meta)
        self.needs_scan = new or meta.get("clean") != "1"
        self._write_meta({"version": SCHEMA_VERSION, "policy": self.policy.name, "clean": "0"})
        if overflow:
            log.info("cache %s: %d blob(s) over the capacity of %d bytes will be deleted",
                     os.path.dirname(self.path), len(overflow), self.policy.capacity)
            self.flush()
        return overflow

    def run_in_memory(self, reason: str) -> None:
        """Start empty and unsaved (the database cannot be opened): the loader rebuilds the entries from a scan.

        The file is removed (which also frees room on a full disk): it may say "closed cleanly" about a
        directory this run is about to change, and a fresh index makes the next start scan again.
        """
        self._close_quietly()
        self.policy = type(self.policy)(self.policy.capacity)  # drop whatever was half loaded
        self.needs_scan = True
        self.persistence_error = reason
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(self.path + suffix)
            except FileNotFoundError:
                pass
            except OSError as exc:  # read-only: the next start cannot open it either, and runs in memory again
                log.warning("cannot remove the unusable cache index %s: %s", self.path + suffix, exc)

    def flush(self) -> int:
        """Save the changes since the last flush in one transaction; returns the number of rows written.

        A failed write turns persistence off (CacheIndexError says why, once); the index keeps working.
        """
        upserts, deletes = self.policy.drain_changes()  # drained even unsaved: the change log must not grow
        if self.persistence_error is not None:
            return 0
        policy_meta = self.policy.meta()
        if not upserts and not deletes and policy_meta == self._saved_meta:
            return 0
        db = self._connection()
        try:
            with db:
                db.execute("BEGIN")
                db.executemany("DELETE FROM entries WHERE hash = ?", ((h,) for h in deletes))
                # REPLACE also removes the entry's previous row, found through the UNIQUE hash
                db.executemany("INSERT OR REPLACE INTO entries (hash, size, lst, rank, freq, prio) "
                               "VALUES (?, ?, ?, ?, ?, ?)", upserts)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('policy_meta', ?)", (json.dumps(policy_meta),))
        except sqlite3.Error as exc:
            self.persistence_error = f"cannot write cache index {self.path}: {exc}"
            self._close_quietly()  # what it holds was marked unclean at load: the next start rescans
            raise CacheIndexError(self.persistence_error) from None
        self._saved_meta = policy_meta
        return len(upserts) + len(deletes)

    def close(self) -> None:
        """Flush and mark the index clean, so the next start needs no directory scan."""
        if self._db is None:
            return
        try:
            self.flush()
            self._write_meta({"clean": "1"})
        except (CacheIndexError, sqlite3.Error) as exc:  # left unclean: the next start rescans
            log.warning("cache index %s not closed cleanly: %s", self.path, exc)
        self._close_quietly()

    # --- the policy API -----------------------------------------------------------------------------------

    def add(self, hash_: str, size: int) -> list[str]:
        """A blob was written into the cache; returns the hashes whose files must be deleted."""
        return self.policy.add(hash_, size)

    def adopt(self, entries: Iterable[tuple[str, int]]) -> list[str]:
        """Files found on disk; returns those refused for lack of room (their files must be deleted)."""
        refused = []
        for hash_, size in entries:
            refused.extend(self.policy.adopt(hash_, size))
        return refused

    def unknown(self, hashes: Iterable[str]) -> list[str]:
        """Those of `hashes` that are not cached (one call per batch: cheap here, one query for localdb)."""
        policy = self.policy
        return [hash_ for hash_ in hashes if hash_ not in policy]

    def touch(self, *hashes: str) -> None:
        """Record reads (a batch from a worker); hashes not cached are ignored."""
        touch = self.policy.touch
        for hash_ in hashes:
            touch(hash_)

    def forget(self, hash_: str) -> bool:
        """Drop an entry whose file is gone (a hit found no file) or was deleted on purpose."""
        return self.policy.remove(hash_)

    def resize(self, capacity: int) -> list[str]:
        """A new byte capacity (see the cache manager's free-space check); returns the hashes to delete."""
        return self.policy.set_capacity(capacity)

    def pin(self, hash_: str) -> None:
        self.policy.pin(hash_)

    def unpin(self, hash_: str) -> None:
        self.policy.unpin(hash_)

    def __contains__(self, hash_: object) -> bool:
        return hash_ in self.policy

    def __len__(self) -> int:
        return len(self.policy)

    def __iter__(self):
        return iter(self.policy)

    @property
    def used_bytes(self) -> int:
        return self.policy.used_bytes

    @property
    def capacity(self) -> int:
        return self.policy.capacity

    def stats(self) -> dict[str, int | str]:
        """For `appliancectl status`: bytes used / capacity, blob count, evictions, policy."""
        return {"policy": self.policy.name, "used_bytes": self.policy.used_bytes, "capacity": self.policy.capacity,
                "blobs": len(self.policy), "evictions": self.policy.evictions}

    # --- internals ----------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise CacheIndexError(f"cache index {self.path} is not open")
        return self._db

    def _write_meta(self, values: dict[str, str]) -> None:
        with self._connection() as db:
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())

    def _close_quietly(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
