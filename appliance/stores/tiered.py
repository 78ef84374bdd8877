"""The store a worker serves from: local tiers read directly, misses coordinated by the cache manager.

Read (DESIGN §2): memory cache -> disk caches -> local storage, each a direct file open (no IPC on the
hot path; hits are reported to the manager in batches, fire-and-forget, with their counts). A miss asks
the manager `fetch`: it answers `lease` to exactly one worker per cold blob across the appliance (that
worker fetches from the origin, verifies the SHA-384, `reserve`s its size - the manager evicts to make
room first, so concurrent misses never push a cache over its size - writes the blob into the disk caches
atomically and reports `done`), `ready` to the others once the blob is on disk, or `notfound` from its
negative cache. So there is one origin request per cold blob, and cold traffic still uses every core.
With --mem-cache, whatever a worker serves from a lower tier is kept in its memory tier.

When the manager is unreachable the worker keeps serving: hits as always, misses fetched directly
(single flight within the process only) and not cached.

Write (uploads): origin first (local storage, S3 and/or MySQL), then written through to the disk caches
and reported to the manager (`added`), so the receipt is sent only after the blob is durable.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from appliance import ipc, metrics
from appliance.blob import blob_hash, check_hash
from appliance.errors import BlobNotFound, OriginError
from appliance.stores.base import Blob, BlobStore, Upload
from appliance.stores.disk import BlobWriter, DiskStore
from appliance.stores.offhub import off_hub
from appliance.stores.singleflight import SingleFlightStore

log = logging.getLogger("store")

FETCH_TIMEOUT = 120.0  # a waiter gives up on another worker's fetch after this long
REPORT_INTERVAL = 0.5


class CacheManagerClient:
    """The worker's side of the cache-manager protocol (see workers/cache_manager.py)."""

    def __init__(self, path: str):
        self.ipc = ipc.IpcClient(path, name="cache manager", timeout=5.0)
        self._accessed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def fetch(self, hash_: str) -> str:
        started = time.monotonic()
        try:
            answer = self.ipc.call("fetch", hash_, timeout=FETCH_TIMEOUT)
        except ipc.IpcUnavailable:
            metrics.IPC_REQUESTS_TOTAL.labels(peer="cache-manager", outcome="unavailable").inc()
            raise
        metrics.IPC_REQUESTS_TOTAL.labels(peer="cache-manager", outcome="ok").inc()
        metrics.IPC_LATENCY.labels(peer="cache-manager").observe(time.monotonic() - started)
        return answer

    def reserve(self, hash_: str, size: int) -> list[bool]:
        """Make room for a leased blob before it is written; per disk cache, whether to write it there."""
        return self.ipc.call("reserve", [hash_, size])

    def done(self, hash_: str, size: int) -> None:
        self.ipc.call("done", [hash_, size])

    def failed(self, hash_: str, kind: str, message: str = "") -> None:
        self.ipc.call("failed", [hash_, kind, message])

    def added(self, hash_: str, size: int) -> None:
        self.ipc.notify("added", [hash_, size])

    def accessed(self, hash_: str) -> None:
        with self._lock:
            self._accessed[hash_] += 1

    def flush_accesses(self) -> None:
        """Send the batched hit reports, [hash, uses] pairs (called every REPORT_INTERVAL by housekeeping).

        Uses are counted, not deduplicated: lfu ranks blobs by how often they are read.
        """
        with self._lock:
            if not self._accessed:
                return
            batch, self._accessed = [[h, n] for h, n in self._accessed.items()], Counter()
        try:
            self.ipc.notify("accessed", batch)
        except ipc.IpcUnavailable:
            pass  # recency is a hint; losing it while the manager restarts is harmless


class TieredStore(BlobStore):
    name = "tiered"

    def __init__(self, origin: BlobStore, *, local: DiskStore | None = None, caches: list[DiskStore] | None = None,
                 mem: BlobStore | None = None, manager: CacheManagerClient | None = None,
                 component: str = "reflector", on_stored=None, blocked=None):
        self.origin = origin
        self.local = local
        self.caches = caches or []
        self.mem = mem
        self.manager = manager
        self.on_stored = on_stored  # callable(hash, is_sd) after an upload is durable (DHT announcements)
        self.blocked = blocked  # callable(hash) -> bool: blocklisted streams are not served
        self.direct = SingleFlightStore(origin, component)  # misses when the manager cannot coordinate
        self._hits = [metrics.CACHE_HIT_TOTAL.labels(cache_type=c.name, component=component) for c in self.caches]
        self._misses = [metrics.CACHE_MISS_TOTAL.labels(cache_type=c.name, component=component) for c in self.caches]
        self._hit_speed = metrics.SPEED_MBPS.labels(cache_type="disk", component=component, source="cache")

    # -- reads --------------------------------------------------------------------------------------
    def _local_get(self, hash_: str) -> Blob | None:
        if self.mem is None:
            return self._disk_get(hash_)
        try:
            return self.mem.get(hash_)
        except BlobNotFound:
            pass
        blob = self._disk_get(hash_)
        if blob is None:
            return None
        with blob:  # a lower tier's hit is kept in memory, as reflector.go's caching layers do
            return self._remember(Blob(hash_, data=blob.data, trace=blob.trace))

    def _disk_get(self, hash_: str) -> Blob | None:
        for i, cache in enumerate(self.caches):
            try:
                blob = cache.get(hash_)
            except BlobNotFound:
                self._misses[i].inc()
                continue
            self._hits[i].inc()
            if self.manager is not None:
                self.manager.accessed(hash_)
            return blob
        if self.local is not None:
            try:
                return self.local.get(hash_)
            except BlobNotFound:
                pass
        return None

    def get(self, hash_: str) -> Blob:
        check_hash(hash_)
        if self.blocked is not None and self.blocked(hash_):
            raise BlobNotFound()
        blob = self._local_get(hash_)
        if blob is not None:
            return blob
        if self.local is not None and self.origin is self.local:
            raise BlobNotFound()
        if not self.caches or self.manager is None:
            return self._remember(self.direct.get(hash_))
        for _ in range(3):
            try:
                answer = self.manager.fetch(hash_)
            except (ipc.IpcUnavailable, TimeoutError) as exc:
                log.warning("cache manager unavailable (%s): fetching %s directly", exc, hash_[:8])
                return self._remember(self.direct.get(hash_))
            if answer == "lease":
                return self._fetch_with_lease(hash_)
            if answer == "ready":
                blob = self._local_get(hash_)
                if blob is not None:
                    return blob
                continue  # evicted in between: ask again
            if answer == "notfound":
                raise BlobNotFound()
            raise OriginError(str(answer).removeprefix("error:") or "origin error")
        return self._remember(self.direct.get(hash_))

    def _fetch_with_lease(self, hash_: str) -> Blob:
        try:
            with self.origin.get(hash_) as fetched:
                data = fetched.data
                trace = fetched.trace
        except BlobNotFound:
            self._report(self.manager.failed, hash_, "notfound")
            raise
        except Exception as exc:
            self._report(self.manager.failed, hash_, "error", str(exc))
            raise OriginError(str(exc)) from exc
        if blob_hash(data) != hash_:
            self._report(self.manager.failed, hash_, "error", "origin sent data that does not match its hash")
            raise OriginError(f"origin sent data for {hash_[:8]} that does not match its hash")
        try:
            room = self.manager.reserve(hash_, len(data))
        except (ipc.IpcError, TimeoutError) as exc:  # no room was made: serve it without caching it
            log.warning("cache manager did not reserve room for %s: %s", hash_[:8], exc)
            self._report(self.manager.failed, hash_, "error", f"no room reserved: {exc}")
            return self._remember(Blob(hash_, data=data, trace=trace))
        try:
            for cache, keep in zip(self.caches, room, strict=True):
                if keep:
                    off_hub(cache.put, hash_, data)
        except OSError as exc:  # a full or broken cache disk: serve from memory, keep the manager honest
            log.error("cannot write %s into the disk cache: %s", hash_[:8], exc)
            self._report(self.manager.failed, hash_, "error", f"cache write failed: {exc}")
            return Blob(hash_, data=data, trace=trace)
        self._report(self.manager.done, hash_, len(data))
        return self._remember(Blob(hash_, data=data, trace=trace))

    def _remember(self, blob: Blob) -> Blob:
        if self.mem is not None and blob.size:
            try:
                self.mem.put(blob.hash, blob.data)
            except Exception as exc:
                log.warning("memory cache put failed: %s", exc)
        return blob

    @staticmethod
    def _report(fn, *args) -> None:
        try:
            fn(*args)
        except (ipc.IpcError, TimeoutError) as exc:
            log.warning("cache manager did not take a report: %s", exc)

    def has(self, hash_: str) -> bool:
        check_hash(hash_)
        if self.blocked is not None and self.blocked(hash_):
            return False
        if self.mem is not None and self.mem.has(hash_):
            return True
        if any(cache.has(hash_) for cache in self.caches):
            return True
        if self.local is not None and self.local.has(hash_):
            return True
        if self.local is not None and self.origin is self.local:
            return False
        return self.origin.has(hash_)

    # -- writes -------------------------------------------------------------------------------------
    def put(self, hash_: str, data: bytes) -> None:
        self.origin.put(hash_, data)
        self._write_through(hash_, data)
        if self.on_stored is not None:
            self.on_stored(hash_, False)

    def put_sd(self, hash_: str, data: bytes) -> None:
        self.origin.put_sd(hash_, data)
        self._write_through(hash_, data)
        if self.on_stored is not None:
            self.on_stored(hash_, True)

    def upload(self, hash_: str, size: int) -> Upload:
        """A content blob streamed into the origin and, alongside, into cache copies; `commit` returns
        once the origin holds it durably (the copies are renamed into place after that)."""
        return _TeeUpload(self, hash_, size)

    def _write_through(self, hash_: str, data: bytes) -> None:
        for cache in self.caches:
            try:
                off_hub(_copy_into, cache, hash_, data)
            except OSError as exc:  # the origin has it; the cache is only a copy
                log.error("write-through of %s into %s failed: %s", hash_[:8], cache.root, exc)
                return
        if self.caches and self.manager is not None:
            try:
                self.manager.added(hash_, len(data))
            except ipc.IpcUnavailable:
                pass  # the manager's loader finds the file when it is back

    def delete(self, hash_: str) -> None:
        self.origin.delete(hash_)
        for store in [*self.caches, *([self.mem] if self.mem is not None else [])]:
            store.delete(hash_)

    def shutdown(self) -> None:
        self.origin.shutdown()


def _copy_into(cache: DiskStore, hash_: str, data: bytes) -> None:
    """A cache copy of a blob the origin holds: not fsynced (DESIGN §2), renamed in whole."""
    with cache.writer(hash_, durable=False, verify=False) as writer:
        writer.write(data)
        writer.commit()


class _TeeUpload(Upload):
    """TieredStore.upload: every chunk goes to the origin's upload and to a cache copy per disk cache."""

    def __init__(self, tiered: TieredStore, hash_: str, size: int):
        self.tiered = tiered
        self.hash = hash_
        self.size = size
        self.origin = tiered.origin.upload(hash_, size)
        self.copies: list[BlobWriter] = []
        try:
            for cache in tiered.caches:
                self.copies.append(cache.writer(hash_, durable=False, verify=False))
        except OSError as exc:
            self._drop_copies(exc)

    def write(self, chunk) -> None:
        self.origin.write(chunk)
        try:
            for copy in self.copies:
                copy.write(chunk)
        except OSError as exc:
            self._drop_copies(exc)

    def commit(self) -> None:
        self.origin.commit()  # durable in the origin: what the receipt promises
        try:
            for copy in self.copies:
                copy.commit()
        except OSError as exc:
            self._drop_copies(exc)
        tiered = self.tiered
        if self.copies and tiered.manager is not None:
            try:
                tiered.manager.added(self.hash, self.size)
            except ipc.IpcUnavailable:
                pass  # the manager's loader finds the file when it is back
        if tiered.on_stored is not None:
            tiered.on_stored(self.hash, False)

    def abort(self) -> None:
        self.origin.abort()
        for copy in self.copies:
            copy.abort()

    def _drop_copies(self, exc: OSError) -> None:
        """The origin has the blob; the caches only lose a copy (as the write-through does)."""
        log.error("write-through of %s into the disk cache failed: %s", self.hash[:8], exc)
        for copy in self.copies:
            copy.abort()
        self.copies = []
