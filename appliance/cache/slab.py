"""Compact storage for millions of cache entries: flat arrays instead of one Python object per entry.

A cache of 20 TB holds 10 million 2 MiB blobs. Kept as dicts of 96-character strings that costs 270-460
bytes per blob; here an entry is its 48 raw key bytes, its size and two list links in shared arrays, found
through an open-addressing table of slot numbers: about 70 bytes (policies add their own columns).

- Slots: entry i lives at keys[48 i : 48 i + 48], sizes[i], prev[i], next[i] (and the policy's extra
  columns). Freed slots are chained through `next` and reused, so the arrays never hold more slots than
  the most entries ever held at once.
- The table: linear probing over slot numbers, at most 70 % full, doubled when that is reached; deletion
  shifts the following run back (no tombstones). Keys are SHA-384 digests, uniform already; a secret salt
  multiplied in keeps crafted hashes from piling into one run. The table is saved with the arrays, so a
  restart reads it back instead of rebuilding it.
- Lists (DList) are doubly linked through prev/next: O(1) unlink, push at either end.

Not thread-safe: the cache manager's loop is the only caller.
"""
from __future__ import annotations

import secrets
from array import array
from collections.abc import Iterator
from typing import BinaryIO

KEY = 48
EMPTY = -1
_MULT = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: Fibonacci hashing spreads the salted key over the top bits
_M64 = (1 << 64) - 1
MAX_LOAD = 0.7


def key_of(hash_: object) -> bytes | None:
    """The 48 raw bytes of a hex blob hash; None for anything that is not one."""
    if not isinstance(hash_, str) or len(hash_) != 2 * KEY:
        return None
    try:
        return bytes.fromhex(hash_)
    except ValueError:
        return None


class Slab:
    """Entries (48-byte key, size, links, extra columns) in arrays, found by key through a hash table."""

    def __init__(self, extra: dict[str, str] | None = None):
        self.keys = bytearray()
        self.sizes = array("I")
        self.prev = array("i")
        self.next = array("i")
        self.extra = {name: array(code) for name, code in (extra or {}).items()}
        self._columns = [self.sizes, self.prev, self.next, *self.extra.values()]
        self.free = EMPTY
        self.count = 0
        self.salt = secrets.randbits(64)
        self._set_table(3)

    def _set_table(self, bits: int) -> None:
        self.bits = bits
        self.mask = (1 << bits) - 1
        self.table = array("i", [EMPTY]) * (1 << bits)
        self.limit = int((1 << bits) * MAX_LOAD)

    def _home(self, key: bytes | bytearray) -> int:
        x = int.from_bytes(key[:8], "little") ^ int.from_bytes(key[40:48], "little") ^ self.salt
        return ((x * _MULT) & _M64) >> (64 - self.bits)

    def __len__(self) -> int:
        return self.count

    def find(self, key: bytes) -> int:
        """The slot holding `key`, or EMPTY."""
        table, keys, mask = self.table, self.keys, self.mask
        i = self._home(key)
        while True:
            slot = table[i]
            if slot == EMPTY:
                return EMPTY
            offset = slot * KEY
            if keys[offset:offset + KEY] == key:
                return slot
            i = (i + 1) & mask

    def add(self, key: bytes, size: int) -> int:
        """A new entry (the key must not be present); its slot."""
        if self.free != EMPTY:
            slot = self.free
            self.free = self.next[slot]
            self.keys[slot * KEY:slot * KEY + KEY] = key
        else:
            slot = len(self.sizes)
            self.keys += key
            for column in self._columns:
                column.append(0)
        self.sizes[slot] = size
        self.prev[slot] = self.next[slot] = EMPTY
        self._place(slot, key)
        self.count += 1
        if self.count > self.limit:
            self._grow()
        return slot

    def _place(self, slot: int, key: bytes | bytearray) -> None:
        table, mask = self.table, self.mask
        i = self._home(key)
        while table[i] != EMPTY:
            i = (i + 1) & mask
        table[i] = slot

    def _grow(self) -> None:
        old = self.table
        self._set_table(self.bits + 1)
        keys = self.keys
        for slot in old:
            if slot != EMPTY:
                self._place(slot, keys[slot * KEY:slot * KEY + KEY])

    def remove(self, slot: int) -> None:
        """Free a slot (its list links must already be undone)."""
        table, keys, mask = self.table, self.keys, self.mask
        i = self._home(keys[slot * KEY:slot * KEY + KEY])
        while table[i] != slot:
            i = (i + 1) & mask
        # Backward-shift deletion: pull later members of the run into the hole when their home allows it.
        j = i
        while True:
            j = (j + 1) & mask
            other = table[j]
            if other == EMPTY:
                break
            home = self._home(keys[other * KEY:other * KEY + KEY])
            if (home - i - 1) & mask < (j - i) & mask:
                continue  # its home lies after the hole, up to j: it stays
            table[i] = other
            i = j
        table[i] = EMPTY
        self.next[slot] = self.free
        self.free = slot
        self.count -= 1

    def hex(self, slot: int) -> str:
        return self.keys[slot * KEY:slot * KEY + KEY].hex()

    # --- saving and restoring the whole slab -------------------------------------------------------------

    def header(self) -> dict:
        return {"slots": len(self.sizes), "free": self.free, "count": self.count, "salt": self.salt,
                "bits": self.bits, "extra": {name: col.typecode for name, col in self.extra.items()}}

    def buffers(self) -> list:
        """What `write` saves after the header, in order."""
        return [self.keys, self.sizes, self.prev, self.next, *self.extra.values(), self.table]

    def write(self, f: BinaryIO) -> None:
        for buffer in self.buffers():
            f.write(memoryview(buffer).cast("B"))

    @classmethod
    def read(cls, header: dict, f: BinaryIO) -> Slab:
        """A slab from `header` and the bytes `write` saved after it; ValueError when they are short."""
        slab = cls(header["extra"])
        slots = header["slots"]
        slab.keys = bytearray(slots * KEY)
        slab.sizes, slab.prev, slab.next = (array(code, [0]) * slots for code in "Iii")
        slab.extra = {name: array(code, [0]) * slots for name, code in header["extra"].items()}
        slab._columns = [slab.sizes, slab.prev, slab.next, *slab.extra.values()]
        slab.free, slab.count, slab.salt = header["free"], header["count"], header["salt"]
        slab._set_table(header["bits"])
        for buffer in slab.buffers():
            view = memoryview(buffer).cast("B")
            if f.readinto(view) != len(view):
                raise ValueError("the saved index is shorter than its header says")
        return slab


class DList:
    """A doubly linked list of slots through the slab's prev/next arrays, from head (oldest) to tail."""

    __slots__ = ("slab", "head", "tail", "length", "bytes")

    def __init__(self, slab: Slab):
        self.slab = slab
        self.head = self.tail = EMPTY
        self.length = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.length

    def push_back(self, slot: int) -> None:
        prev, nxt = self.slab.prev, self.slab.next
        prev[slot], nxt[slot] = self.tail, EMPTY
        if self.tail == EMPTY:
            self.head = slot
        else:
            nxt[self.tail] = slot
        self.tail = slot
        self.length += 1
        self.bytes += self.slab.sizes[slot]

    def push_front(self, slot: int) -> None:
        prev, nxt = self.slab.prev, self.slab.next
        prev[slot], nxt[slot] = EMPTY, self.head
        if self.head == EMPTY:
            self.tail = slot
        else:
            prev[self.head] = slot
        self.head = slot
        self.length += 1
        self.bytes += self.slab.sizes[slot]

    def unlink(self, slot: int) -> None:
        prev, nxt = self.slab.prev, self.slab.next
        before, after = prev[slot], nxt[slot]
        if before == EMPTY:
            self.head = after
        else:
            nxt[before] = after
        if after == EMPTY:
            self.tail = before
        else:
            prev[after] = before
        self.length -= 1
        self.bytes -= self.slab.sizes[slot]

    def __iter__(self) -> Iterator[int]:
        nxt = self.slab.next
        slot = self.head
        while slot != EMPTY:
            following = nxt[slot]  # read first: the caller may unlink `slot`
            yield slot
            slot = following

    def state(self) -> list[int]:
        return [self.head, self.tail, self.length, self.bytes]

    def restore(self, state: list[int]) -> None:
        self.head, self.tail, self.length, self.bytes = state
