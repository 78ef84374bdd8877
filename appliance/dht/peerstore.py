"""Peers that announced (stored) themselves for a blob, as the SDK's data store keeps them.

An entry lives `ttl` seconds after its last store (the SDK's DATA_EXPIRATION, 24 h, by default; LBRY
announcers re-store well within that). A node re-storing the same key refreshes its entry. Memory is
bounded: at most `max_per_key` peers per key (the longest-unrefreshed one goes) and `max_total`
entries overall (the oldest store anywhere goes).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from appliance.dht.messages import Peer

DATA_EXPIRATION = 86400.0


class PeerStore:
    def __init__(self, ttl: float = DATA_EXPIRATION, max_per_key: int = 128, max_total: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_per_key = max_per_key
        self.max_total = max_total
        self._clock = clock
        self._lock = threading.Lock()
        # key -> node_id -> (peer, stored_at), in store order (oldest first)
        self._by_key: dict[bytes, OrderedDict[bytes, tuple[Peer, float]]] = {}
        # (key, node_id) in store order over all keys, to evict the oldest entry when full
        self._order: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()

    def add(self, key: bytes, peer: Peer) -> None:
        """Remember (or refresh) `peer` as a holder of `key`."""
        now = self._clock()
        with self._lock:
            entries = self._by_key.setdefault(key, OrderedDict())
            if peer.node_id in entries:
                # a refresh keeps the peer's place in the answer order (pages stay stable)
                entries[peer.node_id] = (peer, now)
            else:
                if len(entries) >= self.max_per_key:
                    oldest = min(entries, key=lambda n: entries[n][1])
                    self._discard(key, oldest)
                    entries = self._by_key.setdefault(key, OrderedDict())
                if len(self._order) >= self.max_total:
                    self._discard(*next(iter(self._order)))
                    entries = self._by_key.setdefault(key, OrderedDict())
                entries[peer.node_id] = (peer, now)
            self._order[(key, peer.node_id)] = None
            self._order.move_to_end((key, peer.node_id))

    def get(self, key: bytes) -> list[Peer]:
        """Unexpired peers for `key`, in the order they first stored."""
        cutoff = self._clock() - self.ttl
        with self._lock:
            entries = self._by_key.get(key)
            if not entries:
                return []
            return [peer for peer, stored_at in entries.values() if stored_at > cutoff]

    def expire(self) -> int:
        """Drop expired entries; returns how many went."""
        cutoff = self._clock() - self.ttl
        removed = 0
        with self._lock:
            while self._order:
                key, node_id = next(iter(self._order))
                if self._by_key[key][node_id][1] > cutoff:
                    break  # _order is by last store time: everything after is fresher
                self._discard(key, node_id)
                removed += 1
        return removed

    def __len__(self) -> int:
        with self._lock:
            return len(self._order)

    def key_count(self) -> int:
        with self._lock:
            return len(self._by_key)

    def _discard(self, key: bytes, node_id: bytes) -> None:
        entries = self._by_key.get(key)
        if entries is not None:
            entries.pop(node_id, None)
            if not entries:
                del self._by_key[key]
        self._order.pop((key, node_id), None)
