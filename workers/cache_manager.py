"""The cache-manager process: owns every disk cache's index and eviction, and single-flight misses.

Protocol (msgpack-rpc on <runtime_dir>/cache.sock, see appliance/ipc.py):
  request  fetch(hash)              -> "lease" | "ready" | "notfound" | "error:<message>"
           The first asker of a cold hash gets "lease" and must answer done/failed; the others wait
           for that outcome. A leaseholder that disconnects hands the lease to the next waiter.
  request  reserve([hash, size])    -> [bool per disk cache]: the leaseholder has the blob; room is made
           (other blobs evicted) before it writes, so a cache never holds more than its size however
           many misses are written at once; it writes the blob into the caches marked true
  request  done([hash, size])       the leaseholder wrote the blob into the disk caches
  request  failed([hash, kind, msg])  kind "notfound" (remembered in the negative cache) or "error"
  request  status()                 the cache section of `appliancectl status`
  notify   added([hash, size])      an upload was written through into the disk caches
  notify   accessed([[hash, uses], ...])  batched cache hits (recency / frequency)
A lease that ends without `done` forgets whatever was reserved for a file that was not written.
Workers read cached files directly; this process only decides what stays. SQLite calls block this
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
from appliance.cache.index import CacheIndexError
from appliance.cache.scan import CacheLoader, blob_path
from appliance.cache.spec import DiskCacheSpec
from appliance.scoreboard import READY, STOPPING
from appliance.stores.compose import CompositionError, disk_cache_specs
from appliance.stores.disk import DiskStore
from workers.child import BootError, ChildContext

log = logging.getLogger("cache")

NEGATIVE_TTL = 300.0  # reflector.go's misses cache lives 5 minutes
NEGATIVE_MAX = 100_000
FLUSH_INTERVAL = 1.0


class Layer:
    """One disk cache: its directory, its index and its counters."""

    def __init__(self, spec: DiskCacheSpec, localdb_conn: str):
        self.spec = spec
        self.root = spec.path
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
            self.evict(self.index.load())
        except CacheIndexError as exc:
            raise BootError(str(exc)) from None

    def add(self, hash_: str, size: int) -> bool:
        """Index a blob (evicting others to make room); False when it was refused (it does not fit)."""
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
        stats.update(path=self.root, manager=self.spec.manager)
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
        else:
            self.finish(conn, hash_, f"error:{message}")

    def connection_closed(self, conn: int) -> None:
        for hash_, flight in list(self.flights.items()):
            if flight.holder == conn:
                self.finish(conn, hash_, "retry")  # a waiter takes the lease over

    # -- notifications ------------------------------------------------------------------------------
    def added(self, hash_: str, size: int) -> None:
        self.negative.pop(hash_, None)
        for layer in self.layers:
            layer.add(hash_, size)

    def accessed(self, counts: list) -> None:
        uses = [hash_ for hash_, n in counts for _ in range(int(n))]  # every read is a use (lfu counts them)
        self.hits += len(uses)
        for layer in self.layers:
            layer.index.touch(*uses)

    def status(self) -> dict:
        total = self.hits + self.misses
        layers = [layer.stats() for layer in self.layers]
        return {
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
    layers = [Layer(spec, ctx.config.localdb_conn) for spec in specs]
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
            if method == "status":
                return manager.status()
            raise ValueError(f"unknown method {method!r}")

        def on_notify(method: str, params) -> None:
            if method == "added":
                manager.added(params[0], int(params[1]))
            elif method == "accessed":
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
    refresher_stop = threading.Event()
    refresher = _start_blocklist_refresher(ctx, refresher_stop, layers)
    stop = Event()
    handlers = [gevent.signal_handler(s, stop.set) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)]
    handlers.append(gevent.signal_handler(signal.SIGUSR1, logs.reopen))
    log.info("managing %s", ", ".join(f"{s.path} ({s.manager}, {s.size_bytes} bytes)" for s in specs) or
             "no disk cache")
    while not stop.is_set():
        status = manager.status()
        ctx.post(READY, {"cache": status, "requests": manager.misses + manager.hits})
        for layer, stats in zip(layers, status["layers"], strict=True):
            layer.export(stats)
            layer.index.flush()
        if not ctx.parent_alive():
            break
        stop.wait(FLUSH_INTERVAL)
    ctx.post(STOPPING, {"cache": manager.status()})
    server.stop(timeout=1)
    for loader in loaders:
        loader.kill()
    refresher_stop.set()
    if refresher is not None:
        refresher.kill()
    for layer in layers:
        layer.index.flush()
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


def _load_in_background(layer: Layer) -> None:
    """Adopt an existing (e.g. reflector.go) cache directory while serving, a batch at a time."""
    log.info("indexing %s in the background", layer.root)
    counts = CacheLoader(layer.root, layer.index).run(pause=lambda: gevent.sleep(0.01))
    log.info("indexed %s: %d blobs adopted, %d forgotten, %d refused", layer.root, counts.adopted,
             counts.forgotten, counts.refused)
