"""A gevent worker: the reflector receiver, the TCP peer server and the HTTP server on its slot's sockets.

Signals: TERM graceful (stop accepting, let transfers finish up to the graceful timeout, exit 0),
INT/QUIT fast, USR1 reopen logs. A housekeeping greenlet posts the heartbeat every second (so a stalled
event loop shows as a stale heartbeat), flushes hit reports to the cache manager and exits if the
supervisor is gone.
"""
from __future__ import annotations

import logging
import os
import signal
import time

import gevent
from gevent.event import Event

from appliance import ipc, logs, metrics, misses
from appliance.config import worker_count
from appliance.scoreboard import READY, STOPPING
from appliance.servers.listening import SHARED_SERVICES
from appliance.stores.compose import CompositionError, build_origin, disk_cache_specs
from appliance.stores.disk import DiskStore
from appliance.stores.tiered import REPORT_INTERVAL, CacheManagerClient, TieredStore
from workers.child import BootError, ChildContext

log = logging.getLogger("worker")



def build_stores(ctx: ChildContext):
    """(serving store, underlying store for the receiver, protected checker, cache manager, blocklist)."""
    config = ctx.config
    try:
        origin = build_origin(config)
        specs = disk_cache_specs(config)
    except (CompositionError, ValueError) as exc:
        raise BootError(str(exc)) from None
    except OSError as exc:  # a storage directory that cannot be created: no point in respawning
        raise BootError(f"cannot use {exc.filename}: {exc.strerror}") from None
    caches = []
    for spec in specs:
        try:
            caches.append(DiskStore(spec.path))
        except OSError as exc:  # worded as the cache manager words it: whichever process fails first says it
            raise BootError(f"cannot create the disk cache directory {spec.path}: {exc.strerror}") from None
    mem = None
    if config.mem_cache > 0:
        from appliance.stores.memory import LRUMemoryStore

        mem = LRUMemoryStore(config.mem_cache)
    manager = CacheManagerClient(ctx.socket_path("cache")) if caches else None
    blocklist = None
    if not config.disable_blocklist:
        from appliance.blocklist import Blocklist  # refreshed by the cache manager; workers re-read it

        blocklist = Blocklist.from_config(config, db=origin.database, stores=[origin.store, *caches])
        blocklist.load()
    store = TieredStore(origin.store, local=origin.local, caches=caches, mem=mem, manager=manager,
                        on_stored=None if config.disable_dht else _announcer(ctx),
                        blocked=blocklist.is_blocked if blocklist is not None else None)
    protected = None
    if config.protected_content_url:
        try:
            from appliance.protected import ProtectedContent
        except ImportError:
            ProtectedContent = None
        if ProtectedContent is not None:  # one list for every worker: one fetch per 2 minutes in all
            protected = ProtectedContent.from_config(config, shared=os.path.join(ctx.runtime_dir, "protected.json"))
    return store, origin.store, protected, manager, blocklist


def _announcer(ctx: ChildContext):
    """Tell the DHT process about stored sd blobs (every blob with --dht-announce-all)."""
    dht = ipc.IpcClient(ctx.socket_path("dht"), name="dht", timeout=2.0)
    announce_all = ctx.config.dht_announce_all

    def on_stored(hash_: str, is_sd: bool) -> None:
        if is_sd or announce_all:
            try:
                dht.notify("announce", [hash_])
            except ipc.IpcUnavailable as exc:
                log.warning("cannot tell the DHT about %s: %s", hash_[:8], exc)

    return on_stored


def graceful_stop(servers: list, timeout: float, fast: Event) -> None:
    """Stop accepting, then wait (within `timeout`, cut short when `fast` is set) until every request in
    progress is done and every connection accepted before the stop has had its first request served.

    Keep-alive connections close after their current request; the caller then closes what is left
    (idle keep-alive connections).
    """
    deadline = time.monotonic() + timeout
    for server in servers:
        server.stop_accepting()
    while not fast.is_set() and time.monotonic() < deadline and (
            any(server.fresh for server in servers) or not all(server.wait_idle(0) for server in servers)):
        fast.wait(0.02)


DRAIN_POLL = 0.05  # seconds between reads of the supervisor's drain flag (a byte of shared memory)


def follow_drain(scoreboard, servers: list) -> None:
    """Pause the TCP servers (their port refuses connections; established ones go on) while the supervisor's
    drain flag is set, and resume them when it is cleared. The HTTP server keeps serving: its /health fails.
    Also applies the flag at boot: a worker spawned during a drain starts paused."""
    paused = None
    while True:
        draining = scoreboard.draining
        if draining != paused:
            for server in servers:
                if server.stopping:
                    continue  # a graceful stop took it over
                if draining:
                    server.pause()
                else:
                    server.resume()
            metrics.DRAINING.set(1 if draining else 0)
            if paused is not None:
                log.info("%s", "draining: TCP ports refuse new connections" if draining else "undrained")
            paused = draining
        gevent.sleep(DRAIN_POLL)


BLOCKLIST_DB_RELOAD = 30.0  # seconds between re-reads of the `blocked` table the cache manager keeps current
BLOCKLIST_FILE_CHECK = 2.0  # seconds between checks of the state file (a stat; re-read only when it changed)


def _reload_blocklist(blocklist, on_new_block) -> None:
    """Pick up the blocks the refreshing process keeps; `on_new_block()` after a load that added streams."""
    def load() -> None:
        before = blocklist.blocked_streams()
        blocklist.load()
        if blocklist.blocked_streams() - before:
            on_new_block()

    if blocklist.state_file is None:
        # Never lag the refreshing process by more than one of its intervals: a block it has just made
        # (and purged) must also stop re-uploads here.
        period = min(BLOCKLIST_DB_RELOAD, blocklist.interval)
        while True:
            gevent.sleep(period)
            load()
    seen = None
    while True:
        gevent.sleep(BLOCKLIST_FILE_CHECK)
        try:
            stat = os.stat(blocklist.state_file)
            current = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except FileNotFoundError:
            current = None
        if current != seen:
            seen = current
            load()


def _memory_dropper(store: TieredStore, mem_cache: int):
    """What a worker does on a new block: start its memory tier afresh.

    With --blocklist-delete the refreshing process may purge a stream (and its database rows) before this
    worker has looked up the stream's content blobs, so they cannot be named here to be refused; the disk
    caches and the origin no longer have them, but this worker's memory would keep serving them.
    """
    def drop() -> None:
        if store.mem is not None:
            from appliance.stores.memory import LRUMemoryStore

            store.mem = LRUMemoryStore(mem_cache)
            log.info("blocklist: new blocked streams; memory tier emptied")
    return drop


def _per_worker_share(total: int, workers: int) -> int:
    """A worker's part of the per-IP connection cap. Each worker counts only its own connections (no
    shared counter to lock across processes); SO_REUSEPORT spreads a client's connections evenly over the
    workers, so a client reaches about `total` in all. 0 stays 0 (no cap)."""
    return -(-total // max(workers, 1)) if total > 0 else 0


def main(ctx: ChildContext) -> int:
    config = ctx.config
    misses.share(ctx.runtime_dir)  # before any server builds its misses cache
    store, underlying, protected, manager, blocklist = build_stores(ctx)
    servers = []
    receiver = ctx.listener("receiver")
    if receiver is not None:
        from appliance.servers.receiver import ReceiverServer

        servers.append(ReceiverServer(receiver, store, underlying, timeout=config.upload_timeout,
                                      idle_timeout=config.upload_idle_timeout,
                                      blocked=blocklist.is_blocked if blocklist is not None else None))
    peer = ctx.listener("tcp_peer")
    if peer is not None:
        from appliance.servers.peer import PeerServer

        servers.append(PeerServer(peer, store, idle_timeout=config.peer_idle_timeout, protected=protected))
    http = ctx.listener("http")
    if http is not None:
        from appliance.servers.http import HttpServer

        servers.append(HttpServer(http, store, edge_token=config.upstream_edge_token,
                                  queue_size=config.request_queue_size, protected=protected,
                                  draining=lambda: ctx.scoreboard.draining))
    per_ip = _per_worker_share(config.max_connections_per_ip, worker_count(config))
    for server in servers:
        server.max_per_ip = per_ip
        # a socket every worker shares is paused for a drain by worker 0 alone (appliance/servers/listening.py)
        server.pauses_listener = server.name not in SHARED_SERVICES or ctx.index == 0
    drainer = gevent.spawn(follow_drain, ctx.scoreboard, [s for s in servers if s.name != "http"])
    for server in servers:
        if server.name == "http":
            server.start()  # the TCP servers are started (or paused) by follow_drain

    stop, fast = Event(), Event()

    def on_signal(graceful: bool) -> None:
        if not graceful:
            fast.set()  # also cuts a graceful stop in progress short
        stop.set()

    handlers = [gevent.signal_handler(signal.SIGTERM, on_signal, True),
                gevent.signal_handler(signal.SIGINT, on_signal, False),
                gevent.signal_handler(signal.SIGQUIT, on_signal, False),
                gevent.signal_handler(signal.SIGUSR1, logs.reopen)]

    def status() -> dict:
        return {"connections": sum(s.connections for s in servers), "requests": sum(s.requests for s in servers)}

    def housekeeping() -> None:
        state = READY
        while True:
            ctx.post(STOPPING if stop.is_set() else state, status())
            if manager is not None:
                manager.flush_accesses()
            if not ctx.parent_alive():
                log.error("supervisor is gone; exiting")
                os._exit(1)
            gevent.sleep(min(1.0, REPORT_INTERVAL))

    keeper = gevent.spawn(housekeeping)
    reloader = gevent.spawn(_reload_blocklist, blocklist, _memory_dropper(store, config.mem_cache)) \
        if blocklist is not None else None
    log.info("serving %s", ", ".join(type(s).__name__ for s in servers))
    stop.wait()
    graceful_stop(servers, 0.0 if fast.is_set() else config.graceful_timeout, fast)
    for server in servers:
        server.close_connections()
    keeper.kill()
    drainer.kill()
    if reloader is not None:
        reloader.kill()
    for handler in handlers:
        handler.cancel()
    store.shutdown()
    log.info("stopped (%d requests served)", status()["requests"])
    return 0
