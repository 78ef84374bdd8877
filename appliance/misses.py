"""The misses cache of the HTTP and HTTP/3 servers: recent not-found hashes (reflector.go: 2,000 for 5 min)."""
from __future__ import annotations

import time
from collections import OrderedDict

MISSES_TTL = 300.0
MISSES_MAX = 2000


class MissesCache:
    """Hashes recently not found, each remembered for `ttl` seconds; at most `max_size` of them."""

    def __init__(self, ttl: float = MISSES_TTL, max_size: int = MISSES_MAX):
        self.ttl, self.max_size = ttl, max_size
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, hash_: str) -> bool:
        expiry = self._expiry.get(hash_)
        if expiry is None:
            return False
        if expiry > time.monotonic():
            return True
        del self._expiry[hash_]
        return False

    def add(self, hash_: str) -> None:
        self._expiry[hash_] = time.monotonic() + self.ttl
        self._expiry.move_to_end(hash_)
        while len(self._expiry) > self.max_size:
            self._expiry.popitem(last=False)

    def discard(self, hash_: str) -> None:
        self._expiry.pop(hash_, None)
