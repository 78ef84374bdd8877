"""Clusters of nodes sharing one MySQL database: membership, hash-range math, and the announced share.

reflector.go joins its nodes with serf (gossip on port 17946). Here the nodes find each other through
the database every node already depends on (spec §8.6 allows any membership mechanism yielding
(index, total)):

- Membership: each node keeps a row in `cluster_member` fresh with a heartbeat (every `heartbeat`
  seconds). A member is live while its heartbeat is younger than three heartbeats, compared on the
  database server's clock (UTC_TIMESTAMP), never on a node's. Every node reads the live names, sorts
  them, and after a debounce (reflector.go: 1 s) reports (its 1-based index, the live count). A clean
  stop deletes the row, so the others learn of a leave at their next read; a crash is noticed when the
  heartbeat times out. Two live nodes cannot share a name: each process registers with a random
  instance token, and a name held by a live member is refused.
- Hash ranges: `--hash-range START-END` is reflector.go's flag, but its bounds are hex *prefixes*:
  START is padded on the right with 0s and END with fs, so `0-7f` is the lower half of the hash space
  and `0-ffff` all of it (reflector.go pads on the left, which makes `0-ffff` a sliver at the bottom).
  interval(range, n, total) cuts a range into `total` consecutive parts whose sizes differ by at most
  one, the n-th (1-based) starting at start + floor((n-1)·size/total). (reflector.go adds
  (rem·(n-1) mod total) instead, which can put an interval's start after its end when the range has
  fewer values than members.)
- The share: a node with (index, total) owns interval(range, index, total), where range is the
  configured hash range, or else the database's MIN(hash)..MAX(hash). Unlike reflector.go, a configured
  range is divided among the members too, and hashes a node no longer owns are withdrawn from the DHT.
  Without a configured range the first member also owns everything below MIN and the last everything
  above MAX, so blobs stored after the range was read have an owner. The share is streamed from the
  database (every stored hash in it, as reflector.go does) at each change and every `rescan` seconds.

Only stdlib threading and pymysql: works from plain threads and under gevent's monkey-patching.
"""
from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pymysql

from appliance import dsn as dsn_mod
from appliance.blob import is_valid_hash
from appliance.lbry.claims.base58 import ALPHABET

log = logging.getLogger("cluster")

HASH_BITS = 384
SPACE_END = (1 << HASH_BITS) - 1
HEX_DIGITS = HASH_BITS // 4
MISSED_HEARTBEATS = 3  # a member whose heartbeat is older than this many intervals is dead
DEBOUNCE = 1.0  # reflector.go's window between a membership event and the change hook
FORGET_AFTER_DAYS = 1  # rows of members dead this long are deleted when a node registers
SCAN_PAGE = 1000  # hashes announced per batch while streaming the share
STATUS_MEMBERS = 64  # member names shown in the DHT process's status

_HEX = re.compile(r"[0-9a-fA-F]{1,96}")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS cluster_member (
  cluster VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  name VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  instance CHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  address VARCHAR(255) NOT NULL DEFAULT '',
  joined_at DATETIME(6) NOT NULL,
  heartbeat_at DATETIME(6) NOT NULL,
  PRIMARY KEY (cluster, name),
  KEY cluster_heartbeat (cluster, heartbeat_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""


# --- hash ranges -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HashRange:
    """Hashes from `start` to `end` inclusive, as integers; empty when start > end."""

    start: int
    end: int

    @property
    def empty(self) -> bool:
        return self.start > self.end

    def bounds(self) -> tuple[str, str]:
        """(start, end) as 96-digit hex, the form the database compares."""
        return f"{self.start:0{HEX_DIGITS}x}", f"{self.end:0{HEX_DIGITS}x}"

    def __contains__(self, key: object) -> bool:
        """A 48-byte key or a hex hash inside the range."""
        if isinstance(key, str):
            value = int(key, 16)
        elif isinstance(key, bytes | bytearray):
            value = int.from_bytes(key, "big")
        else:
            return False
        return self.start <= value <= self.end

    def __str__(self) -> str:
        if self.empty:
            return "(empty)"
        start, end = self.bounds()
        return f"{start[:8]}...-{end[:8]}..."


WHOLE_SPACE = HashRange(0, SPACE_END)


def parse_hash_range(text: str) -> HashRange:
    """`START-END` in hex prefixes (START padded with 0s, END with fs); ValueError with one line."""
    parts = text.strip().split("-")
    if len(parts) != 2 or not all(_HEX.fullmatch(part) for part in parts):
        raise ValueError(f"invalid hash range {text!r}: expected START-END, each 1 to {HEX_DIGITS} hex digits "
                         "(e.g. 0-7f for the lower half)")
    start = int(parts[0].lower().ljust(HEX_DIGITS, "0"), 16)
    end = int(parts[1].lower().ljust(HEX_DIGITS, "f"), 16)
    if start > end:
        raise ValueError(f"invalid hash range {text!r}: START is after END")
    return HashRange(start, end)


def interval(whole: HashRange, n: int, total: int) -> HashRange:
    """The n-th (1-based) of `total` consecutive, near-equal parts of `whole` (empty when it has too few values)."""
    if total < 1 or not 1 <= n <= total:
        raise ValueError(f"invalid interval {n} of {total}")
    count = whole.end - whole.start + 1
    return HashRange(whole.start + (n - 1) * count // total, whole.start + n * count // total - 1)


def share_range(index: int, total: int, configured: HashRange | None = None,
                bounds: tuple[str | None, str | None] | None = None) -> HashRange | None:
    """The hashes member `index` of `total` owns; None when it owns none (not a member, nothing to divide).

    `configured` is the --hash-range; otherwise `bounds` is the database's (MIN(hash), MAX(hash)).
    """
    if index < 1 or total < index:
        return None
    if configured is not None:
        return interval(configured, index, total)
    if bounds is None or bounds[0] is None or bounds[1] is None:
        return None
    part = interval(HashRange(int(bounds[0], 16), int(bounds[1], 16)), index, total)
    # MIN..MAX only places the inner boundaries: the ends reach the ends of the hash space, so a hash
    # stored after MIN and MAX were read still falls in somebody's share.
    return HashRange(0 if index == 1 else part.start, SPACE_END if index == total else part.end)


# --- names and settings -------------------------------------------------------------------------------

def random_node_name() -> str:
    """12 random base58 characters, as reflector.go names its serf nodes."""
    return "".join(secrets.choice(ALPHABET) for _ in range(12))


def check_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    return value


@dataclass(frozen=True)
class ClusterSettings:
    """The validated cluster settings of a config (ValueError with one line from from_config)."""

    dsn: dsn_mod.DSN
    cluster: str
    name: str
    heartbeat: float
    rescan: float
    hash_range: HashRange | None

    @classmethod
    def from_config(cls, config) -> ClusterSettings:
        if not config.db_conn:
            raise ValueError("db required in conf")
        dsn = dsn_mod.parse(config.db_conn)
        if not config.cluster_heartbeat > 0:
            raise ValueError(f"invalid cluster_heartbeat {config.cluster_heartbeat}: must be more than 0 seconds")
        if config.cluster_rescan < 0:
            raise ValueError(f"invalid cluster_rescan {config.cluster_rescan}: must be 0 (off) or more")
        hash_range = parse_hash_range(config.hash_range) if config.hash_range else None
        name = check_name(config.node_name, "node name") if config.node_name else random_node_name()
        return cls(dsn, check_name(config.cluster_name, "cluster name"), name, float(config.cluster_heartbeat),
                   float(config.cluster_rescan), hash_range)


# --- membership ---------------------------------------------------------------------------------------

class ClusterError(Exception):
    """A membership operation failed; one line for the operator."""


class ClusterUnavailable(ClusterError):
    """The database could not be reached (or answered an error)."""


class NameInUse(ClusterError):
    """Another live member holds this node's name."""


@dataclass(frozen=True)
class View:
    """This node's place in the cluster: its 1-based index among the sorted live names (0: not a member)."""

    index: int
    total: int
    members: tuple[str, ...]


class _Session:
    """One autocommit connection, reconnected after any error (membership runs one statement at a time)."""

    def __init__(self, dsn: dsn_mod.DSN):
        self.dsn = dsn
        self._conn: pymysql.connections.Connection | None = None

    def run(self, what: str, work: Callable[[pymysql.cursors.Cursor], object]) -> object:
        try:
            if self._conn is None:
                self._conn = pymysql.connect(**self.dsn.pymysql_kwargs(), autocommit=True)
            with self._conn.cursor() as cur:
                return work(cur)
        except pymysql.err.MySQLError as exc:
            self.close()
            detail = f"({exc.args[0]}) {exc.args[1]}" if len(exc.args) >= 2 else (str(exc) or type(exc).__name__)
            raise ClusterUnavailable(f"database {self.dsn}: {what}: {detail}") from None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # a dead connection: closing is best effort
                pass
            self._conn = None


def ensure_schema(dsn: dsn_mod.DSN | str) -> None:
    """Create the membership table if it does not exist (ClusterUnavailable when the database fails)."""
    session = _Session(dsn if isinstance(dsn, dsn_mod.DSN) else dsn_mod.parse(dsn))
    try:
        session.run("create the cluster_member table", lambda cur: cur.execute(SCHEMA))
    finally:
        session.close()


class Membership:
    """This node's row in `cluster_member` and its view of the live members.

    start() registers (unless join=False: the thread then registers as soon as the database answers)
    and runs a thread that heartbeats, reads the live members and calls `on_change(view)` once the
    membership has been stable for `debounce` seconds and the view differs from the last one reported.
    stop() ends the thread and, with leave=True, deletes the row.
    """

    def __init__(self, dsn: dsn_mod.DSN | str, cluster: str, name: str | None = None, *, heartbeat: float = 2.0,
                 debounce: float = DEBOUNCE, on_change: Callable[[View], None] | None = None, address: str = ""):
        dsn = dsn if isinstance(dsn, dsn_mod.DSN) else dsn_mod.parse(dsn)
        self.cluster = check_name(cluster, "cluster name")
        self.name = check_name(name, "node name") if name else random_node_name()
        self.heartbeat = heartbeat
        self.timeout = MISSED_HEARTBEATS * heartbeat
        self.debounce = debounce
        self.on_change = on_change
        self.address = address[:255]
        self.instance = secrets.token_hex(8)
        # A statement may take at most as long as a member may stay silent.
        limit = max(1.0, self.timeout)
        self._session = _Session(dsn.with_timeouts(connect=min(dsn.connect_timeout, limit), read=limit, write=limit))
        self._session_lock = threading.Lock()
        self._registered = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._schema_ready = False
        self.view: View | None = None
        self._unavailable_logged = False
        self._clash_logged = False

    # -- database statements ----------------------------------------------------------------------------
    def _run(self, what: str, work: Callable) -> object:
        with self._session_lock:
            if not self._schema_ready:
                self._session.run("create the cluster_member table", lambda cur: cur.execute(SCHEMA))
                self._schema_ready = True
            return self._session.run(what, work)

    def _timeout_us(self) -> int:
        return int(self.timeout * 1_000_000)

    def _try_register(self) -> str | None:
        """Take our row; None on success, else the address of the live member that holds our name."""
        def work(cur) -> str | None:
            cur.execute("START TRANSACTION")
            try:
                cur.execute("SELECT instance, address, heartbeat_at > UTC_TIMESTAMP(6) - INTERVAL %s MICROSECOND "
                            "FROM cluster_member WHERE cluster = %s AND name = %s FOR UPDATE",
                            (self._timeout_us(), self.cluster, self.name))
                row = cur.fetchone()
                if row is not None and row[2] and row[0] != self.instance:
                    cur.execute("ROLLBACK")
                    return row[1] or "unknown address"
                cur.execute("INSERT INTO cluster_member (cluster, name, instance, address, joined_at, heartbeat_at) "
                            "VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE "
                            "instance = VALUES(instance), address = VALUES(address), joined_at = VALUES(joined_at), "
                            "heartbeat_at = VALUES(heartbeat_at)",
                            (self.cluster, self.name, self.instance, self.address))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("DELETE FROM cluster_member WHERE cluster = %s AND heartbeat_at < UTC_TIMESTAMP(6) - "
                        "INTERVAL %s DAY", (self.cluster, FORGET_AFTER_DAYS))
            return None

        holder = self._run("register", work)
        self._registered = holder is None
        return holder

    def _beat(self) -> bool:
        """Refresh our heartbeat; False when our row is gone or was taken over."""
        def work(cur) -> int:
            return cur.execute("UPDATE cluster_member SET heartbeat_at = UTC_TIMESTAMP(6) "
                               "WHERE cluster = %s AND name = %s AND instance = %s",
                               (self.cluster, self.name, self.instance))

        return bool(self._run("heartbeat", work))

    def live_members(self) -> list[str]:
        """The names of the live members, sorted (byte order, as the index is defined)."""
        def work(cur) -> list[str]:
            cur.execute("SELECT name FROM cluster_member WHERE cluster = %s AND "
                        "heartbeat_at > UTC_TIMESTAMP(6) - INTERVAL %s MICROSECOND",
                        (self.cluster, self._timeout_us()))
            return sorted(row[0] for row in cur.fetchall())

        return self._run("read members", work)

    def _leave(self) -> None:
        self._run("leave", lambda cur: cur.execute(
            "DELETE FROM cluster_member WHERE cluster = %s AND name = %s AND instance = %s",
            (self.cluster, self.name, self.instance)))
        self._registered = False

    # -- lifecycle --------------------------------------------------------------------------------------
    def join(self) -> None:
        """Register now. A name held by a live member is waited on for one timeout (it may be our own
        predecessor that crashed a moment ago), then NameInUse; ClusterUnavailable if the database fails."""
        deadline = time.monotonic() + self.timeout + self.heartbeat
        while True:
            holder = self._try_register()
            if holder is None:
                log.info("joined cluster %s as %s", self.cluster, self.name)
                return
            if time.monotonic() > deadline or self._stop.is_set():
                raise NameInUse(f"node name {self.name} is used by a live member of cluster {self.cluster} "
                                f"({holder})")
            time.sleep(min(self.heartbeat, 0.5))

    def start(self, join: bool = True) -> None:
        if join:
            self.join()
        self._thread = threading.Thread(target=self._loop, name="cluster-membership", daemon=True)
        self._thread.start()

    def stop(self, leave: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
        if leave and self._registered:
            try:
                self._leave()
                log.info("left cluster %s", self.cluster)
            except ClusterError as exc:
                log.warning("could not leave cluster %s cleanly (the others notice in %.0fs): %s",
                            self.cluster, self.timeout, exc)
        with self._session_lock:
            self._session.close()

    def _loop(self) -> None:
        seen: list[str] | None = None  # the members of the last read
        report_at: float | None = None  # when a change has been stable long enough to report
        next_beat = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_beat:
                    next_beat = now + self.heartbeat
                    self._keep_registered()
                members = self.live_members()
            except ClusterError as exc:
                if not self._unavailable_logged:
                    log.warning("cluster %s: %s; keeping the last membership and retrying", self.cluster, exc)
                    self._unavailable_logged = True
                members = None
            else:
                if self._unavailable_logged:
                    log.info("cluster %s: the database answers again", self.cluster)
                    self._unavailable_logged = False
            if members is not None and members != seen:
                seen = members
                report_at = time.monotonic() + self.debounce
            if report_at is not None and time.monotonic() >= report_at and seen is not None:
                report_at = None
                self._report(seen)
            wake = next_beat if report_at is None else min(next_beat, report_at)
            self._stop.wait(max(0.0, wake - time.monotonic()))

    def _keep_registered(self) -> None:
        if self._registered and self._beat():
            return
        if self._registered:
            log.warning("cluster %s: our row (%s) vanished or was taken over; registering again", self.cluster,
                        self.name)
        holder = self._try_register()
        if holder is not None and not self._clash_logged:
            log.error("cluster %s: node name %s is used by another live member (%s); not taking part",
                      self.cluster, self.name, holder)
        self._clash_logged = holder is not None

    def _report(self, members: list[str]) -> None:
        index = members.index(self.name) + 1 if self._registered and self.name in members else 0
        view = View(index, len(members), tuple(members))
        if view == self.view:
            return
        self.view = view
        log.info("cluster %s: %s is %d of %d", self.cluster, self.name, index, len(members))
        if self.on_change is not None:
            try:
                self.on_change(view)
            except Exception:  # a failing hook must not stop the heartbeat
                log.exception("cluster change hook failed")


# --- the announced share ------------------------------------------------------------------------------

class ShareKeeper:
    """Keeps the DHT announcing exactly this node's share of the stored hashes.

    update(view) (the membership hook) and a timer every `rescan` seconds recompute the share; a
    background thread withdraws held hashes outside it at once, then streams the stored hashes inside
    it from the database (`get_hash_range`, `get_stored_hashes_in_range`) and announces the new ones. A
    newer view interrupts a scan in progress. offer(hashes) announces freshly stored hashes that fall in
    the current share. A database error is logged and the scan retried after `retry` seconds.
    """

    def __init__(self, db, announce: Callable[[list[str]], object], withdraw: Callable[[list[str]], object],
                 hash_range: HashRange | None = None, rescan: float = 600.0, retry: float = 5.0):
        self.db = db
        self.announce = announce
        self.withdraw = withdraw
        self.hash_range = hash_range
        self.rescan = rescan
        self.retry = retry
        self._lock = threading.Lock()
        self._held: set[bytes] = set()
        self._share: HashRange | None = None
        self._view: View | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cluster-share", daemon=True)
        self.scans = 0  # completed scans

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def update(self, view: View) -> None:
        """A new membership view: recompute the share now (a scan in progress stops at its next page)."""
        with self._lock:
            if self._view is not None and (self._view.index, self._view.total) == (view.index, view.total):
                self._view = view
                return
            self._view = view
        self._wake.set()

    def offer(self, hashes: Iterable[str]) -> list[str]:
        """Announce the given stored hashes that are in the share and not held yet; returns them."""
        new = []
        with self._lock:
            share = self._share
            if share is None:
                return []
            for hash_ in hashes:
                if not is_valid_hash(hash_):
                    continue
                key = bytes.fromhex(hash_)
                if key in share and key not in self._held:
                    self._held.add(key)
                    new.append(hash_)
        if new:
            self.announce(new)
        return new

    def held(self) -> set[str]:
        with self._lock:
            return {key.hex() for key in self._held}

    def status(self) -> dict:
        with self._lock:
            view, share, held = self._view, self._share, len(self._held)
        return {"index": view.index if view else 0, "total": view.total if view else 0,
                "share": list(share.bounds()) if share is not None and not share.empty else None,
                "held": held, "scans": self.scans}

    # -- the scanning thread ----------------------------------------------------------------------------
    def _loop(self) -> None:
        wait: float | None = None
        while True:
            self._wake.wait(wait)
            if self._stop.is_set():
                return
            self._wake.clear()
            with self._lock:
                view = self._view
            if view is None:
                wait = None
                continue
            try:
                complete = self._scan(view)
            except Exception as exc:  # the database (DatabaseError) or anything unexpected: retry later
                log.warning("cluster share: %s; retrying in %.0fs", exc, self.retry)
                wait = self.retry
                continue
            if complete:
                self.scans += 1
            wait = (self.rescan or None) if complete else 0

    def _interrupted(self) -> bool:
        return self._wake.is_set() or self._stop.is_set()

    def _scan(self, view: View) -> bool:
        """Apply `view`'s share; False when a newer view (or stop) interrupted it."""
        bounds = None if self.hash_range is not None or view.index < 1 else self.db.get_hash_range()
        share = share_range(view.index, view.total, self.hash_range, bounds)
        with self._lock:
            changed = share != self._share
            self._share = share
            gone = [key for key in self._held if share is None or key not in share]
            self._held.difference_update(gone)
        if gone:
            self.withdraw([key.hex() for key in gone])
        if changed:
            log.info("cluster share: %d of %d owns %s (%d hashes withdrawn)", view.index, view.total,
                     share if share is not None else "nothing", len(gone))
        if share is None or share.empty:
            return True
        start, end = share.bounds()
        page: list[str] = []
        announced = 0
        for hash_ in self.db.get_stored_hashes_in_range(start, end):
            page.append(hash_)
            if len(page) >= SCAN_PAGE:
                if self._interrupted():
                    return False
                announced += len(self.offer(page))
                page = []
        if self._interrupted():
            return False
        announced += len(self.offer(page))
        if announced:
            log.info("cluster share: announcing %d more hashes (%d held)", announced, len(self._held))
        return True


# --- both, for the DHT process ------------------------------------------------------------------------

class ClusterNode:
    """Membership plus the share keeper, as the DHT process runs them in cluster mode."""

    def __init__(self, settings: ClusterSettings, db, announce: Callable[[list[str]], object],
                 withdraw: Callable[[list[str]], object], address: str = ""):
        self.settings = settings
        self.keeper = ShareKeeper(db, announce, withdraw, settings.hash_range, settings.rescan,
                                  retry=max(settings.heartbeat, 1.0))
        self.membership = Membership(settings.dsn, settings.cluster, settings.name, heartbeat=settings.heartbeat,
                                     on_change=self.keeper.update, address=address)

    def start(self) -> None:
        """Join (NameInUse is raised; an unreachable database is retried in the background) and run."""
        self.keeper.start()
        try:
            self.membership.join()
        except ClusterUnavailable as exc:
            log.warning("cluster %s: %s; joining as soon as the database answers", self.settings.cluster, exc)
        except NameInUse:
            self.keeper.stop()
            raise
        self.membership.start(join=False)

    def stop(self) -> None:
        self.membership.stop(leave=True)
        self.keeper.stop()

    def offer(self, hashes: Iterable[str]) -> list[str]:
        return self.keeper.offer(hashes)

    def status(self) -> dict:
        view = self.membership.view
        members = list(view.members) if view else []
        # The status travels in a fixed-size scoreboard slot: a long member list is cut short.
        return {"cluster": self.settings.cluster, "node": self.membership.name, "members": members[:STATUS_MEMBERS],
                **self.keeper.status()}
