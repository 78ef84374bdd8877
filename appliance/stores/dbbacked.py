"""The DB-backed store (spec §4.9): the database says what exists, the underlying store holds the bytes.

- `has`/`get` ask the database (`get` refreshes access times); a blob the database does not list is
  not found, whatever the underlying store holds. A stored blob counts whether or not a stream lists it
  (appliance.db: content blobs uploaded before their sd blob are not asked for again, §10.21).
- `put` stores the bytes, then records the blob; `put_sd` validates the sd blob (appliance.stream),
  stores it, then records it with its stream and content blobs in one transaction. If recording fails
  the call fails: the upload server sends no receipt, and nothing is recorded as stored.
- MySQL down: `has` and `get` answer from the underlying store instead (logged once per outage), so
  downloads keep working. While it is down, an upload may therefore be told a blob is already there
  when the bytes are in the underlying store; its sd blob cannot be recorded, so the client gets no
  receipt for the stream, and once MySQL is back `needed_blobs` asks for whatever is not recorded.
- Capabilities: NeededBlobsChecker (from the database) and Blocklister (the `blocked` table, cached in
  memory and re-read every `blocked_ttl` seconds, so blocks made by other processes are seen).
"""
from __future__ import annotations

import logging
import threading
import time

from appliance.db import Database, DatabaseUnavailable
from appliance.errors import BlobNotFound
from appliance.stores.base import Blob, BlobStore, BlobStream, Blocklister, NeededBlobsChecker, Upload
from appliance.stream import parse_sd_blob

log = logging.getLogger("store")


class DBBackedStore(BlobStore, NeededBlobsChecker, Blocklister):
    name = "db-backed"

    def __init__(self, underlying: BlobStore, db: Database, delete_on_miss: bool = False,
                 blocked_ttl: float = 60.0):
        self.underlying = underlying
        self.db = db
        self.delete_on_miss = delete_on_miss
        self.blocked_ttl = blocked_ttl
        self._db_down = False
        self._blocked: set[str] = set()
        self._blocked_at = float("-inf")
        self._blocked_lock = threading.Lock()

    # --- the database, with a fallback for reads ------------------------------------------------------
    def _db_is_down(self, exc: DatabaseUnavailable) -> None:
        if not self._db_down:
            self._db_down = True
            log.warning("%s; answering reads from %s until the database is back", exc, self.underlying.name)

    def _db_is_up(self) -> None:
        if self._db_down:
            self._db_down = False
            log.info("database is back: %s", self.db.dsn)

    def has(self, hash_: str) -> bool:
        try:
            present = self.db.has_blob(hash_)
        except DatabaseUnavailable as exc:
            self._db_is_down(exc)
            return self.underlying.has(hash_)
        self._db_is_up()
        return present

    def get(self, hash_: str) -> Blob:
        return self._read(hash_, self.underlying.get)

    def stream(self, hash_: str) -> BlobStream:
        return self._read(hash_, self.underlying.stream)

    def _read(self, hash_: str, read):
        """`read(hash_)` of the underlying store (get or stream) once the database says the blob exists."""
        started = time.monotonic_ns()
        try:
            present = self.db.has_blob(hash_, touch=True)
        except DatabaseUnavailable as exc:
            self._db_is_down(exc)
            present = True  # let the underlying store decide
        else:
            self._db_is_up()
        if not present:
            raise BlobNotFound()
        try:
            blob = read(hash_)
        except BlobNotFound:
            if self.delete_on_miss and not self._db_down:
                try:
                    self.delete(hash_)
                except Exception as exc:  # the miss is the answer; a failed cleanup is only logged
                    log.warning("%s: deleting %s after a miss failed: %s", self.name, hash_[:8], exc)
            raise
        blob.trace.stack(self.name, started)
        return blob

    # --- writes: bytes first, then the record ---------------------------------------------------------
    def put(self, hash_: str, data: bytes) -> None:
        self.underlying.put(hash_, data)
        self.db.add_blob(hash_, len(data), stored=True)

    def upload(self, hash_: str, size: int) -> Upload:
        """The underlying store's streaming write; the blob is recorded once the bytes are stored.

        Stores whose aborted writes may leave unlisted partial objects stream only here (`stream_upload`):
        what the database does not list is not there.
        """
        stream = getattr(self.underlying, "stream_upload", None)
        inner = stream(hash_, size) if stream is not None else self.underlying.upload(hash_, size)
        return _RecordedUpload(inner, self.db, hash_, size)

    def put_sd(self, hash_: str, data: bytes) -> None:
        descriptor = parse_sd_blob(data)  # InvalidStreamDescriptor (a ValueError) before anything is stored
        self.underlying.put_sd(hash_, data)
        self.db.add_sd_blob(hash_, len(data), descriptor.stream_hash,
                            [(b.blob_hash, b.length, b.blob_num) for b in descriptor.content_blobs])

    def delete(self, hash_: str) -> None:
        self.underlying.delete(hash_)
        self.db.delete(hash_)

    # --- capabilities ---------------------------------------------------------------------------------
    def missing_blobs_for_known_stream(self, sd_hash: str) -> list[str]:
        return self.db.missing_blobs_for_known_stream(sd_hash)

    def block(self, hash_: str) -> None:
        if hash_ in self._blocked:
            return
        self.db.block(hash_)
        with self._blocked_lock:
            self._blocked = self._blocked | {hash_}

    def is_blocked(self, hash_: str) -> bool:
        if time.monotonic() - self._blocked_at >= self.blocked_ttl:
            self._refresh_blocked()
        return hash_ in self._blocked

    def _refresh_blocked(self) -> None:
        with self._blocked_lock:
            if time.monotonic() - self._blocked_at < self.blocked_ttl:
                return  # another caller refreshed it meanwhile
            try:
                self._blocked = self.db.get_blocked()
            except Exception as exc:  # keep the last known list; try again after the ttl
                log.warning("%s: reading the blocked list failed, keeping %d known hashes: %s", self.name,
                            len(self._blocked), exc)
            self._blocked_at = time.monotonic()

    def shutdown(self) -> None:
        self.underlying.shutdown()


class _RecordedUpload(Upload):
    def __init__(self, inner: Upload, db: Database, hash_: str, size: int):
        self.inner, self.db, self.hash, self.size = inner, db, hash_, size

    def write(self, chunk) -> None:
        self.inner.write(chunk)

    def commit(self) -> None:
        self.inner.commit()
        self.db.add_blob(self.hash, self.size, stored=True)  # one short transaction per content blob

    def abort(self) -> None:
        self.inner.abort()
