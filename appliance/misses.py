"""The misses cache of the HTTP and HTTP/3 servers: recent not-found hashes (reflector.go: 2,000 for 5 min).

Each worker keeps its own misses cache, so a blob that becomes available (an upload through any worker, or
a miss that another worker or the HTTP/3 process fetched from the origin) must stop being "not found"
everywhere at once (issue 15). The processes tell each other through a `StoredBoard`: a small file in the
runtime directory, mapped by every process, of 65,536 counters; whoever stores or fetches a blob bumps
the counter of its hash, and a remembered miss is only trusted while its counter has not moved since the
lookup that found nothing. And when local storage is the origin nothing is remembered at all: its answer
is one stat, and it also sees blobs placed there by other means (a copy, another appliance). Why the
board rather than the alternatives for a remote origin:
- not negative-caching at all would send every repeated miss to the origin (S3, an upstream) again, which
  is what the misses cache is for;
- one shared negative cache (in the cache manager) costs an IPC round trip per remembered miss and is gone
  while the manager restarts;
- the board costs one memory read per remembered miss and one write per stored blob, needs no process
  to be up, and can only err towards a fresh lookup (two hashes sharing a counter).
"""
from __future__ import annotations

import logging
import mmap
import os
import time
import zlib
from collections import OrderedDict

log = logging.getLogger("store")

MISSES_TTL = 300.0
MISSES_MAX = 2000
BOARD_FILE = "stored.board"
BOARD_SLOTS = 65536


class StoredBoard:
    """Counters shared by every process of one appliance: bumped when a blob is stored, read by misses caches."""

    def __init__(self, path: str, slots: int = BOARD_SLOTS):
        self.path, self.slots = path, slots
        size = slots * 8
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:  # every process may get here first: extending is idempotent
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._counters = memoryview(self._map).cast("Q")

    def _slot(self, hash_: str) -> int:
        try:
            return int(hash_[-8:], 16) % self.slots  # a SHA-384 in hex: its digits are already uniform
        except ValueError:
            return zlib.crc32(hash_.encode()) % self.slots

    def stamp(self, hash_: str) -> int:
        """The counter of a hash now (read before a lookup, compared after)."""
        return self._counters[self._slot(hash_)]

    def stored(self, hash_: str) -> None:
        """A blob is now available: every remembered miss of it (or of a hash sharing its counter) is void.

        Two processes bumping at once may lose one increment, never both: the counter still moves.
        """
        slot = self._slot(hash_)
        self._counters[slot] = (self._counters[slot] + 1) & 0xFFFFFFFFFFFFFFFF


_board: StoredBoard | None = None


def share(runtime_dir: str) -> StoredBoard | None:
    """Join the appliance's board (a child at boot); misses caches and stores of this process use it."""
    global _board
    try:
        _board = StoredBoard(os.path.join(runtime_dir, BOARD_FILE))
    except OSError as exc:
        log.error("cannot map %s: %s; this process's remembered misses outlive uploads elsewhere (up to %g s)",
                  os.path.join(runtime_dir, BOARD_FILE), exc, MISSES_TTL)
        _board = None
    return _board


def stored(hash_: str) -> None:
    """Tell every process of the appliance that `hash_` is available (no-op outside an appliance)."""
    if _board is not None:
        _board.stored(hash_)


class MissesCache:
    """Hashes recently not found, each remembered for `ttl` seconds; at most `max_size` of them.

    With a board (the shared one by default, once a process has joined it) a miss is forgotten as soon as
    any process stores or fetches that blob. `stamp()` before the lookup and `add(hash, stamp)` after it,
    so a blob stored while the lookup ran is not remembered as missing.
    """

    def __init__(self, ttl: float = MISSES_TTL, max_size: int = MISSES_MAX, board: StoredBoard | None = None,
                 enabled: bool = True):
        self.ttl, self.max_size = ttl, max_size
        self.enabled = enabled  # False: remember nothing (the store's own answer is cheap and authoritative)
        self.board = board if board is not None else _board
        self._expiry: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def __contains__(self, hash_: str) -> bool:
        entry = self._expiry.get(hash_)
        if entry is None:
            return False
        expiry, stamp = entry
        if expiry > time.monotonic() and (self.board is None or self.board.stamp(hash_) == stamp):
            return True
        del self._expiry[hash_]
        return False

    def stamp(self, hash_: str) -> int:
        """Take before looking the blob up; pass to add() if it was not found."""
        return self.board.stamp(hash_) if self.board is not None else 0

    def add(self, hash_: str, stamp: int | None = None) -> None:
        if not self.enabled:
            return
        self._expiry[hash_] = (time.monotonic() + self.ttl, self.stamp(hash_) if stamp is None else stamp)
        self._expiry.move_to_end(hash_)
        while len(self._expiry) > self.max_size:
            self._expiry.popitem(last=False)

    def discard(self, hash_: str) -> None:
        self._expiry.pop(hash_, None)
