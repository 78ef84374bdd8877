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
from array import array
from collections.abc import Iterable, Iterator

from appliance.cache.slab import EMPTY, DList, Slab, key_of

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
        return self.settle()

    def replay(self, upserts: Iterable[Row], deletes: Iterable[str], meta: dict[str, float]) -> None:
        """Apply drained changes on top of a restored state (a journal after a snapshot), in drain order."""
        for hash_ in deletes:
            self._discard(hash_)
        for row in upserts:
            rank = row[3]
            front = rank < self._bottom_rank  # drained ranks only grow at the top or shrink at the bottom
            if not self._move(row, front):
                self._restore(row, front)
            if front:
                self._bottom_rank = rank
            else:
                self._top_rank = max(self._top_rank, rank)
        if meta:
            self._restore_meta(meta)

    def _move(self, row: Row, front: bool) -> bool:
        """Give an existing entry the saved state `row` in place; False when the entry does not exist."""
        if not self._discard(row[0]):
            return False
        self._restore(row, front)
        return True

    def settle(self) -> list[str]:
        """After a restore (and replays): derived state, then drop what exceeds the capacity (returned)."""
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
    def _restore(self, row: Row, front: bool = False) -> None:
        """Add a saved entry at the kept end of its list (or the eviction end: `front`)."""

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



def _check_size(size: int) -> None:
    if size <= 0:
        raise ValueError(f"blob size must be more than 0 bytes, not {size}")


class _SlabPolicy(Policy):
    """A policy whose entries live in a Slab (see appliance.cache.slab): ~70 bytes per entry, not ~300."""

    EXTRA: dict[str, str] = {}

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self.slab = Slab(self.EXTRA)

    def _slot(self, hash_: object) -> int:
        key = key_of(hash_)
        return EMPTY if key is None else self.slab.find(key)

    def _new_slot(self, hash_: str, size: int) -> int:
        key = key_of(hash_)
        if key is None:
            raise ValueError(f"not a blob hash: {hash_!r}")
        return self.slab.add(key, size)

    def _move(self, row: Row, front: bool) -> bool:
        slot = self._slot(row[0])
        if slot == EMPTY:
            return False
        self._reposition(slot, row, front)
        return True

    @abstractmethod
    def _reposition(self, slot: int, row: Row, front: bool) -> None:
        """Give the entry in `slot` the saved state `row` (size, list, place) without freeing the slot."""

    # --- snapshots: the arrays as they are, read back without rebuilding anything ----------------------

    def snapshot_header(self) -> dict:
        return {"policy": self.name, "used_bytes": self.used_bytes, "top": self._top_rank,
                "bottom": self._bottom_rank, "meta": self.meta(), "slab": self.slab.header(),
                "lists": [lst.state() for lst in self._lists()], **self._snapshot_extra()}

    def snapshot_buffers(self) -> list:
        return self.slab.buffers()

    def restore_snapshot(self, header: dict, f) -> None:
        """Restore what snapshot_header/snapshot_buffers saved; then replay changes and settle()."""
        self.slab = Slab.read(header["slab"], f)
        for lst, state in zip(self._lists(), header["lists"], strict=True):
            lst.slab = self.slab
            lst.restore(state)
        self.used_bytes = header["used_bytes"]
        self._top_rank, self._bottom_rank = header["top"], header["bottom"]
        self._restore_snapshot_extra(header, f)
        self._restore_meta(header["meta"])

    def _snapshot_extra(self) -> dict:
        return {}

    def _restore_snapshot_extra(self, header: dict, f) -> None:
        return None

    def _lists(self) -> list[DList]:
        return []

    def _first_unpinned_slot(self, slots: Iterable[int], protect: str | None) -> str | None:
        pinned, slab = self._pinned, self.slab
        for slot in slots:
            hash_ = slab.hex(slot)
            if hash_ != protect and hash_ not in pinned:
                return hash_
        return None


class _OrderedPolicy(_SlabPolicy):
    """One list from the eviction end to the kept end; subclasses decide what a use does."""

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self._order = DList(self.slab)

    def __contains__(self, hash_: object) -> bool:
        return self._slot(hash_) != EMPTY

    def __len__(self) -> int:
        return len(self.slab)

    def __iter__(self) -> Iterator[str]:
        return iter([self.slab.hex(slot) for slot in self._order])

    def _insert(self, hash_: str, size: int, cold: bool) -> None:
        slot = self._new_slot(hash_, size)
        if cold:
            self._order.push_front(slot)
        else:
            self._order.push_back(slot)
        self.used_bytes += size
        self._changed_entry(hash_, COLD if cold else HOT)

    def _set_size(self, hash_: str, size: int) -> None:
        slot = self._slot(hash_)
        self._order.unlink(slot)
        self.used_bytes += size - self.slab.sizes[slot]
        self.slab.sizes[slot] = size
        self._order.push_back(slot)  # a rewritten blob is a new insertion (and keeps ranks exact)
        self._changed_entry(hash_)

    def _victim(self, protect: str | None) -> str | None:
        return self._first_unpinned_slot(self._order, protect)

    def _discard(self, hash_: str) -> bool:
        slot = self._slot(hash_)
        if slot == EMPTY:
            return False
        self._order.unlink(slot)
        self.used_bytes -= self.slab.sizes[slot]
        self.slab.remove(slot)
        self._changed_entry(hash_)
        return True

    def _state(self, hash_: str) -> State | None:
        slot = self._slot(hash_)
        return None if slot == EMPTY else (self.slab.sizes[slot], 0, 0, 0, None)

    def _restore(self, row: Row, front: bool = False) -> None:
        slot = self._new_slot(row[0], row[1])
        self._order.push_front(slot) if front else self._order.push_back(slot)
        self.used_bytes += row[1]

    def _reposition(self, slot: int, row: Row, front: bool) -> None:
        self._order.unlink(slot)
        self.used_bytes += row[1] - self.slab.sizes[slot]
        self.slab.sizes[slot] = row[1]
        self._order.push_front(slot) if front else self._order.push_back(slot)

    def _lists(self) -> list[DList]:
        return [self._order]


class LRUPolicy(_OrderedPolicy):
    """Least recently used: a use moves the blob to the kept end."""

    name = "lru"

    def _use(self, hash_: str) -> None:
        slot = self._slot(hash_)
        self._order.unlink(slot)
        self._order.push_back(slot)
        self._changed_entry(hash_)


class SimplePolicy(_OrderedPolicy):
    """reflector.go's "simple": uses do not matter; the oldest inserted blob leaves first (FIFO)."""

    name = "simple"

    def _use(self, hash_: str) -> None:
        pass


class LFUDAPolicy(_SlabPolicy):
    """LFU with dynamic aging: priority = age + uses; evicting raises the age to the victim's priority.

    A newcomer starts at age + 1, so a blob that was popular long ago but is no longer used is eventually
    overtaken by newer blobs and leaves, which plain LFU never allows. Ties go to the least recent (the
    lower sequence number). The entries form an indexed binary min-heap of slots ordered by (prio, seq):
    a use only raises an entry's key, so it sinks a few levels at most; an eviction takes the root.
    """

    name = "lfu"
    EXTRA = {"prio": "q", "seq": "q", "freq": "I", "pos": "i"}

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self._heap = array("i")
        self._age = 0
        self._seq_high = 0
        self._seq_low = 0

    def __contains__(self, hash_: object) -> bool:
        return self._slot(hash_) != EMPTY

    def __len__(self) -> int:
        return len(self.slab)

    def __iter__(self) -> Iterator[str]:
        prio, seq = self.slab.extra["prio"], self.slab.extra["seq"]
        return iter([self.slab.hex(slot) for slot in sorted(self._heap, key=lambda s: (prio[s], seq[s]))])

    def frequency(self, hash_: str) -> int:
        """Uses counted for a cached blob (0 when adopted and never read)."""
        return self.slab.extra["freq"][self._slot(hash_)]

    def _set_entry(self, slot: int, prio: int, seq: int, freq: int) -> None:
        extra = self.slab.extra
        extra["prio"][slot], extra["seq"][slot], extra["freq"][slot] = prio, seq, freq

    def _insert(self, hash_: str, size: int, cold: bool) -> None:
        slot = self._new_slot(hash_, size)
        if cold:
            self._seq_low -= 1
            self._set_entry(slot, self._age, self._seq_low, 0)
        else:
            self._seq_high += 1
            self._set_entry(slot, self._age + 1, self._seq_high, 1)
        self.used_bytes += size
        self._heap_push(slot)
        self._changed_entry(hash_)

    def _use(self, hash_: str) -> None:
        slot = self._slot(hash_)
        freq = self.slab.extra["freq"][slot] + 1
        self._seq_high += 1
        self._set_entry(slot, self._age + freq, self._seq_high, freq)
        self._sift_down(self.slab.extra["pos"][slot])
        self._changed_entry(hash_)

    def _set_size(self, hash_: str, size: int) -> None:
        slot = self._slot(hash_)
        self.used_bytes += size - self.slab.sizes[slot]
        self.slab.sizes[slot] = size
        self._changed_entry(hash_)

    def _victim(self, protect: str | None) -> str | None:
        # The heap's smallest entry that is neither pinned nor protected: walk down from the root in key
        # order, which only goes past the (few) pinned entries.
        heap, prio, seq = self._heap, self.slab.extra["prio"], self.slab.extra["seq"]
        if not heap:
            return None
        frontier = [(prio[heap[0]], seq[heap[0]], 0)]
        while frontier:
            _, _, i = heapq.heappop(frontier)
            hash_ = self.slab.hex(heap[i])
            if hash_ != protect and hash_ not in self._pinned:
                return hash_
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (prio[heap[child]], seq[heap[child]], child))
        return None

    def _evict(self, hash_: str) -> None:
        self._age = self.slab.extra["prio"][self._slot(hash_)]
        self._discard(hash_)

    def _discard(self, hash_: str) -> bool:
        slot = self._slot(hash_)
        if slot == EMPTY:
            return False
        self._heap_remove(self.slab.extra["pos"][slot])
        self.used_bytes -= self.slab.sizes[slot]
        self.slab.remove(slot)
        self._changed_entry(hash_)
        return True

    def _state(self, hash_: str) -> State | None:
        slot = self._slot(hash_)
        if slot == EMPTY:
            return None
        extra = self.slab.extra
        return self.slab.sizes[slot], 0, extra["freq"][slot], extra["prio"][slot], extra["seq"][slot]

    def _restore(self, row: Row, front: bool = False) -> None:
        hash_, size, _lst, rank, freq, prio = row
        slot = self._new_slot(hash_, size)
        self._set_entry(slot, prio, rank, freq)
        self.used_bytes += size
        self._heap_push(slot)

    def _loaded(self) -> None:
        self._seq_high, self._seq_low = max(self._top_rank, 0), min(self._bottom_rank, 0)

    def snapshot_buffers(self) -> list:
        return [*super().snapshot_buffers(), self._heap]

    def _snapshot_extra(self) -> dict:
        return {"heap": len(self._heap)}

    def _restore_snapshot_extra(self, header: dict, f) -> None:
        self._heap = array("i", [0]) * header["heap"]
        view = memoryview(self._heap).cast("B")
        if f.readinto(view) != len(view):
            raise ValueError("the saved index is shorter than its header says")

    def meta(self) -> dict[str, float]:
        return {"age": self._age}

    def _restore_meta(self, meta: dict[str, float]) -> None:
        self._age = int(meta.get("age", 0))

    # --- the indexed heap ----------------------------------------------------------------------------

    def _reposition(self, slot: int, row: Row, front: bool) -> None:
        self.used_bytes += row[1] - self.slab.sizes[slot]
        self.slab.sizes[slot] = row[1]
        self._set_entry(slot, row[5], row[3], row[4])
        pos = self.slab.extra["pos"]
        self._sift_up(pos[slot])
        self._sift_down(pos[slot])

    def _heap_push(self, slot: int) -> None:
        self._heap.append(slot)
        self.slab.extra["pos"][slot] = len(self._heap) - 1
        self._sift_up(len(self._heap) - 1)

    def _heap_remove(self, i: int) -> None:
        heap, pos = self._heap, self.slab.extra["pos"]
        last = heap.pop()
        if i < len(heap):
            heap[i] = last
            pos[last] = i
            self._sift_up(i)
            self._sift_down(pos[last])

    # The comparisons are written out (no helper call): these loops are what a use and an eviction cost.
    def _sift_up(self, i: int) -> None:
        heap, extra = self._heap, self.slab.extra
        pos, prio, seq = extra["pos"], extra["prio"], extra["seq"]
        slot = heap[i]
        key = (prio[slot], seq[slot])
        while i > 0:
            parent = (i - 1) >> 1
            other = heap[parent]
            if key >= (prio[other], seq[other]):
                break
            heap[i] = other
            pos[other] = i
            i = parent
        heap[i] = slot
        pos[slot] = i

    def _sift_down(self, i: int) -> None:
        heap, extra = self._heap, self.slab.extra
        pos, prio, seq = extra["pos"], extra["prio"], extra["seq"]
        n = len(heap)
        slot = heap[i]
        key = (prio[slot], seq[slot])
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            child_key = (prio[heap[child]], seq[heap[child]])
            if child + 1 < n:
                right_key = (prio[heap[child + 1]], seq[heap[child + 1]])
                if right_key < child_key:
                    child, child_key = child + 1, right_key
            if child_key >= key:
                break
            heap[i] = heap[child]
            pos[heap[i]] = i
            i = child
        heap[i] = slot
        pos[slot] = i

T1, T2, B1, B2 = 0, 1, 2, 3  # ARC lists; also the saved `lst`


class ARCPolicy(_SlabPolicy):
    """Adaptive replacement (Megiddo & Modha) measured in bytes.

    T1 holds blobs used once recently, T2 blobs used at least twice; B1/B2 remember (hash, size) of blobs
    recently evicted from each. A miss that hits a ghost in B1 means T1 was too small: the byte target p for
    T1 grows by the ghost's size (scaled by |B2|/|B1| as in ARC); a ghost in B2 shrinks it. Eviction takes
    T1's oldest while T1 holds more than p bytes, else T2's oldest. Ghosts are bounded as in ARC by bytes
    (T1+B1 <= c, all four <= 2c) and also by count: at most half the cached blobs + 1024, so that tiny
    blobs cannot make them a huge number of entries, and the index stays within its memory per cached blob.
    """

    name = "arc"
    EXTRA = {"lst": "B"}

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self._arc = tuple(DList(self.slab) for _ in range(4))
        self._target = 0.0  # p: bytes T1 should hold
        self._ghost_b2_hit = False

    def __contains__(self, hash_: object) -> bool:
        slot = self._slot(hash_)
        return slot != EMPTY and self.slab.extra["lst"][slot] <= T2

    def __len__(self) -> int:
        return len(self._arc[T1]) + len(self._arc[T2])

    def __iter__(self) -> Iterator[str]:
        return iter([self.slab.hex(slot) for lst in (T1, T2) for slot in self._arc[lst]])

    def list_of(self, hash_: str) -> str | None:
        """'T1', 'T2', 'B1', 'B2' or None (for tests and status)."""
        slot = self._slot(hash_)
        return None if slot == EMPTY else ("T1", "T2", "B1", "B2")[self.slab.extra["lst"][slot]]

    @property
    def target(self) -> float:
        return self._target

    def _place(self, slot: int, lst: int, front: bool = False) -> None:
        self.slab.extra["lst"][slot] = lst
        self._arc[lst].push_front(slot) if front else self._arc[lst].push_back(slot)
        if lst <= T2:
            self.used_bytes += self.slab.sizes[slot]

    def _unplace(self, slot: int) -> int:
        """Take a slot out of its list (it keeps its slot); returns the list it was in."""
        lst = self.slab.extra["lst"][slot]
        self._arc[lst].unlink(slot)
        if lst <= T2:
            self.used_bytes -= self.slab.sizes[slot]
        return lst

    def _insert(self, hash_: str, size: int, cold: bool) -> None:
        slot = self._slot(hash_)
        ghost = None
        if slot != EMPTY:  # a ghost (add() only inserts what is not cached)
            ghost = self._unplace(slot)
            self.slab.sizes[slot] = size
        else:
            slot = self._new_slot(hash_, size)
        if cold:
            ghost = None  # a file found on disk says nothing about how the lists should be balanced
        self._ghost_b2_hit = ghost == B2
        if ghost is None:
            self._place(slot, T1, front=cold)
        else:
            # the ghost was just taken out of its list: count it back in, as ARC's |B1| and |B2| do
            b1 = self._arc[B1].bytes + (size if ghost == B1 else 0)
            b2 = self._arc[B2].bytes + (size if ghost == B2 else 0)
            if ghost == B1:
                self._target = min(float(self.capacity), self._target + max(b2 / b1, 1.0) * size)
            else:
                self._target = max(0.0, self._target - max(b1 / b2, 1.0) * size)
            self._place(slot, T2)
        self._changed_entry(hash_, COLD if cold else HOT)
        self._trim_ghosts()

    def _use(self, hash_: str) -> None:
        slot = self._slot(hash_)
        self._unplace(slot)
        self._place(slot, T2)
        self._changed_entry(hash_)

    def _set_size(self, hash_: str, size: int) -> None:
        slot = self._slot(hash_)
        lst = self._unplace(slot)
        self.slab.sizes[slot] = size
        self._place(slot, lst)
        self._changed_entry(hash_)

    def _victim(self, protect: str | None) -> str | None:
        t1 = self._arc[T1].bytes
        t1_first = t1 > self._target or (self._ghost_b2_hit and t1 >= self._target)
        order = (T1, T2) if t1_first else (T2, T1)
        for lst in order:
            victim = self._first_unpinned_slot(self._arc[lst], protect)
            if victim is not None:
                return victim
        return None

    def _evict(self, hash_: str) -> None:
        slot = self._slot(hash_)
        lst = self._unplace(slot)
        self._place(slot, B1 if lst == T1 else B2)
        self._changed_entry(hash_)
        self._trim_ghosts()

    def _discard(self, hash_: str) -> bool:
        slot = self._slot(hash_)
        if slot == EMPTY:
            return False
        lst = self._unplace(slot)
        self.slab.remove(slot)
        self._changed_entry(hash_)
        return lst <= T2

    def _trim_ghosts(self) -> None:
        arc = self._arc
        max_ghosts = len(self) // 2 + 1024
        while arc[B1].length and (arc[T1].bytes + arc[B1].bytes > self.capacity
                                  or arc[B1].length > max_ghosts // 2):
            self._drop_oldest(B1)
        while arc[B2].length and (sum(a.bytes for a in arc) > 2 * self.capacity
                                  or arc[B1].length + arc[B2].length > max_ghosts):
            self._drop_oldest(B2)

    def _drop_oldest(self, lst: int) -> None:
        slot = self._arc[lst].head
        hash_ = self.slab.hex(slot)
        self._arc[lst].unlink(slot)
        self.slab.remove(slot)
        self._changed_entry(hash_)

    def _state(self, hash_: str) -> State | None:
        slot = self._slot(hash_)
        return None if slot == EMPTY else (self.slab.sizes[slot], self.slab.extra["lst"][slot], 0, 0, None)

    def _restore(self, row: Row, front: bool = False) -> None:
        slot = self._new_slot(row[0], row[1])
        self._place(slot, row[2] if row[2] in (T1, T2, B1, B2) else T1, front)

    def _loaded(self) -> None:
        self._trim_ghosts()

    def meta(self) -> dict[str, float]:
        return {"p": self._target}

    def _restore_meta(self, meta: dict[str, float]) -> None:
        self._target = min(float(meta.get("p", 0.0)), float(self.capacity))

    def _reposition(self, slot: int, row: Row, front: bool) -> None:
        self._unplace(slot)
        self.slab.sizes[slot] = row[1]
        self._place(slot, row[2] if row[2] in (T1, T2, B1, B2) else T1, front)

    def _lists(self) -> list[DList]:
        return list(self._arc)


POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (LRUPolicy, LFUDAPolicy, ARCPolicy, SimplePolicy)}


def make_policy(name: str, capacity: int) -> Policy:
    """A new, empty policy by its --disk-cache manager name (lru, lfu, arc, simple)."""
    try:
        return POLICIES[name](capacity)
    except KeyError:
        raise ValueError(f"unknown cache policy {name!r}; use one of {', '.join(POLICIES)}") from None
