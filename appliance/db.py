"""MySQL access (pymysql): reflector.go's db package (spec §5.3) with its bugs fixed.

- Every value goes through placeholders; the only SQL built at run time is a `%s,%s,...` list.
- Every operation is one transaction. `add_sd_blob` records the sd blob, the stream and all of its
  content blobs and memberships together with multi-row statements: a 5,000-blob stream is a handful of
  round trips, and a failure leaves nothing behind.
- Lock wait timeouts (1205) and deadlocks (1213) roll back and retry the whole transaction, with backoff.
- Connections live in a small per-process pool built on `threading` primitives, so under gevent's
  monkey-patching it is cooperative, and it is created lazily in the process that uses it: a pool (and
  its sockets) never crosses a fork. One connection serves one caller at a time.
- A pooled connection found dead (MySQL restarted, idle timeout) is discarded with every other idle one,
  and the operation runs once more on a fresh connection. That is safe for writes too, because every
  write here is idempotent (upserts, INSERT IGNORE, deletes). A fresh connection that fails is an error
  at once: no retry loop holds a worker while MySQL is down, and the next call simply tries again.
- Connect, read and write timeouts (from the DSN, defaults 5 s / 30 s / 30 s): a hung server never
  blocks a worker forever.

Access tracking (NONE, STREAMS, BLOBS) and soft delete are reflector.go's. One deliberate difference:
a blob counts as present when `is_stored = 1`, in every mode. reflector.go's STREAMS mode reports a
stored blob that no stream references as absent (§10.21), so content blobs uploaded before their sd
blob (the order `prism send` and SDK clients may use) were asked for again and again; here STREAMS mode
only decides which `last_accessed_at` a read touches (the streams the blob belongs to).
Timestamps come from the application's clock, in UTC, as reflector.go's Go driver writes them.
"""
from __future__ import annotations

import datetime as dt
import enum
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pymysql
from pymysql.cursors import Cursor

from appliance import dsn as dsn_mod

log = logging.getLogger("db")
T = TypeVar("T")

SCHEMA_FILE = Path(__file__).resolve().with_name("schema.sql")
SCHEMA_TABLES = ("blob_", "stream", "stream_blob", "blocked")
BATCH = 10_000  # hashes per IN (...) list, as reflector.go
INSERT_BATCH = 1_000  # rows per multi-row INSERT
TOUCH_AFTER = dt.timedelta(hours=6)  # reflector.go refreshes last_accessed_at at most this often
LOCK_ERRORS = {1205, 1213}  # lock wait timeout, deadlock
# Client-side "lost/refused/gone" codes and server-side "going away" codes: the connection is unusable.
CONNECTION_ERRORS = {2002, 2003, 2006, 2013, 2055, 1053, 1927, 4031}


class TrackAccess(enum.Enum):
    NONE = "none"
    STREAMS = "streams"
    BLOBS = "blobs"


class DatabaseError(Exception):
    """A database operation failed; the message is one line and never contains the password."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class DatabaseUnavailable(DatabaseError):
    """MySQL could not be reached, or the connection died and a fresh one failed too."""


def schema_statements(path: Path = SCHEMA_FILE) -> list[str]:
    """The CREATE TABLE statements of schema.sql, comments dropped."""
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in text.split(";") if statement.strip()]


def _placeholders(n: int) -> str:
    return ",".join(["%s"] * n)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _message(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    if len(args) >= 2:
        return f"({args[0]}) {args[1]}"
    return str(exc) or type(exc).__name__


class _Pool:
    """At most `size` connections; idle ones are reused most-recent first."""

    def __init__(self, connect: Callable[[], pymysql.connections.Connection], size: int, wait_timeout: float):
        self._connect = connect
        self._slots = threading.BoundedSemaphore(size)
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._wait_timeout = wait_timeout

    def acquire(self) -> tuple[pymysql.connections.Connection, bool]:
        """(connection, reused): `reused` is False for a connection made just now."""
        if not self._slots.acquire(timeout=self._wait_timeout):
            raise DatabaseError(f"no free database connection after {self._wait_timeout:.0f}s (pool exhausted)")
        try:
            return self._idle.get_nowait(), True
        except queue.Empty:
            pass
        try:
            return self._connect(), False
        except BaseException:
            self._slots.release()
            raise

    def release(self, conn: pymysql.connections.Connection) -> None:
        self._idle.put(conn)
        self._slots.release()

    def discard(self, conn: pymysql.connections.Connection) -> None:
        _close_quietly(conn)
        self._slots.release()

    def clear_idle(self) -> None:
        while True:
            try:
                _close_quietly(self._idle.get_nowait())
            except queue.Empty:
                return


def _close_quietly(conn: pymysql.connections.Connection) -> None:
    try:
        conn.close()
    except Exception:  # already dead: closing is best effort
        pass


class Database:
    """reflector.go's MySQL operations. Construction connects to nothing; see the module docstring.

    Subclasses add operations with `_run(what, work)` (work(cursor) in one retried transaction) and
    `_fetch(what, sql, args)` (one read, all rows); `what` names the operation in error messages.
    """

    def __init__(self, dsn: str | dsn_mod.DSN, track_access: TrackAccess | str = TrackAccess.NONE,
                 soft_delete: bool = False, *, pool_size: int = 8, lock_retries: int = 4,
                 clock: Callable[[], float] = time.time):
        self.dsn = dsn if isinstance(dsn, dsn_mod.DSN) else dsn_mod.parse(dsn)
        self.track_access = TrackAccess(track_access)
        self.soft_delete = soft_delete
        self.pool_size = pool_size
        self.lock_retries = lock_retries
        self._clock = clock
        self._lock = threading.Lock()
        self._pool_pid = 0
        self._pool_obj: _Pool | None = None

    @classmethod
    def from_dsn(cls, dsn: str, track_access: TrackAccess | str = TrackAccess.NONE, soft_delete: bool = False,
                 **kwargs) -> Database:
        """A Database for a db_conn value; DsnError (a ValueError, one line) when it cannot be parsed."""
        return cls(dsn_mod.parse(dsn), track_access, soft_delete, **kwargs)

    def __repr__(self) -> str:
        return f"Database({self.dsn}, {self.track_access.value})"

    # --- connections and transactions -------------------------------------------------------------------
    def _connect(self) -> pymysql.connections.Connection:
        return pymysql.connect(**self.dsn.pymysql_kwargs(), autocommit=False,
                               init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")

    def _pool(self) -> _Pool:
        if self._pool_pid != os.getpid():
            with self._lock:
                if self._pool_pid != os.getpid():
                    # A pool inherited through fork is dropped unclosed: closing would say goodbye on
                    # sockets the parent still uses.
                    wait = self.dsn.connect_timeout + self.dsn.read_timeout
                    self._pool_obj = _Pool(self._connect, self.pool_size, wait)
                    self._pool_pid = os.getpid()
        return self._pool_obj

    def close(self) -> None:
        """Close the idle connections of this process's pool (in-use ones close when released)."""
        if self._pool_obj is not None and self._pool_pid == os.getpid():
            self._pool_obj.clear_idle()

    def _run(self, what: str, work: Callable[[Cursor], T]) -> T:
        """Run `work` in one transaction: commit, or roll back and retry (locks) / reconnect once."""
        lock_attempt = 0
        retried_connection = False
        while True:
            pool = self._pool()
            try:
                conn, reused = pool.acquire()
            except pymysql.err.MySQLError as exc:
                raise DatabaseUnavailable(f"database {self.dsn}: {what}: {_message(exc)}", _code(exc)) from None
            try:
                with conn.cursor() as cur:
                    result = work(cur)
                conn.commit()
            except _Refused as exc:
                self._rollback(pool, conn)
                raise DatabaseError(str(exc)) from None
            except pymysql.err.MySQLError as exc:
                code = _code(exc)
                if code in CONNECTION_ERRORS or isinstance(exc, pymysql.err.InterfaceError):
                    pool.discard(conn)
                    pool.clear_idle()  # after a restart every idle connection is dead too
                    if reused and not retried_connection:
                        retried_connection = True
                        log.info("database connection lost (%s); retrying %s on a new connection",
                                 _message(exc), what)
                        continue
                    raise DatabaseUnavailable(f"database {self.dsn}: {what}: {_message(exc)}", code) from None
                self._rollback(pool, conn)
                if code in LOCK_ERRORS and lock_attempt + 1 < self.lock_retries:
                    lock_attempt += 1
                    log.info("%s: %s; retrying the transaction (attempt %d of %d)", what, _message(exc),
                             lock_attempt + 1, self.lock_retries)
                    time.sleep(0.05 * 2 ** lock_attempt * (0.5 + random.random()))
                    continue
                raise DatabaseError(f"database {self.dsn}: {what}: {_message(exc)}", code) from None
            except BaseException:
                # Anything else (a bug, a gevent Timeout, KeyboardInterrupt) leaves the session in an
                # unknown state: never hand it to the next caller.
                pool.discard(conn)
                raise
            pool.release(conn)
            return result

    @staticmethod
    def _rollback(pool: _Pool, conn: pymysql.connections.Connection) -> None:
        try:
            conn.rollback()
        except pymysql.err.MySQLError:
            pool.discard(conn)
            return
        pool.release(conn)

    def _fetch(self, what: str, sql: str, args: Sequence | None = None) -> list[tuple]:
        """One read statement in its own transaction; all rows."""
        def work(cur: Cursor) -> list[tuple]:
            cur.execute(sql, args)
            return list(cur.fetchall())

        return self._run(what, work)

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(int(self._clock()), dt.UTC).replace(tzinfo=None)

    # --- schema ---------------------------------------------------------------------------------------
    def tables(self) -> list[str]:
        return [row[0] for row in self._fetch("list tables", "SHOW TABLES")]

    def apply_schema(self) -> None:
        """Create reflector.go's tables in an empty database; DatabaseError if it has any table."""
        def work(cur: Cursor) -> None:
            cur.execute("SHOW TABLES")
            existing = [row[0] for row in cur.fetchall()]
            if existing:
                shown = ", ".join(sorted(existing)[:5]) + (", ..." if len(existing) > 5 else "")
                raise _Refused(f"database {self.dsn.database} is not empty ({len(existing)} tables: {shown}); "
                               "refusing to apply the schema")
            for statement in schema_statements():
                cur.execute(statement)

        self._run("apply schema", work)

    def ping(self) -> None:
        self._fetch("ping", "SELECT 1")

    # --- blobs ----------------------------------------------------------------------------------------
    def _upsert_blob(self, cur: Cursor, hash_: str, length: int, stored: bool, now: dt.datetime) -> int:
        # id = LAST_INSERT_ID(id) makes the driver report the existing row's id: one round trip.
        if self.track_access is TrackAccess.BLOBS:
            cur.execute("INSERT INTO blob_ (hash, is_stored, length, last_accessed_at) VALUES (%s,%s,%s,%s) "
                        "ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id), is_stored = (is_stored or "
                        "VALUES(is_stored)), last_accessed_at = VALUES(last_accessed_at)",
                        (hash_, int(stored), length, now))
        else:
            cur.execute("INSERT INTO blob_ (hash, is_stored, length) VALUES (%s,%s,%s) "
                        "ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id), is_stored = (is_stored or "
                        "VALUES(is_stored))", (hash_, int(stored), length))
        return cur.lastrowid

    def add_blob(self, hash_: str, length: int, stored: bool = True) -> int:
        """Record a blob (is_stored only ever goes 0 -> 1 here); returns its row id."""
        if length <= 0:
            raise ValueError(f"blob {hash_}: length must be positive")
        now = self._now()
        return self._run(f"add blob {hash_[:8]}", lambda cur: self._upsert_blob(cur, hash_, length, stored, now))

    def add_sd_blob(self, sd_hash: str, sd_length: int, stream_hash: str,
                    blobs: Iterable[tuple[str, int, int]]) -> int:
        """Record an sd blob, its stream and every content blob `(hash, length, num)` in one transaction.

        Entries without a hash (the terminator) are skipped; content blobs are recorded as not stored
        unless they already are. Returns the stream id.
        """
        content: dict[str, tuple[int, int]] = {}
        for hash_, length, num in blobs:
            if not hash_:
                continue
            if length <= 0:
                raise ValueError(f"sd blob {sd_hash[:8]}: blob {num} has a hash but length {length}")
            content.setdefault(hash_, (length, num))
        rows = sorted(content.items())  # a fixed lock order makes deadlocks between streams rarer
        now = self._now()
        blobs_mode = self.track_access is TrackAccess.BLOBS

        def work(cur: Cursor) -> int:
            sd_id = self._upsert_blob(cur, sd_hash, sd_length, True, now)
            stream_id = self._stream_id(cur, stream_hash, sd_id, now)
            for chunk in _chunks(rows, INSERT_BATCH):
                # Only placeholders in VALUES (...): pymysql then sends one multi-row INSERT per chunk
                # instead of one statement per row.
                if blobs_mode:
                    cur.executemany("INSERT INTO blob_ (hash, is_stored, length, last_accessed_at) "
                                    "VALUES (%s,%s,%s,%s) ON DUPLICATE KEY UPDATE "
                                    "last_accessed_at = VALUES(last_accessed_at)",
                                    [(h, 0, length, now) for h, (length, _) in chunk])
                else:
                    # A duplicate keeps its row as it is (is_stored OR 0 = is_stored).
                    cur.executemany("INSERT IGNORE INTO blob_ (hash, is_stored, length) VALUES (%s,%s,%s)",
                                    [(h, 0, length) for h, (length, _) in chunk])
                cur.execute(f"SELECT hash, id FROM blob_ WHERE hash IN ({_placeholders(len(chunk))})",
                            [h for h, _ in chunk])
                ids = dict(cur.fetchall())
                cur.executemany("INSERT IGNORE INTO stream_blob (stream_id, blob_id, num) VALUES (%s,%s,%s)",
                                [(stream_id, ids[h], num) for h, (_, num) in chunk])
            return stream_id

        return self._run(f"add sd blob {sd_hash[:8]}", work)

    def _stream_id(self, cur: Cursor, stream_hash: str, sd_id: int, now: dt.datetime) -> int:
        if self.track_access is TrackAccess.STREAMS:
            cur.execute("INSERT IGNORE INTO stream (hash, sd_blob_id, last_accessed_at) VALUES (%s,%s,%s)",
                        (stream_hash, sd_id, now))
        else:
            cur.execute("INSERT IGNORE INTO stream (hash, sd_blob_id) VALUES (%s,%s)", (stream_hash, sd_id))
        if cur.lastrowid:
            return cur.lastrowid
        cur.execute("SELECT id FROM stream WHERE sd_blob_id = %s AND hash = %s", (sd_id, stream_hash))
        row = cur.fetchone()
        if row is None:
            raise _Refused(f"stream {stream_hash[:8]} is already recorded with another sd blob")
        if self.track_access is TrackAccess.STREAMS:
            cur.execute("UPDATE stream SET last_accessed_at = %s WHERE id = %s", (now, row[0]))
        return row[0]

    def has_blob(self, hash_: str, touch: bool = False) -> bool:
        return hash_ in self.has_blobs([hash_], touch)

    def has_blobs(self, hashes: Iterable[str], touch: bool = False) -> set[str]:
        """The hashes among `hashes` that are stored; `touch` refreshes access times older than 6 h."""
        hashes = list(dict.fromkeys(hashes))
        present: dict[str, tuple[int, dt.datetime | None]] = {}
        for chunk in _chunks(hashes, BATCH):
            rows = self._fetch("has blobs", "SELECT hash, id, last_accessed_at FROM blob_ WHERE is_stored = 1 "
                               f"AND hash IN ({_placeholders(len(chunk))})", chunk)
            present.update((h, (blob_id, accessed)) for h, blob_id, accessed in rows)
        if touch and present and self.track_access is not TrackAccess.NONE:
            try:
                self._touch([blob_id for blob_id, _ in present.values()],
                            {blob_id: accessed for blob_id, accessed in present.values()})
            except DatabaseError as exc:  # as reflector.go: a failed touch does not fail the read
                log.debug("touching access times failed: %s", exc)
        return set(present)

    def _touch(self, blob_ids: list[int], blob_accessed: dict[int, dt.datetime | None]) -> None:
        now = self._now()
        stale_before = now - TOUCH_AFTER

        def stale(accessed: dt.datetime | None) -> bool:
            return accessed is None or accessed < stale_before

        def work(cur: Cursor) -> None:
            for chunk in _chunks(blob_ids, BATCH):
                if self.track_access is TrackAccess.BLOBS:
                    ids = [i for i in chunk if stale(blob_accessed[i])]
                    table = "blob_"
                else:
                    ph = _placeholders(len(chunk))
                    cur.execute(f"SELECT id, last_accessed_at FROM stream WHERE sd_blob_id IN ({ph}) UNION "
                                "SELECT s.id, s.last_accessed_at FROM stream_blob sb JOIN stream s "
                                f"ON s.id = sb.stream_id WHERE sb.blob_id IN ({ph})", list(chunk) * 2)
                    ids = sorted({i for i, accessed in cur.fetchall() if stale(accessed)})
                    table = "stream"
                if ids:
                    cur.execute(f"UPDATE {table} SET last_accessed_at = %s WHERE id IN ({_placeholders(len(ids))})",
                                [now, *ids])

        self._run("touch", work)

    def delete(self, hash_: str) -> None:
        """Soft delete: mark not stored. Hard delete: drop the blob (and the stream it is the sd blob of)."""
        def work(cur: Cursor) -> None:
            if self.soft_delete:
                cur.execute("UPDATE blob_ SET is_stored = 0 WHERE hash = %s", (hash_,))
                return
            cur.execute("DELETE FROM stream WHERE sd_blob_id = (SELECT id FROM blob_ WHERE hash = %s)", (hash_,))
            cur.execute("DELETE FROM blob_ WHERE hash = %s", (hash_,))

        self._run(f"delete {hash_[:8]}", work)

    def least_recently_accessed_hashes(self, n: int) -> list[str]:
        if self.track_access is not TrackAccess.BLOBS:
            raise DatabaseError("blob access tracking is disabled")
        rows = self._fetch("least recently accessed",
                           "SELECT hash FROM blob_ WHERE is_stored = 1 ORDER BY last_accessed_at LIMIT %s", (n,))
        return [row[0] for row in rows]

    def count(self) -> int:
        sql = "SELECT COUNT(id) FROM blob_" + (" WHERE is_stored = 1" if self.soft_delete else "")
        return self._fetch("count", sql)[0][0]

    def add_blobs(self, items: Iterable[tuple[str, int]], accessed_at: dt.datetime | None = None) -> int:
        """Bulk-record stored blobs `(hash, length)` (populate-db); existing rows are updated, not fatal.

        Each batch of 10,000 is one transaction. Returns the number of blobs given.
        """
        when = accessed_at or self._now()
        total = 0
        batch: list[tuple[str, int, int, dt.datetime]] = []

        def flush(rows: list) -> None:
            self._run("add blobs", lambda cur: cur.executemany(
                "INSERT INTO blob_ (hash, is_stored, length, last_accessed_at) VALUES (%s,%s,%s,%s) "
                "ON DUPLICATE KEY UPDATE is_stored = 1, length = VALUES(length)", rows))

        for hash_, length in items:
            batch.append((hash_, 1, length, when))
            if len(batch) >= BATCH:
                flush(batch)
                total, batch = total + len(batch), []
        if batch:
            flush(batch)
            total += len(batch)
        return total

    # --- streams --------------------------------------------------------------------------------------
    def missing_blobs_for_known_stream(self, sd_hash: str) -> list[str]:
        """Content blobs of the stream of `sd_hash` that are not stored (empty for an unknown stream)."""
        rows = self._fetch("missing blobs", "SELECT b.hash FROM blob_ b JOIN stream_blob sb ON b.id = sb.blob_id "
                           "JOIN stream s ON s.id = sb.stream_id JOIN blob_ sdb ON sdb.id = s.sd_blob_id "
                           "AND sdb.hash = %s WHERE b.is_stored = 0 ORDER BY sb.num", (sd_hash,))
        return [row[0] for row in rows]

    def stream_blob_hashes(self, sd_hashes: Iterable[str]) -> dict[str, list[str]]:
        """sd hash -> its content blob hashes in stream order, for the streams the database knows."""
        sd_hashes = list(dict.fromkeys(sd_hashes))
        result: dict[str, list[str]] = {}
        for chunk in _chunks(sd_hashes, BATCH):
            rows = self._fetch("stream blobs", "SELECT sdb.hash, b.hash FROM blob_ sdb "
                               "JOIN stream s ON s.sd_blob_id = sdb.id JOIN stream_blob sb ON sb.stream_id = s.id "
                               f"JOIN blob_ b ON b.id = sb.blob_id WHERE sdb.hash IN ({_placeholders(len(chunk))}) "
                               "ORDER BY sdb.hash, sb.num", chunk)
            for sd_hash, hash_ in rows:
                result.setdefault(sd_hash, []).append(hash_)
        return result

    # --- blocklist ------------------------------------------------------------------------------------
    def block(self, hash_: str) -> None:
        self._run("block", lambda cur: cur.execute("INSERT IGNORE INTO blocked (hash) VALUES (%s)", (hash_,)))

    def block_many(self, hashes: Iterable[str]) -> None:
        rows = [(h,) for h in sorted(set(hashes))]
        if rows:
            self._run("block", lambda cur: cur.executemany("INSERT IGNORE INTO blocked (hash) VALUES (%s)", rows))

    def get_blocked(self) -> set[str]:
        return {row[0] for row in self._fetch("get blocked", "SELECT hash FROM blocked")}

    # --- ranges (prism start / cluster) ---------------------------------------------------------------
    def get_hash_range(self) -> tuple[str | None, str | None]:
        return tuple(self._fetch("hash range", "SELECT MIN(hash), MAX(hash) FROM blob_")[0])

    def get_stored_hashes_in_range(self, start: str, end: str) -> Iterator[str]:
        """Stored hashes with start <= hash <= end, in order, fetched a page at a time (no open cursor)."""
        after, first = start, True
        while True:
            op = ">=" if first else ">"
            page = [row[0] for row in self._fetch(
                "hashes in range", f"SELECT hash FROM blob_ WHERE hash {op} %s AND hash <= %s AND is_stored = 1 "
                "ORDER BY hash LIMIT %s", (after, end, BATCH))]
            yield from page
            if len(page) < BATCH:
                return
            after, first = page[-1], False


class _Refused(Exception):
    """A refusal decided inside a transaction: rolled back and reported as it is, without retry."""
