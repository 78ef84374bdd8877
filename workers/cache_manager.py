"""The cache-manager process: owns every disk cache's index and eviction, and single-flight misses.

Protocol (msgpack-rpc on <runtime_dir>/cache.sock, see appliance/ipc.py):
  request  fetch(hash)              -> "lease" | "ready" | "notfound" | "error:<message>"
           The first asker of a cold hash gets "lease" and must answer done/failed; the others wait
           for that outcome. A leaseholder that disconnects hands the lease to the next waiter.
  request  reserve([hash, size])    -> [bool per disk cache]: the leaseholder has the blob; room is made
           (other blobs evicted) before it writes, so a cache never holds more than its size however
           many misses are written at once; it writes the blob into the caches marked true
  request  done([hash, size])       the leaseholder wrote the blob into the disk caches
  request  failed([hash, kind, msg])  kind "notfound" (remembered in the negative cache), "error", or
           "retry" (the leaseholder cached nothing through no fault of the origin: a waiter takes over)
  request  status()                 the cache section of `appliancectl status`
  request  nospace([cache, size])   a write into disk cache number `cache` met ENOSPC: room is made from the
           filesystem's free space; true when blobs were evicted (an upload's copy is tried once more)
  request  admit([hash, size])      -> [bool per disk cache]: an upload is about to be written through;
           room is made first (as for reserve), and it is written into the caches marked true
  notify   accessed([[hash, uses], ...])  batched cache hits (recency / frequency)
A lease that ends without `done` forgets whatever was reserved for a file that was not written.
Workers read cached files directly; this process only decides what stays. Index writes block this
process's hub, which is why the index lives here and not in the workers.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

import gevent
from gevent.event import Event
from gevent.server import StreamServer

from appliance import ipc, logs, metrics
from appliance.blob import MAX_BLOB_SIZE
from appliance.cache import crashcheck
from appliance.cache.index import CacheIndex, CacheIndexError
from appliance.cache.scan import CacheLoader, blob_path
from appliance.cache.spec import DiskCacheSpec
from appliance.scoreboard import READY, STOPPING
from appliance.stores.compose import CompositionError, disk_cache_specs
from appliance.stores.disk import DiskStore
from workers.child import BootError, ChildContext

log = logging.getLogger("cache")

NEGATIVE_TTL = 300.0  # reflector.go's misses cache lives 5 minutes
NEGATIVE_MAX = 100_000
FLUSH_INTERVAL = 1.0  # the index is saved and the free space checked this often
MIN_RESERVE = MAX_BLOB_SIZE  # kept free on a cache's filesystem whatever disk_cache_reserve_percent says


class Layer:
    """One disk cache: its directory, its index and its counters.

    A cache is only a speed-up, so nothing here may stop the appliance (issue 15):
    - capacity: the smaller of the configured size and what the filesystem can hold (the cache's bytes plus
      the free space, minus a reserve), checked every second and before each admission, so a cache larger
      than its disk evicts instead of filling it; a cache write that still meets ENOSPC makes room (nospace);
    - index: one that cannot be opened is rebuilt in memory from a scan, one that cannot be written is no
      longer saved; both are logged once and reported in `degraded` (status and metrics).
    """

    def __init__(self, spec: DiskCacheSpec, localdb_conn: str, reserve_percent: float = 2.0):
        self.spec = spec
        self.root = spec.path
        self.configured = spec.size_bytes
        self.reserve_percent = min(max(reserve_percent, 0.0), 50.0)
        self.capacity_note: str | None = None  # why the capacity is below the configured size
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise BootError(f"cannot create the disk cache directory {self.root}: {exc.strerror}") from None
        self.index = self._open_index(localdb_conn)
        self.evictions = metrics.CACHE_EVICT_TOTAL.labels(cache_type="disk", component="reflector")

    def _open_index(self, localdb_conn: str):
        from appliance.cache import open_index

        return open_index(self.spec, localdb_conn)

    def load(self) -> None:
        try:
            overflow = self.index.load()
        except CacheIndexError as exc:
            if not isinstance(self.index, CacheIndex):
                raise BootError(str(exc)) from None
            log.error("cache %s: %s; serving with an index rebuilt in memory from a scan, not saved",
                      self.root, exc)
            self.index.run_in_memory(str(exc))
            overflow = []
        except Exception as exc:
            from appliance.db import DatabaseError  # localdb only: pymysql is not loaded otherwise

            if not isinstance(exc, DatabaseError):
                raise
            raise BootError(f"cache {self.root}: cannot load its localdb index: {exc}") from None
        self.evict(overflow)
        self.fit_to_filesystem()

    def flush(self) -> None:
        """Save the index; a failure turns persistence off (loudly, once) instead of stopping the cache."""
        try:
            self.index.flush()
        except CacheIndexError as exc:
            log.error("cache %s: %s; the index is no longer saved (the next start rescans the directory)",
                      self.root, exc)

    def fit_to_filesystem(self, need: int = 0) -> bool:
        """Set the capacity to what the filesystem can hold, evicting when it shrinks (`need`: bytes a write
        could not get); True when blobs were evicted."""
        try:
            st = os.statvfs(self.root)
        except OSError as exc:
            if self.capacity_note != "unknown free space":  # once, not at every admission
                log.warning("cache %s: cannot read its free space: %s", self.root, exc)
            self.capacity_note = "unknown free space"
            return False
        reserve = max(int(st.f_blocks * st.f_frsize * self.reserve_percent / 100), MIN_RESERVE)
        holdable = self.index.used_bytes + st.f_bavail * st.f_frsize - reserve - need
        capacity = max(1, min(self.configured, holdable))
        note = None
        if capacity < self.configured:
            note = (f"its filesystem holds {_size(capacity)} of the {_size(self.configured)} configured "
                    f"({_size(reserve)} kept free)")
        if (note is None) != (self.capacity_note is None):
            if note:
                log.warning("cache %s: %s", self.root, note)
            else:
                log.info("cache %s: back to its configured %s", self.root, _size(self.configured))
        self.capacity_note = note
        if capacity == self.index.capacity:
            return False
        evicted = self.index.resize(capacity)
        self.evict(evicted)
        return bool(evicted)

    def degraded(self) -> dict[str, str]:
        """reason -> message, for status and the appliance_cache_degraded metric."""
        reasons = {}
        if self.capacity_note:
            reasons["capacity"] = f"{self.root}: {self.capacity_note}"
        if self.index.persistence_error:
            reasons["index"] = f"{self.root}: index not saved: {self.index.persistence_error}"
        return reasons

    def add(self, hash_: str, size: int) -> bool:
        """Index a blob (evicting others to make room); False when it was refused (it does not fit)."""
        self.fit_to_filesystem()  # one statvfs: admission follows the disk, not only the last periodic check
        evicted = self.index.add(hash_, size)
        self.evict(evicted)
        return hash_ not in evicted

    def forget_missing(self, hash_: str) -> None:
        """Drop the entry of a blob whose file is not there (a reservation that was never written)."""
        if hash_ in self.index and not os.path.exists(blob_path(self.root, hash_)):
            self.index.forget(hash_)

    def evict(self, hashes: list[str]) -> None:
        for hash_ in hashes:
            try:
                os.unlink(blob_path(self.root, hash_))  # open readers keep their file: unlink is safe
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot evict %s: %s", hash_[:8], exc)
                continue
            self.evictions.inc()

    def stats(self) -> dict:
        stats = dict(self.index.stats())
        stats.update(path=self.root, manager=self.spec.manager, configured_capacity=self.configured,
                     persistent=self.index.persistence_error is None)
        return stats

    def export(self, stats: dict) -> None:
        """The gauges the dashboard and the "disk cache near full" alert read."""
        metrics.CACHE_USED_BYTES.labels(path=self.root).set(int(stats.get("used_bytes", 0)))
        metrics.CACHE_CAPACITY_BYTES.labels(path=self.root).set(int(stats.get("capacity", 0)))
        metrics.CACHE_BLOBS.labels(path=self.root).set(int(stats.get("blobs", 0)))
        try:
            fs = os.statvfs(self.root)
        except OSError:
            return
        metrics.CACHE_FS_FREE_BYTES.labels(path=self.root).set(fs.f_bavail * fs.f_frsize)


def _size(n: int) -> str:
    return f"{n / 1024 ** 2:.1f} MiB" if n < 1024 ** 3 else f"{n / 1024 ** 3:.1f} GiB"


class Flight:
    __slots__ = ("holder", "done", "outcome", "waiters", "started")

    def __init__(self, holder: int):
        self.holder = holder
        self.started = time.monotonic()
        self.done = Event()
        self.outcome = ""
        self.waiters = 0


class CacheManager:
    def __init__(self, layers: list[Layer]):
        self.layers = layers
        self.flights: dict[str, Flight] = {}
        self.negative: dict[str, float] = {}
        self.hits = 0
        self.misses = 0
        self.origin_fetches = 0
        self.waiting = metrics.CACHE_WAITING_REQUESTS.labels(cache_type="sf_cache-manager", component="reflector")
        self.in_flight = metrics.CACHE_ORIGIN_REQUESTS.labels(cache_type="sf_cache-manager", component="reflector")

    # -- requests -----------------------------------------------------------------------------------
    def fetch(self, conn: int, hash_: str) -> str:
        self.misses += 1
        while True:
            expiry = self.negative.get(hash_)
            if expiry is not None:
                if expiry > time.monotonic():
                    return "notfound"
                del self.negative[hash_]
            flight = self.flights.get(hash_)
            if flight is None:
                self.flights[hash_] = Flight(conn)
                for layer in self.layers:
                    layer.index.pin(hash_)
                self.origin_fetches += 1
                self.in_flight.inc()
                return "lease"
            flight.waiters += 1
            self.waiting.inc()
            try:
                flight.done.wait()
            finally:
                flight.waiters -= 1
                self.waiting.dec()
            if flight.outcome != "retry":
                return flight.outcome

    def finish(self, conn: int, hash_: str, outcome: str) -> None:
        flight = self.flights.get(hash_)
        if flight is None or flight.holder != conn:
            return
        del self.flights[hash_]
        self.in_flight.dec()
        kind = {"ready": "ok", "notfound": "notfound", "retry": "abandoned"}.get(outcome, "error")
        metrics.ORIGIN_FETCHES_TOTAL.labels(outcome=kind).inc()
        if kind == "ok":
            metrics.ORIGIN_FETCH_SECONDS.observe(time.monotonic() - flight.started)
        for layer in self.layers:
            layer.index.unpin(hash_)
            if outcome != "ready":
                layer.forget_missing(hash_)
        flight.outcome = outcome
        flight.done.set()

    def reserve(self, conn: int, hash_: str, size: int) -> list[bool]:
        flight = self.flights.get(hash_)
        if flight is None or flight.holder != conn:  # not this connection's lease (any more): write nothing
            return [False] * len(self.layers)
        return [layer.add(hash_, size) for layer in self.layers]

    # -- notifications ------------------------------------------------------------------------------

    def done(self, conn: int, hash_: str, size: int) -> None:
        self.finish(conn, hash_, "ready")

    def failed(self, conn: int, hash_: str, kind: str, message: str) -> None:
        if kind == "notfound":
            if len(self.negative) >= NEGATIVE_MAX:
                now = time.monotonic()
                self.negative = {h: t for h, t in self.negative.items() if t > now}
                if len(self.negative) >= NEGATIVE_MAX:
                    self.negative.clear()
            self.negative[hash_] = time.monotonic() + NEGATIVE_TTL
            self.finish(conn, hash_, "notfound")
        elif kind == "retry":
            self.finish(conn, hash_, "retry")
        else:
            self.finish(conn, hash_, f"error:{message}")

    def connection_closed(self, conn: int) -> None:
        for hash_, flight in list(self.flights.items()):
            if flight.holder == conn:
                self.finish(conn, hash_, "retry")  # a waiter takes the lease over

    def admit(self, hash_: str, size: int) -> list[bool]:
        self.negative.pop(hash_, None)
        return [layer.add(hash_, size) for layer in self.layers]

    def nospace(self, layer: int, size: int) -> bool:
        """A cache write met ENOSPC: fit that cache to its filesystem with `size` more bytes free; True when
        blobs were evicted."""
        if not 0 <= layer < len(self.layers):
            return False
        log.warning("cache %s: a write of %d bytes found the disk full; making room", self.layers[layer].root, size)
        return self.layers[layer].fit_to_filesystem(need=size)

    # -- notifications ------------------------------------------------------------------------------

    def accessed(self, counts: list) -> None:
        uses = [hash_ for hash_, n in counts for _ in range(int(n))]  # every read is a use (lfu counts them)
        self.hits += len(uses)
        for layer in self.layers:
            layer.index.touch(*uses)

    def degraded(self) -> dict[str, str]:
        """reason -> message for every way a cache runs degraded (none: the cache is whole)."""
        reasons: dict[str, str] = {}
        for layer in self.layers:
            for reason, message in layer.degraded().items():
                reasons[reason] = f"{reasons[reason]}; {message}" if reason in reasons else message
        return reasons

    def status(self) -> dict:
        total = self.hits + self.misses
        layers = [layer.stats() for layer in self.layers]
        degraded = self.degraded()
        return {
            "state": "degraded" if degraded else "ok", "degraded": degraded,
            "layers": layers,
            "used_bytes": sum(int(s.get("used_bytes", 0)) for s in layers),
            "capacity_bytes": sum(int(s.get("capacity", 0)) for s in layers),
            "blobs": sum(int(s.get("blobs", 0)) for s in layers),
            "evictions": sum(int(s.get("evictions", 0)) for s in layers),
            "hits": self.hits, "misses": self.misses,
            "hit_ratio": round(self.hits / total, 4) if total else None,
            "origin_fetches": self.origin_fetches, "in_flight": len(self.flights),
            "negative_entries": len(self.negative),
        }


def main(ctx: ChildContext) -> int:
    try:
        specs = disk_cache_specs(ctx.config)
    except CompositionError as exc:
        raise BootError(str(exc)) from None
    layers = [Layer(spec, ctx.config.localdb_conn, ctx.config.disk_cache_reserve_percent) for spec in specs]
    for layer in layers:
        layer.load()
    manager = CacheManager(layers)
    connections = iter(range(1, 1 << 62))

    def handle(sock, _address) -> None:
        conn = next(connections)

        def on_request(method: str, params):
            if method == "fetch":
                return manager.fetch(conn, params)
            if method == "reserve":
                return manager.reserve(conn, params[0], int(params[1]))
            if method == "done":
                return manager.done(conn, params[0], int(params[1]))
            if method == "failed":
                return manager.failed(conn, params[0], params[1], params[2] if len(params) > 2 else "")
            if method == "admit":
                return manager.admit(params[0], int(params[1]))
            if method == "status":
                return manager.status()
            if method == "nospace":
                return manager.nospace(int(params[0]), int(params[1]))
            raise ValueError(f"unknown method {method!r}")

        def on_notify(method: str, params) -> None:
            if method == "accessed":
                manager.accessed(list(params))

        ipc.serve_connection(sock, on_request, on_notify, spawn=gevent.spawn,
                             on_close=lambda: manager.connection_closed(conn))

    path = ctx.socket_path("cache")
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1024)
    server = StreamServer(listener, handle)
    server.start()

    loaders = [gevent.spawn(_load_in_background, layer) for layer in layers if layer.index.needs_scan]
    syncer = gevent.spawn(_sync_caches, layers, ctx.config.cache_sync_interval)
    refresher_stop = threading.Event()
    refresher = _start_blocklist_refresher(ctx, refresher_stop, layers)
    stop = Event()
    handlers = [gevent.signal_handler(s, stop.set) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)]
    handlers.append(gevent.signal_handler(signal.SIGUSR1, logs.reopen))
    log.info("managing %s", ", ".join(f"{s.path} ({s.manager}, {s.size_bytes} bytes)" for s in specs) or
             "no disk cache")
    while not stop.is_set():
        for layer in layers:
            layer.flush()
            layer.fit_to_filesystem()
        status = manager.status()
        for reason in ("capacity", "index"):
            metrics.CACHE_DEGRADED.labels(reason=reason).set(1 if reason in status["degraded"] else 0)
        ctx.post(READY, {"cache": status, "requests": manager.misses + manager.hits})
        for layer, stats in zip(layers, status["layers"], strict=True):
            layer.export(stats)
        if not ctx.parent_alive():
            break
        stop.wait(FLUSH_INTERVAL)
    ctx.post(STOPPING, {"cache": manager.status()})
    server.stop(timeout=1)
    for loader in loaders:
        loader.kill()
    syncer.kill()
    _checkpoint(layers)  # a clean stop: the next boot has nothing to check
    refresher_stop.set()
    if refresher is not None:
        refresher.kill()
    for layer in layers:
        layer.index.close()
    for handler in handlers:
        handler.cancel()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return 0


class IndexedCache(DiskStore):
    """A disk cache as the blocklist purge sees it: a deleted blob leaves the index too, so the cache's size
    and blob count stay true (the purge runs on this process's hub, like every other index call)."""

    def __init__(self, layer: Layer):
        super().__init__(layer.root)
        self.layer = layer

    def delete(self, hash_: str) -> None:
        super().delete(hash_)
        self.layer.index.forget(hash_)


def _start_blocklist_refresher(ctx: ChildContext, stop: threading.Event, layers: list[Layer]):
    """One process of the appliance refreshes the blocklist (and deletes blocked blobs); workers re-read it."""
    config = ctx.config
    if config.disable_blocklist:
        return None
    from appliance.blocklist import Blocklist
    from appliance.stores.compose import build_origin

    origin = build_origin(config)
    caches = [IndexedCache(layer) for layer in layers]
    blocklist = Blocklist.from_config(config, db=origin.database, stores=[origin.store, *caches])
    return gevent.spawn(blocklist.run, stop)


def _sync_caches(layers: list[Layer], interval: float) -> None:
    """Cache copies are not fsynced per blob: sync each cache's file system now and then (crashcheck.py)."""
    while True:
        _checkpoint(layers)
        gevent.sleep(max(0.1, interval))


def _checkpoint(layers: list[Layer]) -> None:
    for layer in layers:
        try:  # syncfs waits for the disk: in a thread, so this process keeps answering meanwhile
            gevent.get_hub().threadpool.apply(crashcheck.checkpoint, (layer.root,))
        except OSError as exc:
            log.warning("cannot sync the disk cache %s: %s", layer.root, exc)


def _load_in_background(layer: Layer) -> None:
    """Adopt an existing (e.g. reflector.go) cache directory while serving, a batch at a time."""
    log.info("indexing %s in the background", layer.root)
    counts = CacheLoader(layer.root, layer.index).run(pause=lambda: gevent.sleep(0.01))
    log.info("indexed %s: %d blobs adopted, %d forgotten, %d refused", layer.root, counts.adopted,
             counts.forgotten, counts.refused)
