"""The persistent disk-cache index: an in-memory eviction policy, saved as a snapshot plus a journal.

Design (why this shape):
- The policy lives in memory because every decision (is it cached, what to evict) must be instant in the
  cache manager, and reads are reported in batches that would otherwise each cost a write. Its entries are
  flat arrays (appliance.cache.slab), ~70-100 bytes per cached blob, so 10 million blobs fit in ~1 GB.
- A snapshot (`<cache>/index.snapshot`) is those arrays written as they are, hash table included, so a
  restart reads them back with no per-entry work: 10 million entries are ready in seconds. It is written
  at a clean stop, and when the journal has grown past JOURNAL_LIMIT (a few seconds of blocking at 10M
  entries, after ~900,000 changes).
- The journal (`<cache>/index.journal`) holds the changes since that snapshot: about once a second the
  manager calls flush(), which appends one batch of the entries changed since the previous flush (policies
  report them, see appliance.cache.policies), framed with its length and CRC, so a batch cut short by a
  crash is recognised and ignored. It is not fsynced: the cache is a copy of the origin, and losing the last
  second is harmless (a blob added but not saved is found again by the loader, appliance.cache.scan; one
  evicted but not saved is noticed as missing). Both files carry a generation number, so a journal left
  from before the newest snapshot is never replayed over it.
- A start appends an empty batch at once; a clean stop leaves an empty journal after a new snapshot. So a
  journal with batches in it at start means the last run did not stop cleanly: `needs_scan` is set and the
  manager runs the loader in the background to adopt files the index does not know and forget entries whose
  files are gone.
- A cache is only a speed-up, so an index that cannot be opened (a full or read-only disk) or written does
  not stop the cache: `run_in_memory` starts it empty and unsaved (the loader rebuilds it from a scan), and
  a flush that fails turns persistence off, leaving a journal that asks the next start for a scan.
  `persistence_error` says why the index is not saved.
- The files live inside the cache directory, so they share the cache's lifetime: wiping or replacing the
  directory cannot leave an index describing files that are not there. Their names are not blob hashes, so
  reflector.go's layout and our scans ignore them. An index of the earlier SQLite format
  (`index.sqlite3`) is read once and replaced.

Not thread-safe: one caller at a time (the cache manager's loop).
"""
from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Iterable

from appliance.cache.policies import POLICIES, Policy, Row

log = logging.getLogger("cache")

INDEX_FILE = "index.snapshot"
JOURNAL_FILE = "index.journal"
LEGACY_FILE = "index.sqlite3"
SNAPSHOT_MAGIC = b"REFLECTOR-CACHE-INDEX 2\n"
JOURNAL_MAGIC = b"REFLECTOR-CACHE-JOURNAL 2\n"
JOURNAL_LIMIT = 64 * 1024 * 1024  # bytes of journal before the next flush writes a snapshot instead
_BATCH = struct.Struct("<II")  # payload length, CRC-32 of the payload
_RECORD = struct.Struct("<B48sIBqIq")  # 0 upsert / 1 delete, key, size, lst, rank, freq, prio
_UPSERT, _DELETE = 0, 1


class CacheIndexError(Exception):
    """The index cannot be opened or written; one line for the operator."""


def index_path(cache_dir: str) -> str:
    return os.path.join(cache_dir, INDEX_FILE)


class CacheIndex:
    """One disk cache's index: the policy API plus load(), flush() and close()."""

    def __init__(self, path: str, policy: Policy):
        self.path = path  # the snapshot; the journal and the legacy index sit beside it
        directory = os.path.dirname(path) or "."
        self.journal_path = os.path.join(directory, JOURNAL_FILE)
        self.legacy_path = os.path.join(directory, LEGACY_FILE)
        self.policy = policy
        self.needs_scan = False
        self.persistence_error: str | None = None  # why the index is not saved (None: it is)
        self.generation = 0
        self._journal = None
        self._journal_bytes = 0
        self._saved_meta: dict[str, float] | None = None
        self._legacy_done = False  # an index.sqlite3 was converted: remove it once the snapshot is written

    # --- lifecycle ----------------------------------------------------------------------------------------

    def load(self) -> list[str]:
        """Read the snapshot and replay the journal (or migrate, or start empty); returns hashes to delete
        (over capacity). CacheIndexError (one line) when the files cannot be read or written: see
        run_in_memory."""
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            restored = self._restore()
        except OSError as exc:
            raise CacheIndexError(f"cannot open cache index {self.path}: {exc.strerror or exc}") from None
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            # A damaged snapshot is rebuilt from the directory: keep it for inspection, start empty.
            aside = f"{self.path}.broken"
            log.warning("cache index %s is unreadable (%s): moved to %s, the directory will be rescanned",
                        self.path, exc, aside)
            self.policy = type(self.policy)(self.policy.capacity)  # drop whatever was half restored
            self.needs_scan = True
            for path, suffix in ((self.path, ""), (self.journal_path, ".journal")):
                if os.path.exists(path):
                    os.replace(path, aside + suffix)
            restored = False
        overflow = self.policy.settle()
        if overflow:
            log.info("cache %s: %d blob(s) over the capacity of %d bytes will be deleted",
                     os.path.dirname(self.path), len(overflow), self.policy.capacity)
        try:
            if not restored:
                self._write_snapshot()  # a new, migrated or converted index starts from a snapshot
            self._open_journal()
            self._append({}, [], [])  # the mark of a run in progress: a crash from here on asks for a scan
            if overflow:
                self.flush()
        except OSError as exc:
            self._close_quietly()
            raise CacheIndexError(f"cannot open cache index {self.path}: {exc.strerror or exc}") from None
        return overflow

    def run_in_memory(self, reason: str) -> None:
        """Start empty and unsaved (the files cannot be opened): the loader rebuilds the entries from a scan.

        The files are removed (which also frees room on a full disk): they may say "closed cleanly" about a
        directory this run is about to change, and no index makes the next start scan again.
        """
        self._close_quietly()
        self.policy = type(self.policy)(self.policy.capacity)  # drop whatever was half loaded
        self.needs_scan = True
        self.persistence_error = reason
        for path in (self.path, self.journal_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # read-only: the next start cannot open it either, and runs in memory again
                log.warning("cannot remove the unusable cache index %s: %s", path, exc)

    def _restore(self) -> bool:
        """Fill the policy from the files; True when it came from a snapshot of this policy (kept as is)."""
        if not os.path.exists(self.path):
            self.needs_scan = True
            if os.path.exists(self.legacy_path):
                self.needs_scan = self._migrate_legacy()
            return False
        with open(self.path, "rb") as f:
            if f.readline() != SNAPSHOT_MAGIC:
                raise ValueError("not a cache index snapshot")
            header = json.loads(f.readline())
            self.generation = header["generation"]
            stored = POLICIES[header["policy"]](self.policy.capacity)
            stored.restore_snapshot(header, f)
        batches = self._replay(stored)
        self.needs_scan = batches > 0
        if stored.name == self.policy.name:
            self.policy = stored
            return True
        log.info("cache %s: policy changed from %s to %s; entries kept in their eviction order",
                 os.path.dirname(self.path), stored.name, self.policy.name)
        # Cached entries only (ARC's ghosts mean nothing to others), with plain ranks in eviction order.
        self.policy.load([(h, stored.size_of(h), 0, rank, 0, 0) for rank, h in enumerate(stored)], {})
        return False

    def _replay(self, policy: Policy) -> int:
        """Apply the journal's batches that follow the snapshot; returns how many there were."""
        try:
            f = open(self.journal_path, "rb")
        except FileNotFoundError:
            return 0
        batches = 0
        with f:
            if f.readline() != JOURNAL_MAGIC or json.loads(f.readline() or "{}").get("generation") != self.generation:
                return 0  # a journal from before the snapshot: already in it
            while True:
                head = f.read(_BATCH.size)
                if len(head) < _BATCH.size:
                    break
                length, crc = _BATCH.unpack(head)
                payload = f.read(length)
                if len(payload) < length or zlib.crc32(payload) != crc:
                    log.info("cache index journal %s ends with a partial batch (ignored)", self.journal_path)
                    break
                meta, upserts, deletes = _decode_batch(payload)
                policy.replay(upserts, deletes, meta)
                batches += 1
        return batches

    def _migrate_legacy(self) -> bool:
        """Read an index of the SQLite format into the policy; True when it asks for a scan (unclean)."""
        import sqlite3

        try:
            with sqlite3.connect(f"file:{self.legacy_path}?mode=ro", uri=True) as db:
                meta = dict(db.execute("SELECT key, value FROM meta"))
                same = meta.get("policy") == self.policy.name
                rows = db.execute("SELECT hash, size, lst, rank, freq, prio FROM entries ORDER BY rank")
                if not same:  # cached entries only, in their eviction order
                    rows = ((h, size, 0, rank, 0, 0) for h, size, lst, rank, _, _ in rows if lst < 2)
                self.policy.load(rows, json.loads(meta.get("policy_meta", "{}")) if same else {})
        except sqlite3.Error as exc:
            log.warning("cache index %s could not be read (%s): the directory will be rescanned",
                        self.legacy_path, exc)
            self.policy = type(self.policy)(self.policy.capacity)
            return True
        log.info("cache %s: index of %d entries converted from %s", os.path.dirname(self.path), len(self.policy),
                 LEGACY_FILE)
        self._legacy_done = True
        return meta.get("clean") != "1"

    def flush(self) -> int:
        """Save the changes since the last flush as one journal batch; returns the number of entries saved.

        A failed write turns persistence off (CacheIndexError says why, once); the index keeps working.
        """
        upserts, deletes = self.policy.drain_changes()  # drained even unsaved: the change log must not grow
        if self.persistence_error is not None:
            return 0
        policy_meta = self.policy.meta()
        if not upserts and not deletes and policy_meta == self._saved_meta:
            return 0
        try:
            if self._journal_bytes > JOURNAL_LIMIT:
                self._write_snapshot()  # holds every change drained above
                self._open_journal()
            else:
                self._append(policy_meta, upserts, deletes)
        except OSError as exc:
            self.persistence_error = f"cannot write cache index {self.path}: {exc.strerror or exc}"
            self._close_quietly()  # the journal holds the run's start mark: the next start rescans
            raise CacheIndexError(self.persistence_error) from None
        return len(upserts) + len(deletes)

    def close(self) -> None:
        """Save a snapshot and start an empty journal, so the next start needs no directory scan."""
        if self._journal is None or self.persistence_error is not None:
            return
        self.policy.drain_changes()  # the snapshot holds them
        try:
            self._write_snapshot()
            self._open_journal()
        except OSError as exc:  # left as it was: the journal asks the next start for a scan
            log.warning("cache index %s not closed cleanly: %s", self.path, exc.strerror or exc)
        finally:
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

    # --- files --------------------------------------------------------------------------------------------

    def _write_snapshot(self) -> None:
        """The whole policy under a new generation, written aside, fsynced and renamed into place."""
        self.generation += 1
        header = {"generation": self.generation, **self.policy.snapshot_header()}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(SNAPSHOT_MAGIC + json.dumps(header).encode() + b"\n")
                for buffer in self.policy.snapshot_buffers():
                    f.write(memoryview(buffer).cast("B"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        if self._legacy_done:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(self.legacy_path + suffix):
                    os.unlink(self.legacy_path + suffix)
            self._legacy_done = False

    def _open_journal(self) -> None:
        """A new, empty journal for the current generation (replacing the old one atomically)."""
        self._close_quietly()
        tmp = f"{self.journal_path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(JOURNAL_MAGIC + json.dumps({"generation": self.generation}).encode() + b"\n")
        os.replace(tmp, self.journal_path)
        self._journal = open(self.journal_path, "ab", buffering=0)
        self._journal_bytes = 0

    def _append(self, meta: dict[str, float], upserts: list[Row], deletes: list[str]) -> None:
        payload = _encode_batch(meta, upserts, deletes)
        view = memoryview(_BATCH.pack(len(payload), zlib.crc32(payload)) + payload)
        while view:  # an unbuffered write may be short (a filling disk): the next one raises ENOSPC
            view = view[self._journal.write(view):]
        self._journal_bytes += _BATCH.size + len(payload)
        self._saved_meta = meta

    def _close_quietly(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


def _encode_batch(meta: dict[str, float], upserts: list[Row], deletes: list[str]) -> bytes:
    meta_json = json.dumps(meta).encode()
    out = bytearray(struct.pack("<H", len(meta_json)) + meta_json)
    pack = _RECORD.pack
    for hash_ in deletes:
        out += pack(_DELETE, bytes.fromhex(hash_), 0, 0, 0, 0, 0)
    for hash_, size, lst, rank, freq, prio in upserts:
        out += pack(_UPSERT, bytes.fromhex(hash_), size, lst, rank, freq, prio)
    return bytes(out)


def _decode_batch(payload: bytes) -> tuple[dict[str, float], list[Row], list[str]]:
    (meta_len,) = struct.unpack_from("<H", payload)
    meta = json.loads(payload[2:2 + meta_len])
    upserts: list[Row] = []
    deletes: list[str] = []
    for op, key, size, lst, rank, freq, prio in _RECORD.iter_unpack(payload[2 + meta_len:]):
        if op == _DELETE:
            deletes.append(key.hex())
        else:
            upserts.append((key.hex(), size, lst, rank, freq, prio))
    return meta, upserts, deletes
