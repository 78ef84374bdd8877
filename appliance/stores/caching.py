"""Origin + cache: reads try the cache first and fill it from the origin on a miss (spec §4.6)."""
from __future__ import annotations

import logging
import time

from appliance import metrics
from appliance.errors import BlobNotFound
from appliance.stores.base import Blob, BlobStore

log = logging.getLogger("store")


class CachingStore(BlobStore):
    """Reads: cache, then origin (copying the blob into the cache). Writes: origin, then cache.

    Unlike reflector.go (§10.13) a cache that fails with anything other than not-found is logged and
    bypassed: the origin still answers. `delete` removes the blob from the cache only, unless
    `delete_from_origin` is set (§10.14: reflector.go deleted from the origin too, e.g. from S3, which
    is never what cache maintenance wants; blocklist removal asks for it explicitly).

    Single flight is not built in (the caller composes SingleFlightStore where it wants it).
    """

    name = "caching"

    def __init__(self, origin: BlobStore, cache: BlobStore, component: str = "reflector", *,
                 delete_from_origin: bool = False):
        self.origin = origin
        self.cache = cache
        self.component = component
        self.delete_from_origin = delete_from_origin
        labels = {"cache_type": cache.name, "component": component}
        self._hits = metrics.CACHE_HIT_TOTAL.labels(**labels)
        self._misses = metrics.CACHE_MISS_TOTAL.labels(**labels)
        self._speed = metrics.SPEED_MBPS.labels(source="cache", **labels)

    def has(self, hash_: str) -> bool:
        try:
            if self.cache.has(hash_):
                return True
        except Exception as exc:  # a broken cache must not hide the origin
            log.warning("cache %s failed on has(%s), asking the origin: %s", self.cache.name, hash_[:8], exc)
        return self.origin.has(hash_)

    def get(self, hash_: str) -> Blob:
        started = time.monotonic_ns()
        try:
            blob = self.cache.get(hash_)
        except BlobNotFound:
            pass
        except Exception as exc:
            log.warning("cache %s failed on get(%s), using the origin: %s", self.cache.name, hash_[:8], exc)
        else:
            self._hits.inc()
            elapsed = (time.monotonic_ns() - started) / 1e9
            if elapsed > 0:
                self._speed.set(blob.size / 1048576 / elapsed)
            blob.trace.stack(self.name, started)
            return blob
        self._misses.inc()
        try:
            blob = self.origin.get(hash_)
        except BlobNotFound as exc:
            if exc.trace is not None:
                exc.trace.stack(self.name, started)
            raise
        try:
            self.cache.put(hash_, blob.data)
        except Exception as exc:
            log.warning("could not copy %s into cache %s: %s", hash_[:8], self.cache.name, exc)
        blob.trace.stack(self.name, started)
        return blob

    def put(self, hash_: str, data: bytes) -> None:
        self.origin.put(hash_, data)
        self._write_through(self.cache.put, hash_, data)

    def put_sd(self, hash_: str, data: bytes) -> None:
        self.origin.put_sd(hash_, data)
        self._write_through(self.cache.put_sd, hash_, data)

    def _write_through(self, method, hash_: str, data: bytes) -> None:
        # The origin holds the blob durably; a cache that cannot take it only costs a later miss.
        try:
            method(hash_, data)
        except Exception as exc:
            log.warning("could not write %s through to cache %s: %s", hash_[:8], self.cache.name, exc)

    def delete(self, hash_: str) -> None:
        if self.delete_from_origin:
            self.origin.delete(hash_)
        self.cache.delete(hash_)

    def shutdown(self) -> None:
        self.cache.shutdown()
        self.origin.shutdown()
