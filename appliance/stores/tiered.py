"""The store a worker serves from: local tiers read directly, misses coordinated by the cache manager.

Read (DESIGN §2): memory cache -> disk caches -> local storage, each a direct file open (no IPC on the
hot path; hits are reported to the manager in batches, fire-and-forget, with their counts). A miss asks
the manager `fetch`: it answers `lease` to exactly one worker per cold blob across the appliance, `ready`
to the others once the blob is on disk, or `notfound` from its negative cache. So there is one origin
request per cold blob, and cold traffic still uses every core. The leaseholder streams the miss through
(_Relay): it asks the origin for the blob, `reserve`s its announced size (the manager evicts to make room
first, so concurrent misses never push a cache over its size), and relays the bytes to its client as they
arrive, hashing them and writing the cache copy alongside (no fsync: the origin keeps the durable copy;
appliance/cache/crashcheck.py keeps a copy cut short by a power loss from being served). The copy is
renamed into place, and the client sent its last chunk, only once the SHA-384 matched; then `done`.
With --mem-cache, whatever a worker serves from a lower tier is kept in its memory tier.

When the manager is unreachable (restarting, or unable to start) the worker keeps serving: hits as
always, misses fetched directly (single flight within the process only) and not cached.

A cache write that fails never fails the request (issue 15): the copy is dropped, the failure counted, and
on ENOSPC the manager is asked to make room (`nospace`) before the next copy (an upload's copy is tried once
more). Whatever this store stores or fetches is announced on the misses board (appliance.misses), so no
process keeps answering "not found" for it.

Write (uploads): origin first (local storage, S3 and/or MySQL), so the receipt is sent only after the blob
is durable; then copied into the disk caches that the manager made room in first (`admit`).
"""
from __future__ import annotations

import errno
import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator

from appliance import ipc, metrics, misses
from appliance.blob import check_hash
from appliance.errors import BlobNotFound, FirstByteTimeout, HashMismatch, IdleTimeout, OriginError
from appliance.stores.base import Blob, BlobStore, BlobStream, StreamedBlob, Upload
from appliance.stores.disk import BlobWriter, DiskStore
from appliance.stores.offhub import off_hub
from appliance.stores.singleflight import SingleFlightStore

log = logging.getLogger("store")

FETCH_TIMEOUT = 120.0  # a waiter gives up on another worker's fetch after this long
REPORT_INTERVAL = 0.5
UNAVAILABLE_LOG_INTERVAL = 60.0  # "cache manager unavailable" is logged once per this many seconds


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

    def nospace(self, cache: int, size: int) -> bool:
        """Disk cache number `cache` is full for a write of `size` bytes: True when room was made."""
        return bool(self.ipc.call("nospace", [cache, size]))

    def admit(self, hash_: str, size: int) -> list[bool]:
        """Make room for an upload before it is written through; per disk cache, whether to write it there."""
        return self.ipc.call("admit", [hash_, size])

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
        # A "not found" from local storage as the origin costs a stat and is the truth: servers do not remember it.
        self.misses_worth_remembering = not (local is not None and origin is local)
        self._unavailable_logged = 0.0
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
            return self._fetched(self.direct.get(hash_))
        for _ in range(3):
            try:
                answer = self.manager.fetch(hash_)
            except (ipc.IpcUnavailable, TimeoutError) as exc:
                now = time.monotonic()
                if now - self._unavailable_logged >= UNAVAILABLE_LOG_INTERVAL:  # one line per outage, not per miss
                    self._unavailable_logged = now
                    log.warning("cache manager unavailable (%s): fetching misses directly, not caching them", exc)
                return self._fetched(self.direct.get(hash_))
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
        return self._fetched(self.direct.get(hash_))

    def _fetch_with_lease(self, hash_: str) -> Blob:
        """Hold the lease: relay the origin's bytes to the caller as they arrive (see _Relay)."""
        try:
            stream = self.origin.stream(hash_)
        except BlobNotFound:
            self._report(self.manager.failed, hash_, "notfound")
            raise
        except Exception as exc:
            count_origin_failure(exc)
            self._report(self.manager.failed, hash_, "error", str(exc))
            if isinstance(exc, OriginError):
                raise
            raise OriginError(str(exc)) from exc
        try:
            room = self.manager.reserve(hash_, stream.size)
        except (ipc.IpcError, TimeoutError) as exc:  # no room was made: relay it without caching it
            log.warning("cache manager did not reserve room for %s: %s", hash_[:8], exc)
            room = [False] * len(self.caches)
        writers = {}
        for i, (cache, keep) in enumerate(zip(self.caches, room, strict=True)):
            if keep:
                try:
                    writers[i] = cache.writer(hash_, durable=False, verify=False)  # _Relay hashes once
                except OSError as exc:
                    self._copy_failed(i, exc)
        relay = _Relay(self, hash_, stream, writers)
        return StreamedBlob(hash_, stream.size, relay.chunks(), stream.trace, relay.close)

    def _fetched(self, blob: Blob) -> Blob:
        """A blob fetched from the origin outside a lease: it exists, so no process may remember it as missing."""
        misses.stored(blob.hash)
        return self._remember(blob)

    def _room_made(self, cache_index: int, exc: OSError, size: int) -> bool:
        """On a full cache disk, ask the manager to make room for `size` bytes; True when it did."""
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or self.manager is None:
            return False
        try:
            return self.manager.nospace(cache_index, size)
        except (ipc.IpcError, TimeoutError) as failure:
            log.warning("cache manager did not make room: %s", failure)
            return False

    def _copy_failed(self, cache_index: int, exc: OSError) -> None:
        """Count and log a cache copy given up on (the blob is served or stored all the same)."""
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        metrics.CACHE_WRITE_FAILURES_TOTAL.labels(reason="nospace" if full else "error").inc()
        log.error("cannot write into the disk cache %s: %s", self.caches[cache_index].root, exc.strerror or exc)

    def _remember(self, blob: Blob) -> Blob:
        if self.mem is not None and blob.size and not isinstance(blob, StreamedBlob):
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
        misses.stored(hash_)
        self._write_through(hash_, data)
        if self.on_stored is not None:
            self.on_stored(hash_, False)

    def put_sd(self, hash_: str, data: bytes) -> None:
        self.origin.put_sd(hash_, data)
        misses.stored(hash_)
        self._write_through(hash_, data)
        if self.on_stored is not None:
            self.on_stored(hash_, True)

    def upload(self, hash_: str, size: int) -> Upload:
        """A content blob streamed into the origin and, alongside, into cache copies; `commit` returns
        once the origin holds it durably (the copies are renamed into place after that)."""
        return _TeeUpload(self, hash_, size)

    def _write_through(self, hash_: str, data: bytes) -> None:
        """Copy an upload (durable at the origin already) into the disk caches, room reserved first."""
        if not self.caches:
            return
        room = [True] * len(self.caches)
        if self.manager is not None:
            try:
                room = self.manager.admit(hash_, len(data))
            except (ipc.IpcError, TimeoutError) as exc:  # no room was made: the cache does without this copy
                log.warning("cache manager did not make room for upload %s: %s", hash_[:8], exc)
                return
        for i, (cache, keep) in enumerate(zip(self.caches, room, strict=True)):
            for _attempt in (1, 2):
                if not keep:
                    break
                try:
                    off_hub(_copy_into, cache, hash_, data)
                    break
                except OSError as exc:  # the origin has it; the cache is only a copy
                    keep = _attempt == 1 and self._room_made(i, exc, len(data))
                    if not keep:
                        self._copy_failed(i, exc)

    def delete(self, hash_: str) -> None:
        self.origin.delete(hash_)
        for store in [*self.caches, *([self.mem] if self.mem is not None else [])]:
            store.delete(hash_)

    def shutdown(self) -> None:
        self.origin.shutdown()


def _copy_into(cache: DiskStore, hash_: str, data: bytes) -> None:
    """A cache copy: renamed into place whole, not fsynced (appliance/cache/crashcheck.py covers a crash)."""
    with cache.writer(hash_, durable=False, verify=False) as writer:
        writer.write(data)
        writer.commit()


class _Relay:
    """A leased miss in flight: origin bytes -> the client, hashed as they pass, copied into the caches.

    The chunk that completes the announced size is handed out only after the SHA-384 matched and the
    cache copies were renamed into place, so a bad blob never reaches a client whole, and never a cache.
    `close` (always called: the Blob is a context manager) reports the outcome to the cache manager; a
    client that went away mid-blob does not cost the waiters a second origin fetch: the rest is read
    into the cache first.
    """

    def __init__(self, tiered: TieredStore, hash_: str, stream: BlobStream, writers: dict[int, BlobWriter]):
        self.tiered, self.hash, self.stream, self.writers = tiered, hash_, stream, writers
        self.source = iter(stream)
        self.sha = hashlib.sha384()
        self.received = 0
        self.kept: list[bytes] | None = [] if tiered.mem is not None else None  # for the memory tier
        self.state = "running"  # -> "complete" | "failed", then "reported"

    def chunks(self) -> Iterator[bytes]:
        while self.received < self.stream.size:
            yield self._step()

    def _step(self) -> bytes:
        try:
            chunk = next(self.source, b"")
            if not chunk:
                raise OriginError(f"origin ended {self.hash[:8]} after {self.received} of {self.stream.size} bytes")
            self.received += len(chunk)
            if self.received > self.stream.size:
                raise OriginError(f"origin sent more than the {self.stream.size} bytes it announced for "
                                  f"{self.hash[:8]}")
            self.sha.update(chunk)
            self._write(chunk)
            if self.kept is not None:
                self.kept.append(chunk)
            if self.received == self.stream.size:
                if next(self.source, None) is not None:  # also lets the store finish (its connection is reused)
                    raise OriginError(f"origin sent more than the {self.stream.size} bytes it announced for "
                                      f"{self.hash[:8]}")
                if self.sha.hexdigest() != self.hash:
                    raise HashMismatch(f"origin sent {self.received} bytes for {self.hash[:8]} that do not match "
                                       "its hash")
                self._commit()
                self.state = "complete"
                misses.stored(self.hash)
                if self.kept is not None:
                    self.tiered._remember(Blob(self.hash, data=b"".join(self.kept), trace=self.stream.trace))
                    self.kept = None
            return chunk
        except Exception as exc:
            self._fail(exc)
            raise

    def _write(self, chunk: bytes) -> None:
        for i, writer in list(self.writers.items()):
            try:
                writer.write(chunk)
            except OSError as exc:  # a full or broken cache disk: the client still gets its blob, uncached
                self._drop(i, writer, exc)

    def _commit(self) -> None:
        for i, writer in list(self.writers.items()):
            try:
                writer.commit()
            except OSError as exc:
                self._drop(i, writer, exc)

    def _drop(self, i: int, writer: BlobWriter, exc: OSError) -> None:
        # A copy cut short cannot be resumed (part of the chunk may be in the file): drop it, make room for
        # the next one.
        writer.abort()
        del self.writers[i]
        self.tiered._copy_failed(i, exc)
        self.tiered._room_made(i, exc, self.stream.size)

    def _fail(self, exc: Exception) -> None:
        if self.state != "running":
            return
        self.state = "failed"
        for writer in self.writers.values():
            writer.abort()
        self.stream.close()
        count_origin_failure(exc)
        log.warning("miss of %s failed after %d of %d bytes: %s", self.hash[:8], self.received, self.stream.size,
                    exc)
        manager = self.tiered.manager
        self.tiered._report(manager.failed, self.hash, "error", str(exc))
        self.state = "reported"

    def close(self) -> None:
        """Report the outcome; a relay its client left unfinished is completed into the cache first."""
        if self.state == "running" and self.writers:
            try:
                while self.state == "running":
                    self._step()
            except Exception:
                return  # _step reported the failure
        manager = self.tiered.manager
        if self.state == "complete" and self.writers:
            self.state = "reported"
            self.stream.close()
            self.tiered._report(manager.done, self.hash, self.stream.size)
        elif self.state in ("running", "complete"):  # nothing was cached: a waiter takes the lease over
            self.state = "reported"
            for writer in self.writers.values():
                writer.abort()
            self.stream.close()
            self.tiered._report(manager.failed, self.hash, "retry", "")


def count_origin_failure(exc: BaseException) -> None:
    """Count a failed origin fetch by reason (a not-found answer is no failure)."""
    if isinstance(exc, HashMismatch):
        reason = "hash_mismatch"
    elif isinstance(exc, FirstByteTimeout):
        reason = "first_byte_timeout"
    elif isinstance(exc, IdleTimeout):
        reason = "idle_timeout"
    else:
        reason = "error"
    metrics.ORIGIN_FAILURES_TOTAL.labels(reason=reason).inc()
class _TeeUpload(Upload):
    """TieredStore.upload: every chunk goes to the origin's upload and to a cache copy per disk cache that
    the manager admitted it into (room is made before the first byte, so a full cache never overshoots)."""

    def __init__(self, tiered: TieredStore, hash_: str, size: int):
        self.tiered = tiered
        self.hash = hash_
        self.size = size
        self.origin = tiered.origin.upload(hash_, size)
        self.copies: dict[int, BlobWriter] = {}
        try:
            for i, (cache, keep) in enumerate(zip(tiered.caches, self._room(), strict=True)):
                if keep:
                    try:
                        self.copies[i] = cache.writer(hash_, durable=False, verify=False)
                    except OSError as exc:
                        tiered._copy_failed(i, exc)
        except BaseException:
            self.abort()  # the origin's upload may have started (a streamed S3 PUT): never leave it waiting
            raise

    def _room(self) -> list[bool]:
        tiered = self.tiered
        if not tiered.caches or tiered.manager is None:
            return [True] * len(tiered.caches)
        try:
            return tiered.manager.admit(self.hash, self.size)
        except (ipc.IpcError, TimeoutError) as exc:  # no room was made: the caches do without this copy
            log.warning("cache manager did not make room for upload %s: %s", self.hash[:8], exc)
            return [False] * len(tiered.caches)

    def write(self, chunk) -> None:
        self.origin.write(chunk)
        for i, copy in list(self.copies.items()):
            try:
                copy.write(chunk)
            except OSError as exc:  # the origin has the blob; the cache only loses a copy
                self._drop(i, exc)

    def commit(self) -> None:
        self.origin.commit()  # durable in the origin: what the receipt promises
        misses.stored(self.hash)
        for i, copy in list(self.copies.items()):
            try:
                copy.commit()
            except OSError as exc:
                self._drop(i, exc)
        if self.tiered.on_stored is not None:
            self.tiered.on_stored(self.hash, False)

    def abort(self) -> None:
        self.origin.abort()
        for copy in self.copies.values():
            copy.abort()

    def _drop(self, i: int, exc: OSError) -> None:
        self.copies.pop(i).abort()
        self.tiered._copy_failed(i, exc)
        self.tiered._room_made(i, exc, self.size)
