"""In-memory stores: an unbounded one (`prism test`) and a bounded LRU one (`--mem-cache`)."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

from appliance import metrics
from appliance.blob import check_hash
from appliance.errors import BlobNotFound
from appliance.stores.base import Blob, BlobStore
from appliance.trace import Trace


class MemoryStore(BlobStore):
    """A dict of hash -> bytes behind a lock."""

    name = "mem"

    def __init__(self):
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def has(self, hash_: str) -> bool:
        return hash_ in self._blobs

    def get(self, hash_: str) -> Blob:
        started = time.monotonic_ns()
        data = self._blobs.get(hash_)
        if data is None:
            raise BlobNotFound(trace=Trace.new(self.name, started))
        return Blob(hash_, data=data, trace=Trace.new(self.name, started))

    def put(self, hash_: str, data: bytes) -> None:
        check_hash(hash_)
        with self._lock:
            self._blobs[hash_] = bytes(data)

    def delete(self, hash_: str) -> None:
        with self._lock:
            self._blobs.pop(hash_, None)

    def items(self) -> list[tuple[str, int]]:
        """(hash, size) of every blob held, sorted by hash."""
        with self._lock:
            return sorted((h, len(d)) for h, d in self._blobs.items())

    def __len__(self) -> int:
        return len(self._blobs)


class LRUMemoryStore(BlobStore):
    """At most `max_blobs` blobs in memory; a put beyond that evicts the least recently used one.

    reflector.go builds this as gcache("mem", memory store, N, LRU); evictions are counted the same way.
    """

    name = "gcache"

    def __init__(self, max_blobs: int, component: str = "mem"):
        if max_blobs <= 0:
            raise ValueError("an LRU memory store needs room for at least one blob")
        self.max_blobs = max_blobs
        self.component = component
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._evictions = metrics.CACHE_EVICT_TOTAL.labels(cache_type="mem", component=component)

    def has(self, hash_: str) -> bool:
        return hash_ in self._blobs

    def get(self, hash_: str) -> Blob:
        started = time.monotonic_ns()
        with self._lock:
            data = self._blobs.get(hash_)
            if data is not None:
                self._blobs.move_to_end(hash_)
        if data is None:
            raise BlobNotFound(trace=Trace.new("mem", started).stack(self.name, started))
        return Blob(hash_, data=data, trace=Trace.new("mem", started).stack(self.name, started))

    def put(self, hash_: str, data: bytes) -> None:
        check_hash(hash_)
        evicted = 0
        with self._lock:
            self._blobs[hash_] = bytes(data)
            self._blobs.move_to_end(hash_)
            while len(self._blobs) > self.max_blobs:
                self._blobs.popitem(last=False)
                evicted += 1
        if evicted:
            self._evictions.inc(evicted)

    def delete(self, hash_: str) -> None:
        with self._lock:
            self._blobs.pop(hash_, None)

    def __len__(self) -> int:
        return len(self._blobs)
