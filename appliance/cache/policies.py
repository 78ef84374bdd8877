"""Eviction policies over (blob hash -> size in bytes) with a byte capacity: lru, lfu (LFUDA), arc, simple.

Every policy offers the same API (the cache manager does not care which one it holds):
  add(hash, size) -> hashes to delete   a blob was written into the cache (re-adding one is a use)
  adopt(hash, size) -> hashes to delete a file found on disk; it goes to the eviction end, evicts nothing
  touch(hash), remove(hash)             a read; a blob that is gone (deleted, or missing on disk)
  pin(hash), unpin(hash)                blobs being written: never chosen for eviction
  hash in policy, len(policy), used_bytes, capacity, evictions

Invariant: used_bytes <= capacity after every add and adopt. A blob that alone exceeds the capacity, or
that cannot fit because everything else is pinned, is refused: add returns its own hash with the others.
The caller deletes the file of every returned hash.

Persistence (appliance.cache.index) works on changes: every entry whose state changed since the last
drain_changes() is returned as a row (hash, size, lst, rank, freq, prio) or as a deletion. `rank` orders
the entries of one list from the eviction end (low) to the kept end (high). Policies that keep their order
only implicitly (an OrderedDict) get ranks from the order of the changes: entries only ever move to the
kept end (or, when adopted, to the eviction end), so every entry changed since the last drain is newer than
every unchanged one; draining hands out increasing ranks to those, and decreasing ones below the lowest
rank to adopted entries. That keeps the order exact on disk without storing a rank per entry in memory.
"""
from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Iterator

# How a changed entry was placed: at the kept end (HOT) or at the eviction end (COLD, adopted files).
HOT, COLD = 0, 1

Row = tuple[str, int, int, int, int, int]  # hash, size, lst, rank, freq, prio
State = tuple[int, int, int, int, int | None]  # size, lst, freq, prio, rank (None: from the change order)


class Policy(ABC):
    """Byte-capacity eviction policy; see the module docstring for the contract."""

    name = ""

    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError("cache capacity must be more than 0 bytes")
        self.capacity = capacity
        self.used_bytes = 0
        self.evictions = 0
        self._pinned: set[str] = set()
        self._changed: dict[str, int] = {}  # hash -> HOT/COLD, in the order of the last change
        self._top_rank = 0
        self._bottom_rank = 0

    # --- the API ---------------------------------------------------------------------------------------

    def add(self, hash_: str, size: int) -> list[str]:
        """Record a blob written into the cache; returns the hashes whose files must be deleted."""
        _check_size(size)
        if size > self.capacity:
            self.remove(hash_)
            return [hash_]
        if hash_ in self:
            self._set_size(hash_, size)
            self._use(hash_)
        else:
            self._insert(hash_, size, cold=False)
        return self._make_room(hash_)

    def adopt(self, hash_: str, size: int) -> list[str]:
        """Index a file found on disk, at the eviction end; refused ([hash]) when it does not fit."""
        _check_size(size)
        if hash_ in self:
            return []
        if self.used_bytes + size > self.capacity:
            return [hash_]
        self._insert(hash_, size, cold=True)
        return []

    def touch(self, hash_: str) -> bool:
        """Record a use; False when the hash is not cached."""
        if hash_ not in self:
            return False
        self._use(hash_)
        return True

    def remove(self, hash_: str) -> bool:
        """Forget a blob (deleted on purpose or found missing); no eviction is counted."""
        return self._discard(hash_)

    def pin(self, hash_: str) -> None:
        """Protect a hash from eviction while it is being written (idempotent)."""
        self._pinned.add(hash_)

    def unpin(self, hash_: str) -> None:
        self._pinned.discard(hash_)

    def set_capacity(self, capacity: int) -> list[str]:
        """Change the byte capacity (the filesystem holds less, or more again); returns the hashes evicted."""
        if capacity <= 0:
            raise ValueError("cache capacity must be more than 0 bytes")
        self.capacity = capacity
        self._restore_meta(self.meta())  # policy-wide values bounded by the capacity (ARC's target) follow it
        evicted = []
        while self.used_bytes > capacity:
            victim = self._victim(None)
            if victim is None:  # only pinned blobs are left: they are being written, their writer decides
                break
            self._evict(victim)
            self.evictions += 1
            evicted.append(victim)
        return evicted

    @property
    def pinned(self) -> frozenset[str]:
        return frozenset(self._pinned)

    @abstractmethod
    def __contains__(self, hash_: object) -> bool: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __iter__(self) -> Iterator[str]:
        """The cached hashes (not ghosts), from the eviction end."""

    def size_of(self, hash_: str) -> int | None:
        state = self._state(hash_)
        return state[0] if state and hash_ in self else None

    # --- persistence -----------------------------------------------------------------------------------

    def load(self, rows: Iterable[Row], meta: dict[str, float]) -> list[str]:
        """Restore a saved state (rows in rank order); returns the hashes over capacity, already dropped."""
        lowest = highest = None
        for row in rows:
            self._restore(row)
            if lowest is None:
                lowest = row[3]
            highest = row[3]
        if lowest is not None:
            self._top_rank, self._bottom_rank = highest, lowest
        self._restore_meta(meta)
        self._changed.clear()
        self._loaded()
        overflow = []
        while self.used_bytes > self.capacity:
            victim = self._victim(None)
            if victim is None:
                break
            self._discard(victim)
            overflow.append(victim)
        return overflow

    def drain_changes(self) -> tuple[list[Row], list[str]]:
        """Rows to upsert and hashes to delete since the last drain (see the module docstring)."""
        upserts: list[Row] = []
        deletes: list[str] = []
        for hash_, placed in self._changed.items():
            state = self._state(hash_)
            if state is None:
                deletes.append(hash_)
                continue
            size, lst, freq, prio, rank = state
            if rank is None:
                if placed == COLD:
                    self._bottom_rank -= 1
                    rank = self._bottom_rank
                else:
                    self._top_rank += 1
                    rank = self._top_rank
            upserts.append((hash_, size, lst, rank, freq, prio))
        self._changed.clear()
        return upserts, deletes

    def meta(self) -> dict[str, float]:
        """Policy-wide values saved beside the rows (LFUDA's age, ARC's target)."""
        return {}

    def _restore_meta(self, meta: dict[str, float]) -> None:
        """Counterpart of meta()."""
        return None

    def _loaded(self) -> None:
        """Build what is derived from the restored entries (changes made here are saved)."""
        return None

    # --- what each policy implements -------------------------------------------------------------------

    @abstractmethod
    def _insert(self, hash_: str, size: int, cold: bool) -> None: ...

    @abstractmethod
    def _use(self, hash_: str) -> None: ...

    @abstractmethod
    def _set_size(self, hash_: str, size: int) -> None: ...

    @abstractmethod
    def _victim(self, protect: str | None) -> str | None:
        """The next hash to evict, never a pinned one nor `protect`; None when there is none."""

    @abstractmethod
    def _discard(self, hash_: str) -> bool:
        """Drop an entry (resident or ghost) without counting an eviction."""

    def _evict(self, hash_: str) -> None:
        self._discard(hash_)

    @abstractmethod
    def _state(self, hash_: str) -> State | None:
        """What is saved for an entry, or None when the entry is gone."""

    @abstractmethod
    def _restore(self, row: Row) -> None: ...

    # --- shared machinery ------------------------------------------------------------------------------

    def _changed_entry(self, hash_: str, placed: int = HOT) -> None:
        self._changed.pop(hash_, None)
        self._changed[hash_] = placed

    def _make_room(self, protect: str) -> list[str]:
        evicted = []
        while self.used_bytes > self.capacity:
            victim = self._victim(protect)
            if victim is None:  # everything else is pinned: refuse the newcomer instead
                self._discard(protect)
                evicted.append(protect)
                break
            self._evict(victim)
            self.evictions += 1
            evicted.append(victim)
        return evicted

    def _first_unpinned(self, keys: Iterable[str], protect: str | None) -> str | None:
        for key in keys:
            if key != protect and key not in self._pinned:
                return key
        return None


def _check_size(size: int) -> None:
    if size <= 0:
        raise ValueError(f"blob size must be more than 0 bytes, not {size}")


class _OrderedPolicy(Policy):
    """One OrderedDict from the eviction end to the kept end; subclasses decide what a use does."""

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self._entries: OrderedDict[str, int] = OrderedDict()

    def __contains__(self, hash_: object) -> bool:
        return hash_ in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def _insert(self, hash_: str, size: int, cold: bool) -> None:
        self._entries[hash_] = size
        if cold:
            self._entries.move_to_end(hash_, last=False)
        self.used_bytes += size
        self._changed_entry(hash_, COLD if cold else HOT)

    def _set_size(self, hash_: str, size: int) -> None:
        self.used_bytes += size - self._entries[hash_]
        self._entries[hash_] = size
        self._entries.move_to_end(hash_)  # a rewritten blob is a new insertion (and keeps ranks exact)
        self._changed_entry(hash_)

    def _victim(self, protect: str | None) -> str | None:
        return self._first_unpinned(self._entries, protect)

    def _discard(self, hash_: str) -> bool:
        size = self._entries.pop(hash_, None)
        if size is None:
            return False
        self.used_bytes -= size
        self._changed_entry(hash_)
        return True

    def _state(self, hash_: str) -> State | None:
        size = self._entries.get(hash_)
        return None if size is None else (size, 0, 0, 0, None)

    def _restore(self, row: Row) -> None:
        self._entries[row[0]] = row[1]
        self.used_bytes += row[1]


class LRUPolicy(_OrderedPolicy):
    """Least recently used: a use moves the blob to the kept end."""

    name = "lru"

    def _use(self, hash_: str) -> None:
        self._entries.move_to_end(hash_)
        self._changed_entry(hash_)


class SimplePolicy(_OrderedPolicy):
    """reflector.go's "simple": uses do not matter; the oldest inserted blob leaves first (FIFO)."""

    name = "simple"

    def _use(self, hash_: str) -> None:
        pass


class LFUDAPolicy(Policy):
    """LFU with dynamic aging: priority = age + uses; evicting raises the age to the victim's priority.

    A newcomer starts at age + 1, so a blob that was popular long ago but is no longer used is eventually
    overtaken by newer blobs and leaves, which plain LFU never allows. Ties go to the least recent. Uses
    push a new heap item; stale items are skipped when they surface and the heap is rebuilt when more than
    half of it is stale.
    """

    name = "lfu"

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self._entries: dict[str, list[int]] = {}  # hash -> [prio, seq, freq, size]
        self._heap: list[tuple[int, int, str]] = []  # (prio, seq, hash), lazily invalidated
        self._age = 0
        self._seq_high = 0
        self._seq_low = 0

    def __contains__(self, hash_: object) -> bool:
        return hash_ in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries, key=lambda h: self._entries[h][:2]))

    def frequency(self, hash_: str) -> int:
        """Uses counted for a cached blob (0 when adopted and never read)."""
        return self._entries[hash_][2]

    def _insert(self, hash_: str, size: int, cold: bool) -> None:
        if cold:
            self._seq_low -= 1
            entry = [self._age, self._seq_low, 0, size]
        else:
            self._seq_high += 1
            entry = [self._age + 1, self._seq_high, 1, size]
        self._entries[hash_] = entry
        self.used_bytes += size
        self._push(hash_, entry)
        self._changed_entry(hash_)

    def _use(self, hash_: str) -> None:
        entry = self._entries[hash_]
        self._seq_high += 1
        entry[2] += 1
        entry[0] = self._age + entry[2]
        entry[1] = self._seq_high
        self._push(hash_, entry)
        self._changed_entry(hash_)

    def _set_size(self, hash_: str, size: int) -> None:
        entry = self._entries[hash_]
        self.used_bytes += size - entry[3]
        entry[3] = size
        self._changed_entry(hash_)

    def _push(self, hash_: str, entry: list[int]) -> None:
        heapq.heappush(self._heap, (entry[0], entry[1], hash_))
        if len(self._heap) > 2 * len(self._entries) + 1024:
            self._heap = [(e[0], e[1], h) for h, e in self._entries.items()]
            heapq.heapify(self._heap)

    def _victim(self, protect: str | None) -> str | None:
        skipped = []
        victim = None
        while self._heap:
            prio, seq, hash_ = self._heap[0]
            entry = self._entries.get(hash_)
            if entry is None or entry[0] != prio or entry[1] != seq:
                heapq.heappop(self._heap)  # stale
                continue
            if hash_ == protect or hash_ in self._pinned:
                skipped.append(heapq.heappop(self._heap))
                continue
            victim = hash_
            break
        for item in skipped:
            heapq.heappush(self._heap, item)
        return victim

    def _evict(self, hash_: str) -> None:
        self._age = self._entries[hash_][0]
        self._discard(hash_)

    def _discard(self, hash_: str) -> bool:
        entry = self._entries.pop(hash_, None)
        if entry is None:
            return False
        self.used_bytes -= entry[3]
        self._changed_entry(hash_)
        return True

    def _state(self, hash_: str) -> State | None:
        entry = self._entries.get(hash_)
        return None if entry is None else (entry[3], 0, entry[2], entry[0], entry[1])

    def _restore(self, row: Row) -> None:
        hash_, size, _lst, rank, freq, prio = row
        self._entries[hash_] = [prio, rank, freq, size]
        self.used_bytes += size

    def _loaded(self) -> None:
        self._heap = [(e[0], e[1], h) for h, e in self._entries.items()]
        heapq.heapify(self._heap)
        self._seq_high, self._seq_low = max(self._top_rank, 0), min(self._bottom_rank, 0)

    def meta(self) -> dict[str, float]:
        return {"age": self._age}

    def _restore_meta(self, meta: dict[str, float]) -> None:
        self._age = int(meta.get("age", 0))


T1, T2, B1, B2 = 0, 1, 2, 3  # ARC lists; also the saved `lst`


class ARCPolicy(Policy):
    """Adaptive replacement (Megiddo & Modha) measured in bytes.

    T1 holds blobs used once recently, T2 blobs used at least twice; B1/B2 remember (hash, size) of blobs
    recently evicted from each. A miss that hits a ghost in B1 means T1 was too small: the byte target p for
    T1 grows by the ghost's size (scaled by |B2|/|B1| as in ARC); a ghost in B2 shrinks it. Eviction takes
    T1's oldest while T1 holds more than p bytes, else T2's oldest. Ghosts are bounded as in ARC by bytes
    (T1+B1 <= c, all four <= 2c) and, because tiny blobs would make that a huge number of entries, also by
    count (at most twice the cached blobs + 1024).
    """

    name = "arc"

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self._lists: tuple[OrderedDict[str, int], ...] = (OrderedDict(), OrderedDict(), OrderedDict(), OrderedDict())
        self._bytes = [0, 0, 0, 0]
        self._target = 0.0  # p: bytes T1 should hold
        self._ghost_b2_hit = False

    def __contains__(self, hash_: object) -> bool:
        return hash_ in self._lists[T1] or hash_ in self._lists[T2]

    def __len__(self) -> int:
        return len(self._lists[T1]) + len(self._lists[T2])

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._lists[T1]) + list(self._lists[T2]))

    def list_of(self, hash_: str) -> str | None:
        """'T1', 'T2', 'B1', 'B2' or None (for tests and status)."""
        for index, name in enumerate(("T1", "T2", "B1", "B2")):
            if hash_ in self._lists[index]:
                return name
        return None

    @property
    def target(self) -> float:
        return self._target

    def _place(self, hash_: str, size: int, lst: int) -> None:
        self._lists[lst][hash_] = size
        self._bytes[lst] += size
        if lst <= T2:
            self.used_bytes += size

    def _take(self, hash_: str) -> tuple[int, int] | None:
        """Remove an entry from whichever list holds it: (list, size) or None."""
        for lst in (T1, T2, B1, B2):
            size = self._lists[lst].pop(hash_, None)
            if size is not None:
                self._bytes[lst] -= size
                if lst <= T2:
                    self.used_bytes -= size
                return lst, size
        return None

    def _insert(self, hash_: str, size: int, cold: bool) -> None:
        ghost = self._take(hash_)
        if cold:
            ghost = None  # a file found on disk says nothing about how the lists should be balanced
        self._ghost_b2_hit = ghost is not None and ghost[0] == B2
        if ghost is None:
            self._place(hash_, size, T1)
            if cold:
                self._lists[T1].move_to_end(hash_, last=False)
        else:
            # the ghost was just taken out of its list: count it back in, as ARC's |B1| and |B2| do
            b1 = self._bytes[B1] + (size if ghost[0] == B1 else 0)
            b2 = self._bytes[B2] + (size if ghost[0] == B2 else 0)
            if ghost[0] == B1:
                self._target = min(float(self.capacity), self._target + max(b2 / b1, 1.0) * size)
            else:
                self._target = max(0.0, self._target - max(b1 / b2, 1.0) * size)
            self._place(hash_, size, T2)
        self._changed_entry(hash_, COLD if cold else HOT)
        self._trim_ghosts()

    def _use(self, hash_: str) -> None:
        lst, size = self._take(hash_)  # type: ignore[misc]
        self._place(hash_, size, T2)
        self._changed_entry(hash_)

    def _set_size(self, hash_: str, size: int) -> None:
        lst = T1 if hash_ in self._lists[T1] else T2
        old = self._lists[lst][hash_]
        self._lists[lst][hash_] = size
        self._bytes[lst] += size - old
        self.used_bytes += size - old
        self._changed_entry(hash_)

    def _victim(self, protect: str | None) -> str | None:
        t1_first = self._bytes[T1] > self._target or (self._ghost_b2_hit and self._bytes[T1] >= self._target)
        order = (T1, T2) if t1_first else (T2, T1)
        for lst in order:
            victim = self._first_unpinned(self._lists[lst], protect)
            if victim is not None:
                return victim
        return None

    def _evict(self, hash_: str) -> None:
        lst, size = self._take(hash_)  # type: ignore[misc]
        self._place(hash_, size, B1 if lst == T1 else B2)
        self._changed_entry(hash_)
        self._trim_ghosts()

    def _discard(self, hash_: str) -> bool:
        taken = self._take(hash_)
        if taken is None:
            return False
        self._changed_entry(hash_)
        return taken[0] <= T2

    def _trim_ghosts(self) -> None:
        lists, sizes = self._lists, self._bytes
        max_ghosts = 2 * len(self) + 1024
        while lists[B1] and (sizes[T1] + sizes[B1] > self.capacity or len(lists[B1]) > max_ghosts // 2):
            self._drop_oldest(B1)
        while lists[B2] and (sum(sizes) > 2 * self.capacity or len(lists[B1]) + len(lists[B2]) > max_ghosts):
            self._drop_oldest(B2)

    def _drop_oldest(self, lst: int) -> None:
        hash_, size = self._lists[lst].popitem(last=False)
        self._bytes[lst] -= size
        self._changed_entry(hash_)

    def _state(self, hash_: str) -> State | None:
        for lst in (T1, T2, B1, B2):
            size = self._lists[lst].get(hash_)
            if size is not None:
                return size, lst, 0, 0, None
        return None

    def _restore(self, row: Row) -> None:
        self._place(row[0], row[1], row[2] if row[2] in (T1, T2, B1, B2) else T1)

    def _loaded(self) -> None:
        self._trim_ghosts()

    def meta(self) -> dict[str, float]:
        return {"p": self._target}

    def _restore_meta(self, meta: dict[str, float]) -> None:
        self._target = min(float(meta.get("p", 0.0)), float(self.capacity))


POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (LRUPolicy, LFUDAPolicy, ARCPolicy, SimplePolicy)}


def make_policy(name: str, capacity: int) -> Policy:
    """A new, empty policy by its --disk-cache manager name (lru, lfu, arc, simple)."""
    try:
        return POLICIES[name](capacity)
    except KeyError:
        raise ValueError(f"unknown cache policy {name!r}; use one of {', '.join(POLICIES)}") from None
