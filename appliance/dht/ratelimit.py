"""Per-source request limits for the DHT socket: a token bucket per source IP, in bounded memory.

Each source IP may send `rate` requests a second on average and `burst` at once. The table keeps the
`max_sources` most recently active sources; a source pushed out of it (least recently seen first)
starts again with a full bucket, which costs at most one burst, so the memory bound never turns into
a way around the rate.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

MAX_SOURCES = 65536


class SourceLimiter:
    """allow(ip) says whether a request from `ip` may be answered now, and takes one token if so."""

    def __init__(self, rate: float, burst: float, max_sources: int = MAX_SOURCES,
                 clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate > 0, burst >= 1 and max_sources >= 1 are required")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_sources = max_sources
        self.clock = clock
        self.refused = 0
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # ip -> [tokens, last refill time]

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, ip: str) -> bool:
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(ip)
            if bucket is None:
                if len(self._buckets) >= self.max_sources:
                    self._buckets.popitem(last=False)
                bucket = self._buckets[ip] = [self.burst, now]
            else:
                self._buckets.move_to_end(ip)
                bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
                bucket[1] = now
            if bucket[0] >= 1.0:
                bucket[0] -= 1.0
                return True
            self.refused += 1
            return False
