"""The HTTP/3 role: asyncio + qh3 on config.http3_peer_port (UDP), the one role that is not gevent.

Several of these processes run (http3_processes, one per core by default), each on its own UDP socket that
the supervisor opened with SO_REUSEPORT and keeps across restarts: the kernel spreads clients over them by
a hash of the client's address and port, so a QUIC connection stays on one process while that address does
not change (a client that migrates to a new address or port lands on another process and must reconnect).

Reads follow the workers' tiered logic exactly by reusing TieredStore from pool threads (it is
thread-safe, and its CacheManagerClient is a blocking IPC client, which is fine in a thread): disk
caches, then local storage, straight from the files; a miss asks the cache manager and, holding the
lease, fetches from the origin, verifies it, writes it into the disk caches and reports back. That is
simpler than a second, asyncio implementation of the same protocol, and it keeps one copy of the rules.
The memory cache is left out: it is per process and this role is not where hot blobs are served.
Blocklisted streams are not served: the cache manager keeps the list current, and this role re-reads it
(the state file within 2 s of a change, the database's table every 30 s) as the workers do.

Signals: TERM graceful (new requests get 503, responses in flight finish up to graceful_timeout,
exit 0), INT/QUIT fast, USR1 reopen logs. The heartbeat runs on the event loop every second, so a
stalled loop shows as a stale heartbeat.
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal

from appliance import logs, misses
from appliance.blocklist import Blocklist, BlocklistError
from appliance.http3.quic import server_configuration
from appliance.http3.server import BlobService, start_server
from appliance.http3.tls import CertificateError, ServerCertificate, load_configured, load_or_create
from appliance.protected import ProtectedContent
from appliance.scoreboard import READY, STOPPING
from appliance.stores.compose import CompositionError, build_origin, disk_cache_specs
from appliance.stores.disk import DiskStore
from appliance.stores.tiered import REPORT_INTERVAL, CacheManagerClient, TieredStore
from workers.child import BootError, ChildContext

log = logging.getLogger("http3")

BLOCKLIST_FILE_CHECK = 2.0  # seconds between checks of the blocklist state file (a stat)
BLOCKLIST_DB_RELOAD = 30.0  # seconds between re-reads of the database's `blocked` table


def certificate(ctx: ChildContext) -> ServerCertificate:
    """The configured certificate, or the self-signed one in <state_dir>/http3/ (BootError if unusable)."""
    config = ctx.config
    try:
        if config.http3_cert:
            return load_configured(config.http3_cert, config.http3_key)
        if config.http3_key:
            raise CertificateError("http3_key is set but http3_cert is not")
        return load_or_create(os.path.join(os.path.abspath(config.state_dir), "http3"))
    except CertificateError as exc:
        raise BootError(str(exc)) from None


def build_store(ctx: ChildContext) -> tuple[TieredStore, CacheManagerClient | None, Blocklist | None]:
    config = ctx.config
    try:
        origin = build_origin(config)
        specs = disk_cache_specs(config)
        caches = [DiskStore(spec.path) for spec in specs]
        blocklist = None
        if not config.disable_blocklist:
            blocklist = Blocklist.from_config(config, db=origin.database, stores=[origin.store, *caches])
            blocklist.load()
    except (CompositionError, BlocklistError, ValueError) as exc:
        raise BootError(str(exc)) from None
    except OSError as exc:  # a storage or cache directory that cannot be created
        raise BootError(f"cannot use {exc.filename}: {exc.strerror}") from None
    manager = CacheManagerClient(ctx.socket_path("cache")) if caches else None
    store = TieredStore(origin.store, local=origin.local, caches=caches, manager=manager,
                        blocked=blocklist.is_blocked if blocklist is not None else None)
    return store, manager, blocklist


def protected_content(ctx: ChildContext) -> ProtectedContent | None:
    """The protected-content list, shared with the workers through <runtime_dir>/protected.json."""
    if not ctx.config.protected_content_url:
        return None
    return ProtectedContent.from_config(ctx.config, shared=os.path.join(ctx.runtime_dir, "protected.json"))


# glibc malloc settings for this process (mallopt parameters). By default a 2 MiB blob (read from disk, framed,
# copied into the QUIC stack's queue) is a fresh mmap each time and a freed heap top is handed back to the
# kernel: every blob then page-faults its memory in again. Measured: 10% of the server's CPU per MB.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_SETTINGS = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 8 << 20), (M_TOP_PAD, 2 << 20))


def tune_malloc() -> bool:
    """Keep blob-sized buffers on the heap and up to 8 MiB of free heap top an arena; False without glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS)


def main(ctx: ChildContext) -> int:
    if not tune_malloc():
        log.debug("http3: malloc settings not applied (not glibc)")
    if not {"all", "http3"} & set(ctx.verbose):
        logging.getLogger("quic").setLevel(logging.WARNING)  # the QUIC stack logs every handshake at INFO
    cert = certificate(ctx)
    misses.share(ctx.runtime_dir)  # before the service builds its misses cache
    store, manager, blocklist = build_store(ctx)
    service = BlobService(store, queue_size=ctx.config.request_queue_size, protected=protected_content(ctx),
                          edge_token=ctx.config.upstream_edge_token)
    # Every packet allocates a few tuples; with the boot-time heap frozen, the collections they trigger no longer
    # walk the modules and settings loaded at boot.
    gc.freeze()
    try:
        return asyncio.run(_serve(ctx, service, manager, blocklist, cert))
    finally:
        service.shutdown_pools()
        store.shutdown()


async def _serve(ctx: ChildContext, service: BlobService, manager: CacheManagerClient | None,
                 blocklist: Blocklist | None, cert: ServerCertificate) -> int:
    config = ctx.config
    loop = asyncio.get_running_loop()
    host, port = config.listen_address or "0.0.0.0", config.http3_peer_port
    sock = ctx.listener("http3")
    if sock is None:
        raise BootError("no UDP socket was handed to the HTTP/3 process")
    server = await start_server(sock, server_configuration(cert.certificate, cert.private_key), service)

    stop, fast = asyncio.Event(), asyncio.Event()

    def on_signal(graceful: bool) -> None:
        stop.set()
        if not graceful:
            fast.set()

    loop.add_signal_handler(signal.SIGTERM, on_signal, True)
    loop.add_signal_handler(signal.SIGINT, on_signal, False)
    loop.add_signal_handler(signal.SIGQUIT, on_signal, False)
    loop.add_signal_handler(signal.SIGUSR1, logs.reopen)

    def status() -> dict:
        return {"connections": len(service.connections), "requests": service.requests}

    async def housekeeping() -> None:
        while True:
            ctx.post(STOPPING if stop.is_set() else READY, status())
            if manager is not None:
                loop.run_in_executor(service.aux_pool, _flush_quietly, manager)
            if not ctx.parent_alive():
                log.error("supervisor is gone; exiting")
                os._exit(1)
            await asyncio.sleep(min(1.0, REPORT_INTERVAL))

    keeper = loop.create_task(housekeeping())
    reloader = loop.create_task(_reload_blocklist(blocklist, service.aux_pool)) if blocklist is not None else None
    log.info("serving HTTP/3 on %s:%d/udp (certificate %s, sha256 %s)", host, port, cert.source, cert.fingerprint)
    await stop.wait()
    ctx.post(STOPPING, status())
    if not fast.is_set():
        drain = loop.create_task(service.drain(config.graceful_timeout))
        fast_wait = loop.create_task(fast.wait())
        await asyncio.wait({drain, fast_wait}, return_when=asyncio.FIRST_COMPLETED)
        fast_wait.cancel()
        if not drain.done() or not drain.result():
            log.warning("stopping with %d HTTP/3 requests unfinished", service.in_flight)
        drain.cancel()
    service.stopping = True
    service.close_connections()  # CONNECTION_CLOSE goes out now; clients stop at once
    await asyncio.sleep(0.05)  # let the transport flush the close frames
    server.close()
    keeper.cancel()
    if reloader is not None:
        reloader.cancel()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1):
        loop.remove_signal_handler(sig)
    log.info("stopped (%d requests served)", service.requests)
    return 0


async def _reload_blocklist(blocklist: Blocklist, pool) -> None:
    """Pick up the blocks the cache manager keeps: a changed state file, or the database table periodically."""
    loop = asyncio.get_running_loop()
    seen = None  # the first check reloads: the file may have changed since the load at boot
    while True:
        if blocklist.state_file is None:
            await asyncio.sleep(min(BLOCKLIST_DB_RELOAD, blocklist.interval))
        else:
            await asyncio.sleep(BLOCKLIST_FILE_CHECK)
            current = _file_version(blocklist.state_file)
            if current == seen:
                continue
            seen = current
        try:
            await loop.run_in_executor(pool, blocklist.load)
        except Exception as exc:  # what is known stays blocked; try again next time
            log.warning("cannot reload the blocklist: %s", exc)


def _file_version(path: str | None) -> tuple | None:
    try:
        stat = os.stat(path) if path else None
    except FileNotFoundError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino) if stat else None


def _flush_quietly(manager: CacheManagerClient) -> None:
    try:
        manager.flush_accesses()
    except Exception as exc:  # recency hints only; never worth a crash
        log.debug("access report failed: %s", exc)
