"""The `localdb` cache manager: access times in MySQL's `blob_` table, as reflector.go keeps them.

reflector.go's default manager (spec §1.3, §4.14, §5.3): BLOBS access tracking with soft delete; a blob
written into the cache is upserted as stored with `last_accessed_at = now`; reads refresh the time when it
is older than 6 hours; eviction soft-deletes (`is_stored = 0`) the least recently accessed. Differences:
- the DSN is the `localdb_conn` setting instead of a hard-coded one;
- capacity is in bytes (the `length` column), not in 2 MiB slots, and is enforced when a blob is added
  rather than by a loop every 10 minutes; as reflector.go evicts 10% when full, going over the capacity
  evicts down to 90% of it, so the database is asked for victims once per ~10% of traffic, not per blob;
- reads are collected and written once per flush() (one query for all of them), not one query per read;
- files the table does not know are adopted by the loader instead of being invisible forever.

It offers the same API as appliance.cache.index.CacheIndex, so the cache manager treats both alike.
One database per localdb cache: two caches sharing a `blob_` table would evict each other's entries.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator

from pymysql.cursors import Cursor

from appliance.db import BATCH, Database, TrackAccess

log = logging.getLogger("cache")

LOW_WATERMARK = 0.9  # evicting stops at this fraction of the capacity
VICTIM_PAGE = 1000  # least recently accessed rows fetched per query while evicting
ADOPTED_AGE = dt.timedelta(days=1)  # files of unknown age are recorded as last read a day ago (populate-db)
FIRST_HASH, LAST_HASH = "0" * 96, "f" * 96


class LocalDB(Database):
    """reflector.go's local database (BLOBS tracking, soft delete) plus the byte accounting a cache needs."""

    def __init__(self, dsn: str, **kwargs):
        super().__init__(dsn, TrackAccess.BLOBS, soft_delete=True, **kwargs)

    def stored_bytes(self) -> int:
        """Total `length` of the stored blobs."""
        return self._run("stored bytes", lambda cur: (
            cur.execute("SELECT COALESCE(SUM(length), 0) FROM blob_ WHERE is_stored = 1"), int(cur.fetchone()[0]))[1])

    def least_recently_accessed(self, limit: int, offset: int = 0) -> list[tuple[str, int]]:
        """(hash, length) of stored blobs, least recently accessed first (NULL first, as reflector.go)."""
        return self._run("least recently accessed", lambda cur: (cur.execute(
            "SELECT hash, length FROM blob_ WHERE is_stored = 1 ORDER BY last_accessed_at, id LIMIT %s OFFSET %s",
            (limit, offset)), [(h, int(length or 0)) for h, length in cur.fetchall()])[1])

    def unstore(self, hashes: list[str]) -> dict[str, int]:
        """Soft-delete stored blobs in one transaction; returns hash -> length of those that were stored."""
        def work(cur: Cursor) -> dict[str, int]:
            found: dict[str, int] = {}
            for start in range(0, len(hashes), BATCH):
                chunk = hashes[start:start + BATCH]
                marks = ",".join(["%s"] * len(chunk))
                cur.execute(f"SELECT hash, length FROM blob_ WHERE is_stored = 1 AND hash IN ({marks}) FOR UPDATE",
                            chunk)
                found.update((h, int(length or 0)) for h, length in cur.fetchall())
                cur.execute(f"UPDATE blob_ SET is_stored = 0 WHERE hash IN ({marks})", chunk)
            return found

        return self._run("unstore blobs", work) if hashes else {}

    def adopt_blobs(self, entries: list[tuple[str, int]]) -> None:
        """Record files found on disk as stored, last read ADOPTED_AGE ago (reflector.go's populate-db age)."""
        self.add_blobs(entries, accessed_at=self._now() - ADOPTED_AGE)


class LocalDBIndex:
    """A disk cache whose eviction state is the `blob_` table; see the module docstring."""

    name = "localdb"
    persistence_error: str | None = None  # the state is MySQL's, never in the cache directory

    def __init__(self, db: LocalDB, capacity: int):
        if capacity <= 0:
            raise ValueError("cache capacity must be more than 0 bytes")
        self.db = db
        self.capacity = capacity
        self.used_bytes = 0
        self.evictions = 0
        # The table may know files that are gone or miss files that are there (it is not ours alone):
        # the loader reconciles at every start.
        self.needs_scan = True
        self._pinned: set[str] = set()
        self._reads: set[str] = set()

    # --- lifecycle ----------------------------------------------------------------------------------------

    def load(self) -> list[str]:
        """Read the stored bytes; returns hashes evicted because they exceed the capacity."""
        self.used_bytes = self.db.stored_bytes()
        return self._make_room(None) if self.used_bytes > self.capacity else []

    def flush(self) -> int:
        """Write the reads collected since the last flush (touching those older than 6 h)."""
        reads, self._reads = self._reads, set()
        if reads:
            self.db.has_blobs(reads, touch=True)
        return len(reads)

    def close(self) -> None:
        self.flush()
        self.db.close()

    # --- the index API ------------------------------------------------------------------------------------

    def add(self, hash_: str, size: int) -> list[str]:
        """A blob was written into the cache; returns the hashes whose files must be deleted."""
        if size <= 0:
            raise ValueError(f"blob size must be more than 0 bytes, not {size}")
        if size > self.capacity:
            self.forget(hash_)
            return [hash_]
        was_stored = self.db.has_blob(hash_)
        self.db.add_blob(hash_, size, stored=True)  # BLOBS mode: last_accessed_at = now
        if not was_stored:  # same hash, same bytes: a re-add changes nothing in the accounting
            self.used_bytes += size
        return self._make_room(hash_) if self.used_bytes > self.capacity else []

    def resize(self, capacity: int) -> list[str]:
        """A new byte capacity (the cache's filesystem holds less, or more again); returns the hashes evicted."""
        if capacity <= 0:
            raise ValueError("cache capacity must be more than 0 bytes")
        self.capacity = capacity
        return self._make_room(None) if self.used_bytes > capacity else []

    def adopt(self, entries: Iterable[tuple[str, int]]) -> list[str]:
        """Files found on disk, recorded as read a day ago; returns those refused for lack of room."""
        accepted, refused = [], []
        for hash_, size in entries:
            if self.used_bytes + size <= self.capacity:
                accepted.append((hash_, size))
                self.used_bytes += size
            else:
                refused.append(hash_)
        if accepted:
            self.db.adopt_blobs(accepted)
        return refused

    def unknown(self, hashes: Iterable[str]) -> list[str]:
        """Those of `hashes` not recorded as stored (one query per batch)."""
        hashes = list(hashes)
        stored = self.db.has_blobs(hashes) if hashes else set()
        return [h for h in hashes if h not in stored]

    def touch(self, *hashes: str) -> None:
        """Record reads; written by the next flush()."""
        self._reads.update(hashes)

    def forget(self, hash_: str) -> bool:
        """Drop a blob whose file is gone (a hit found no file) or was deleted on purpose."""
        removed = self.db.unstore([hash_])
        self.used_bytes -= sum(removed.values())
        self._reads.discard(hash_)
        return bool(removed)

    def pin(self, hash_: str) -> None:
        self._pinned.add(hash_)

    def unpin(self, hash_: str) -> None:
        self._pinned.discard(hash_)

    def __contains__(self, hash_: object) -> bool:
        return isinstance(hash_, str) and self.db.has_blob(hash_)

    def __len__(self) -> int:
        return self.db.count()

    def __iter__(self) -> Iterator[str]:
        return self.db.get_stored_hashes_in_range(FIRST_HASH, LAST_HASH)

    def stats(self) -> dict[str, int | str]:
        return {"policy": self.name, "used_bytes": self.used_bytes, "capacity": self.capacity,
                "blobs": len(self), "evictions": self.evictions}

    # --- eviction -----------------------------------------------------------------------------------------

    def _make_room(self, protect: str | None) -> list[str]:
        """Soft-delete the least recently accessed blobs until at most LOW_WATERMARK of the capacity is used."""
        target = int(self.capacity * LOW_WATERMARK)
        evicted: list[str] = []
        skipped = 0  # pinned rows stay at the head of the order: page past them
        while self.used_bytes > target:
            page = self.db.least_recently_accessed(VICTIM_PAGE, skipped)
            if not page:
                break
            chosen = []
            freed = 0
            for hash_, length in page:
                if hash_ == protect or hash_ in self._pinned:
                    skipped += 1
                    continue
                if self.used_bytes - freed <= target:
                    break
                chosen.append(hash_)
                freed += length
            removed = self.db.unstore(chosen)
            self.used_bytes -= sum(removed.values())
            self.evictions += len(removed)
            evicted.extend(h for h in chosen if h in removed)  # in eviction order
            if not chosen:
                if len(page) < VICTIM_PAGE:
                    break  # only pinned blobs (and the newcomer) are left
        if self.used_bytes > self.capacity and protect is not None:
            # everything else is pinned: refuse the newcomer, as the in-memory policies do
            self.forget(protect)
            evicted.append(protect)
        return evicted
