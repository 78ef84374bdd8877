"""The HTTP/3 role: asyncio + aioquic on config.http3_peer_port (UDP), the one role that is not gevent.

Reads follow the workers' tiered logic exactly by reusing TieredStore from pool threads (it is
thread-safe, and its CacheManagerClient is a blocking IPC client, which is fine in a thread): disk
caches, then local storage, straight from the files; a miss asks the cache manager and, holding the
lease, fetches from the origin, verifies it, writes it into the disk caches and reports back. That is
simpler than a second, asyncio implementation of the same protocol, and it keeps one copy of the rules.
The memory cache is left out: it is per process and this role is not where hot blobs are served.

Signals: TERM graceful (new requests get 503, responses in flight finish up to graceful_timeout,
exit 0), INT/QUIT fast, USR1 reopen logs. The heartbeat runs on the event loop every second, so a
stalled loop shows as a stale heartbeat.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal

from appliance import logs
from appliance.http3.quic import server_configuration
from appliance.http3.server import BlobService, start_server
from appliance.http3.tls import CertificateError, ServerCertificate, load_configured, load_or_create
from appliance.scoreboard import READY, STOPPING
from appliance.stores.compose import CompositionError, build_origin, disk_cache_specs
from appliance.stores.disk import DiskStore
from appliance.stores.tiered import REPORT_INTERVAL, CacheManagerClient, TieredStore
from workers.child import BootError, ChildContext

log = logging.getLogger("http3")


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


def build_store(ctx: ChildContext) -> tuple[TieredStore, CacheManagerClient | None]:
    try:
        origin = build_origin(ctx.config)
        specs = disk_cache_specs(ctx.config)
    except (CompositionError, ValueError) as exc:
        raise BootError(str(exc)) from None
    caches = [DiskStore(spec.path) for spec in specs]
    manager = CacheManagerClient(ctx.socket_path("cache")) if caches else None
    return TieredStore(origin.store, local=origin.local, caches=caches, manager=manager), manager


def protected_content(ctx: ChildContext):
    """The protected-content checker when one is configured and available (same rule as the workers)."""
    if not ctx.config.protected_content_url:
        return None
    try:
        from appliance.protected import ProtectedContent
    except ImportError:
        return None
    return ProtectedContent(ctx.config.protected_content_url, fail_closed=ctx.config.protected_fail_closed)


def main(ctx: ChildContext) -> int:
    if not {"all", "http3"} & set(ctx.verbose):
        logging.getLogger("quic").setLevel(logging.WARNING)  # aioquic logs every handshake at INFO
    cert = certificate(ctx)
    store, manager = build_store(ctx)
    service = BlobService(store, queue_size=ctx.config.request_queue_size, protected=protected_content(ctx),
                          edge_token=ctx.config.upstream_edge_token)
    try:
        return asyncio.run(_serve(ctx, service, manager, cert))
    finally:
        service.shutdown_pools()
        store.shutdown()


async def _serve(ctx: ChildContext, service: BlobService, manager: CacheManagerClient | None,
                 cert: ServerCertificate) -> int:
    config = ctx.config
    loop = asyncio.get_running_loop()
    host, port = config.listen_address or "0.0.0.0", config.http3_peer_port
    try:
        server = await start_server(host, port, server_configuration(cert.certificate, cert.private_key), service)
    except OSError as exc:
        raise BootError(f"cannot listen on port {port}/udp: {exc.strerror or exc}") from None

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
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1):
        loop.remove_signal_handler(sig)
    log.info("stopped (%d requests served)", service.requests)
    return 0


def _flush_quietly(manager: CacheManagerClient) -> None:
    try:
        manager.flush_accesses()
    except Exception as exc:  # recency hints only; never worth a crash
        log.debug("access report failed: %s", exc)
