"""The HTTP/3 blob server (spec §3d), asyncio + qh3: `/get/{hash}[?trace=&edge_token=]` and `/has/{hash}`.

Statuses: 200 blob (Via header with `?trace=true`), 404 `blob not found` (remembered for 5 minutes in a
misses cache), 403 `requested blob is protected` unless `?edge_token=` matches the configured token
(as on HTTP; with no token configured nobody gets a protected blob), 400 for a malformed hash, 500 with
a generic text when the store fails, the details going to the log (reflector.go sent 400 with the error
text; 500 matches our HTTP server and keeps 400 for bad requests), 503 while stopping. `/has/` answers
200 or 404 with reflector.go's JSON body. Any method is accepted, as in reflector.go.

The event loop never blocks: store calls (disk reads, cache-manager IPC, origin fetches) run in thread
pools. At most `queue_size` GETs run at once (an asyncio.Semaphore); a GET keeps its slot until QUIC has
sent the whole response once (qh3's public send-buffer size of the stream is zero; what is then unacknowledged
is bounded by the congestion window) or the send timeout resets the stream, so slow readers cannot make the
server buffer more than `queue_size` blobs.
"""
from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote_plus

from qh3.asyncio.protocol import QuicConnectionProtocol
from qh3.asyncio.server import QuicServer
from qh3.h3.connection import H3_ALPN, ErrorCode, H3Connection
from qh3.h3.events import HeadersReceived
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
    QuicEvent,
    StopSendingReceived,
    StreamReset,
)

from appliance import metrics
from appliance.blob import is_valid_hash
from appliance.errors import BlobNotFound
from appliance.http3.quic import HANDSHAKE_TIMEOUT
from appliance.http3.udp import QuicDatagramTransport
from appliance.logs import Throttle
from appliance.misses import MissesCache
from appliance.stores.base import BlobStore, StreamedBlob
from appliance.trace import Trace

log = logging.getLogger("http3")
INTERNAL_ERROR = b"internal server error\n"  # the 500 body: what failed inside is for the log only

LBRYCRD_ADDRESS = "bJxKvpD96kaJLriqVajZ7SaQTsWWyrGQct"
SEND_TIMEOUT = 60.0  # a client must take a whole blob within this long
MAX_WAITING = 20_000  # GETs waiting for a slot beyond this get 503 (reflector.go's queue held 20,000)
AUX_THREADS = 16  # /has/, protected-content checks, access reports
SEND_POLL = 0.02
# A response body goes to QUIC a chunk at a time, topped up around each transmit while its stream's send buffer
# is below half a chunk. A whole 2 MiB body in qh3's send queue cost the core a copy of what stays queued on every
# acknowledgement (15% of the server's CPU was memmove); a bounded queue keeps that small.
FEED_CHUNK = 256 * 1024
FEED_LOW = FEED_CHUNK // 2
TRANSMIT_RETRY = 0.05
_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}


class BlobService:
    """Routes and blocking work shared by every connection of one server."""

    def __init__(self, store: BlobStore, *, queue_size: int = 200, protected=None, edge_token: str = "",
                 send_timeout: float = SEND_TIMEOUT):
        self.store = store
        self.protected = protected
        self.edge_token = edge_token
        self.send_timeout = send_timeout
        self.queue_size = max(1, queue_size)
        self.misses = MissesCache(enabled=getattr(store, "misses_worth_remembering", True))
        self._throttle = Throttle()
        self.connections: set[Http3ServerProtocol] = set()  # handshake completed
        self.open_connections: set[Http3ServerProtocol] = set()  # every connection holding state, half-open too
        self.requests = 0
        self.stopping = False
        self._queue: asyncio.Semaphore | None = None
        self._waiting = 0
        self._tasks: set[asyncio.Task] = set()
        self._get_pool = ThreadPoolExecutor(self.queue_size, thread_name_prefix="h3-get")
        self.aux_pool = ThreadPoolExecutor(AUX_THREADS, thread_name_prefix="h3-aux")

    # -- requests -------------------------------------------------------------------------------------
    def request_received(self, conn: Http3ServerProtocol, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.requests += 1
        task = asyncio.get_running_loop().create_task(self._serve(conn, stream_id, headers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: Http3ServerProtocol, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        try:
            await self._route(conn, stream_id, dict(headers).get(b":path", b""))
        except Exception:  # a bug must cost one request, not the process
            log.exception("http3: request on stream %d failed", stream_id)
            conn.respond(stream_id, 500, INTERNAL_ERROR)

    async def _route(self, conn: Http3ServerProtocol, stream_id: int, target: bytes) -> None:
        if self.stopping:
            conn.respond(stream_id, 503, b"server is shutting down\n")
            return
        path, _, query = target.partition(b"?")
        if path.startswith(b"/get/"):
            route = self._get
        elif path.startswith(b"/has/"):
            route = self._has
        else:
            conn.respond(stream_id, 404, b"404 page not found\n")
            return
        hash_ = path[5:].decode("latin-1")
        if not is_valid_hash(hash_):
            metrics.DOWNLOAD_FAILURES_TOTAL.labels(server="http3", reason="invalid_blob_hash").inc()
            conn.respond(stream_id, 400, b"invalid blob hash\n")
            return
        await route(conn, stream_id, hash_, _query(query))

    async def _has(self, conn: Http3ServerProtocol, stream_id: int, hash_: str, _query: dict[str, str]) -> None:
        try:
            present = await self._in_pool(self.aux_pool, self.store.has, hash_)
        except Exception as exc:
            self._store_error(conn, stream_id, exc)
            return
        body = json.dumps({"lbrycrd_address": LBRYCRD_ADDRESS, "is_available": present}, separators=(",", ":"))
        conn.respond(stream_id, 200 if present else 404, body.encode(), content_type=b"application/json")

    async def _get(self, conn: Http3ServerProtocol, stream_id: int, hash_: str, query: dict[str, str]) -> None:
        want_trace = query.get("trace", "") in _GO_TRUE
        if self.protected is not None and not self._token_ok(query.get("edge_token", "")):
            if await self._in_pool(self.aux_pool, self.protected.is_protected, hash_):
                metrics.DOWNLOAD_FAILURES_TOTAL.labels(server="http3", reason="protected_blob").inc()
                conn.respond(stream_id, 403, b"requested blob is protected\n")
                return
        if hash_ in self.misses:
            self._not_found(conn, stream_id, Trace.new("http3") if want_trace else None)
            return
        if self._queue is None:
            self._queue = asyncio.Semaphore(self.queue_size)
        if self._waiting >= MAX_WAITING:
            metrics.DOWNLOAD_FAILURES_TOTAL.labels(server="http3", reason="queue_full").inc()
            conn.respond(stream_id, 503, b"too many requests waiting\n")
            return
        metrics.HTTP3_QUEUE_SIZE.inc()
        self._waiting += 1
        queued = True
        try:
            async with self._queue:
                metrics.HTTP3_QUEUE_SIZE.dec()
                self._waiting -= 1
                queued = False
                await self._send_blob(conn, stream_id, hash_, want_trace)
        finally:
            if queued:  # cancelled while waiting for a slot
                metrics.HTTP3_QUEUE_SIZE.dec()
                self._waiting -= 1

    async def _send_blob(self, conn: Http3ServerProtocol, stream_id: int, hash_: str, want_trace: bool) -> None:
        stamp = self.misses.stamp(hash_)  # a blob stored while we look is not remembered as missing
        try:
            body, trace = await self._in_pool(self._get_pool, self._read_blob, hash_)
        except BlobNotFound as exc:
            self.misses.add(hash_, stamp)
            self._not_found(conn, stream_id, (exc.trace or Trace()) if want_trace else None)
            return
        except Exception as exc:
            self._store_error(conn, stream_id, exc)
            return
        # The store's trace as it is (reflector.go); the client stacks its own `http3` hop.
        extra = [(b"via", trace.to_json().encode())] if want_trace else []
        if isinstance(body, StreamedBlob):
            sent = await self._relay(conn, stream_id, body, extra)
        else:
            sent = conn.respond(stream_id, 200, body, content_type=_content_type(body), extra=extra)
        if not sent:
            return
        # Counted once the whole response is handed to QUIC, as reflector.go counts after its write; a
        # client may close the connection before acknowledging the last packets, and that is no error.
        metrics.UDP_OUT_BYTES.inc(len(body) if isinstance(body, bytes) else body.size)
        metrics.BLOB_DOWNLOAD_TOTAL.inc()
        metrics.HTTP3_DOWNLOAD_TOTAL.inc()
        if await conn.sent(stream_id, self.send_timeout) is None:  # the slot is held until then
            kind = metrics.count_error("download", TimeoutError(f"i/o timeout sending {hash_[:8]}"))
            metrics.DOWNLOAD_FAILURES_TOTAL.labels(server="http3", reason=kind).inc()

    def _read_blob(self, hash_: str) -> tuple[bytes | StreamedBlob, Trace]:
        """In a pool thread: the tiered read (disk hit, or a miss through the cache manager and origin). A miss
        being relayed from the origin comes back open, for `_relay`; anything else is read whole."""
        blob = self.store.get(hash_)
        if isinstance(blob, StreamedBlob):
            return blob, blob.trace
        with blob:
            return blob.data, blob.trace

    async def _relay(self, conn: Http3ServerProtocol, stream_id: int, blob: StreamedBlob,
                     extra: list[tuple[bytes, bytes]]) -> bool:
        """A miss sent as the origin's bytes arrive (each chunk pulled in a pool thread). When the chunks end in
        an error (wrong bytes, a stalled origin), the stream is reset before the announced length is complete,
        so no client can take it for the blob. True once the whole blob is handed to QUIC."""
        chunks, sent, started = iter(blob.chunks), 0, False
        try:
            while sent < blob.size:
                try:
                    chunk = bytes(await self._in_pool(self._get_pool, next, chunks))
                except Exception as exc:
                    if started:
                        kind = metrics.count_error("download", exc)
                        metrics.DOWNLOAD_FAILURES_TOTAL.labels(server="http3", reason=kind).inc()
                        conn.abort(stream_id)
                    else:
                        self._store_error(conn, stream_id, exc)
                    return False
                sent += len(chunk)
                if not started:
                    started = True
                    if not conn.start_response(stream_id, 200, blob.size, content_type=_content_type(chunk),
                                               extra=extra):
                        return False
                if not conn.send_body(stream_id, chunk, end=sent >= blob.size):
                    return False  # the client left: closing the relay completes the cache copy
            return True
        finally:
            # Reports the outcome to the cache manager (and reads the rest into the cache when the client
            # left): blocking work, so in the pool too.
            await self._in_pool(self._get_pool, blob.close)

    def _token_ok(self, token: str) -> bool:
        return bool(self.edge_token) and hmac.compare_digest(token.encode(), self.edge_token.encode())

    def _not_found(self, conn: Http3ServerProtocol, stream_id: int, trace: Trace | None) -> None:
        metrics.DOWNLOAD_FAILURES_TOTAL.labels(server="http3", reason="blob_not_found").inc()
        extra = [(b"via", trace.to_json().encode())] if trace is not None else []
        conn.respond(stream_id, 404, b"blob not found\n", extra=extra)

    def _store_error(self, conn: Http3ServerProtocol, stream_id: int, exc: Exception) -> None:
        kind = metrics.count_error("download", exc)
        metrics.DOWNLOAD_FAILURES_TOTAL.labels(server="http3", reason=kind).inc()
        suffix = self._throttle(kind)
        if suffix is not None:  # the details (endpoints, buckets) go to the log, never to the client
            log.log(logging.ERROR if kind == "other" else logging.WARNING, "http3: store error (%s): %s%s", kind,
                    exc, suffix)
        conn.respond(stream_id, 500, INTERNAL_ERROR)

    @staticmethod
    async def _in_pool(pool: ThreadPoolExecutor, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    # -- lifecycle ------------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait up to `timeout` for those in flight; True when all finished."""
        self.stopping = True
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
        return not self._tasks

    def close_connections(self) -> None:
        for conn in list(self.connections):
            conn.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="server stopping")
        for task in list(self._tasks):
            task.cancel()

    def shutdown_pools(self) -> None:
        self._get_pool.shutdown(wait=False, cancel_futures=True)
        self.aux_pool.shutdown(wait=False, cancel_futures=True)


class Http3ServerProtocol(QuicConnectionProtocol):
    """One QUIC connection: HTTP/3 framing, responses, and delivery tracking for the service."""

    def __init__(self, quic: QuicConnection, stream_handler=None, *, service: BlobService):
        super().__init__(quic, stream_handler)
        # Our own references: the base class's attributes are qh3's private business.
        self.quic = quic
        self.loop = asyncio.get_running_loop()
        self.service = service
        self._h3: H3Connection | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._waiters: dict[int, asyncio.Future] = {}  # stream id -> send outcome
        self._feeds: dict[int, list] = {}  # stream id -> [body as a memoryview, bytes handed to QUIC so far]
        self.transport: QuicDatagramTransport | None = None
        self._poller: asyncio.TimerHandle | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self._failed_since: float | None = None

    def transmit(self) -> None:
        """Deferred to the end of this loop turn: the transport feeds a whole batch of datagrams (mostly ACKs)
        one by one through qh3's server, and one transmit after all of them sends one larger, GSO-able flight
        instead of a few packets per ACK."""
        if self._transmit_handle is None:
            self._transmit_handle = self.loop.call_soon(self._transmit_now)

    def _transmit_now(self) -> None:
        self._transmit_handle = None
        try:
            self._top_up()
            self._send_flight()
            while self._feeds and self._top_up():  # a stream ran low during that flight: use the rest of the window
                self._send_flight()
            super().transmit()  # nothing left to send: this re-arms the connection's timer
        except QuicConnectionError as exc:
            # qh3 2.1's core sometimes cannot build a packet ("packet builder capacity exhausted"; seen on the
            # first flight to aioquic clients). The data stays queued in the core; try again shortly, and give
            # up on a connection that keeps failing for as long as a handshake may take.
            self._failed_since = self._failed_since or self.loop.time()
            if self.loop.time() - self._failed_since > HANDSHAKE_TIMEOUT:
                log.debug("http3: dropping a connection whose packets cannot be built: %s", exc)
                self._terminated()
                return
            self._transmit_handle = self.loop.call_later(TRANSMIT_RETRY, self._transmit_now)
        else:
            self._failed_since = None

    def _send_flight(self) -> None:
        """What the connection has to send now, to the transport in one call (qh3's transmit loops in Python over
        every datagram to group them by address; a connection's datagrams go to one address but after a
        migration)."""
        datagrams = self.quic.datagrams_to_send(now=self.loop.time())
        if not datagrams:
            return
        addr = datagrams[0][1]
        if all(to == addr for _, to in datagrams):
            self.transport.sendto_many([data for data, _ in datagrams], addr)
            return
        for data, to in datagrams:
            self.transport.sendto(data, to)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.transport = transport
        self.service.open_connections.add(self)
        # Abandoned or garbage handshakes must not hold state for the whole idle timeout.
        self._handshake_timer = self.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_expired)

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        self.close(reason_phrase="handshake timeout")

    def close(self, error_code: int = ErrorCode.H3_NO_ERROR, reason_phrase: str = "") -> None:
        """Send CONNECTION_CLOSE now."""
        self.quic.close(error_code=error_code, reason_phrase=reason_phrase)
        self.transmit()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self._h3 = H3Connection(self.quic)
        elif isinstance(event, HandshakeCompleted):
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
                self._handshake_timer = None
            self.service.connections.add(self)
        elif isinstance(event, ConnectionTerminated):
            self._terminated()
        elif isinstance(event, StopSendingReceived | StreamReset):
            self._feeds.pop(event.stream_id, None)
            self._settle(event.stream_id, False)
        if self._h3 is None:
            return
        for h3_event in self._h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived) and h3_event.push_id is None:
                self.service.request_received(self, h3_event.stream_id, h3_event.headers)

    def _terminated(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.service.connections.discard(self)
        self.service.open_connections.discard(self)
        self._feeds.clear()
        for stream_id in list(self._waiters):
            self._settle(stream_id, False)

    # -- responses ------------------------------------------------------------------------------------
    def respond(self, stream_id: int, status: int, body: bytes = b"", *, content_type: bytes = b"text/plain; "
                b"charset=utf-8", extra: list[tuple[bytes, bytes]] | None = None) -> bool:
        """Queue a whole response; False when the stream or connection is already gone."""
        if not self.start_response(stream_id, status, len(body), content_type=content_type, extra=extra):
            return False
        try:
            if len(body) > FEED_CHUNK:
                self._feeds[stream_id] = [memoryview(body), 0]
                self._feed(stream_id)
            elif body:
                self._h3.send_data(stream_id, body, end_stream=True)
        except Exception as exc:  # the client reset the stream or the connection is closing
            log.debug("http3: cannot answer on stream %d: %s", stream_id, exc)
            self._feeds.pop(stream_id, None)
            return False
        self.transmit()  # deferred: after the caller's bookkeeping, and coalesced with other responses
        return True

    def start_response(self, stream_id: int, status: int, length: int, *, content_type: bytes = b"text/plain; "
                       b"charset=utf-8", extra: list[tuple[bytes, bytes]] | None = None) -> bool:
        """Queue the headers of a response of `length` bytes (ending the stream when there is no body); False
        when the stream or connection is already gone."""
        if self._h3 is None:
            return False
        headers = [(b":status", str(status).encode()), (b"content-length", str(length).encode())]
        if length:
            headers.append((b"content-type", content_type))
        headers.extend(extra or [])
        try:
            self._h3.send_headers(stream_id, headers, end_stream=not length)
        except Exception as exc:
            log.debug("http3: cannot answer on stream %d: %s", stream_id, exc)
            return False
        if not length:
            self.transmit()
        return True

    def send_body(self, stream_id: int, chunk: bytes, *, end: bool) -> bool:
        """Queue the next piece of a body begun with `start_response`; False when the stream is gone."""
        try:
            self._h3.send_data(stream_id, chunk, end_stream=end)
        except Exception as exc:
            log.debug("http3: cannot continue stream %d: %s", stream_id, exc)
            return False
        self.transmit()
        return True

    def abort(self, stream_id: int) -> None:
        """Reset a response cut short: the client sees the stream fail, never a complete body."""
        try:
            self.quic.reset_stream(stream_id, ErrorCode.H3_INTERNAL_ERROR)
        except Exception as exc:  # already reset by the client, or the connection is closing
            log.debug("http3: cannot reset stream %d: %s", stream_id, exc)
        self.transmit()

    def _feed(self, stream_id: int) -> None:
        """Hand the next chunk of a body to QUIC (a DATA frame of its own)."""
        feed = self._feeds[stream_id]
        view, start = feed
        end = min(start + FEED_CHUNK, len(view))
        if end == len(view):
            del self._feeds[stream_id]
        else:
            feed[1] = end
        self._h3.send_data(stream_id, view[start:end], end_stream=end == len(view))

    def _top_up(self) -> bool:
        """Feed every stream whose queued bytes ran below FEED_LOW; True if any was fed."""
        fed = False
        for stream_id in list(self._feeds):
            if self.quic.get_send_buffer_size(stream_id) < FEED_LOW:
                try:
                    self._feed(stream_id)
                except Exception as exc:  # reset or closing meanwhile: the waiter learns it from the events
                    log.debug("http3: cannot continue stream %d: %s", stream_id, exc)
                    self._feeds.pop(stream_id, None)
                    continue
                fed = True
        return fed

    def _unsent(self, stream_id: int) -> bool:
        return stream_id in self._feeds or self.quic.get_send_buffer_size(stream_id) > 0

    async def sent(self, stream_id: int, timeout: float) -> bool | None:
        """True once QUIC has sent the whole response; False if aborted; None on timeout (then reset)."""
        if not self._unsent(stream_id):
            return True
        future = self.loop.create_future()
        self._waiters[stream_id] = future
        self._schedule_poll()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            self._feeds.pop(stream_id, None)
            self.quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            self.transmit()
            return None
        finally:
            self._waiters.pop(stream_id, None)

    def _schedule_poll(self) -> None:
        if self._poller is None:
            self._poller = self.loop.call_later(SEND_POLL, self._poll_sends)

    def _poll_sends(self) -> None:
        self._poller = None
        for stream_id in list(self._waiters):
            if not self._unsent(stream_id):
                self._settle(stream_id, True)
        if self._waiters:
            self._schedule_poll()

    def _settle(self, stream_id: int, outcome: bool) -> None:
        future = self._waiters.get(stream_id)
        if future is not None and not future.done():
            future.set_result(outcome)


class RunningServer:
    """A started server: `close()` says goodbye to every connection; `drop()` just lets go of the socket."""

    def __init__(self, quic_server: QuicServer, transport: QuicDatagramTransport):
        self.quic_server, self.transport = quic_server, transport

    def close(self) -> None:
        self.quic_server.close()  # CONNECTION_CLOSE to every connection, then the transport closes

    def drop(self) -> None:
        self.transport.close()  # silence, as a killed process would leave


async def start_server(sock: socket.socket, configuration, service: BlobService) -> RunningServer:
    """Serve HTTP/3 on a bound UDP socket (the supervisor's, shared with SO_REUSEPORT)."""
    server = QuicServer(configuration=configuration,
                        create_protocol=functools.partial(Http3ServerProtocol, service=service))
    return RunningServer(server, QuicDatagramTransport(asyncio.get_running_loop(), sock, server))


def _query(query: bytes) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in query.split(b"&"):
        key, _, value = item.partition(b"=")
        name = key.decode("latin-1")
        if name and name not in values:  # the first occurrence wins, as Go's Query().Get
            values[name] = unquote_plus(value.decode("latin-1"))
    return values


def _content_type(data: bytes) -> bytes:
    """Go's sniffing as reflector.go sent it: text/plain for text (sd blobs are JSON), else octet-stream."""
    head = data[:512]
    if any(b < 0x20 and b not in (0x09, 0x0A, 0x0C, 0x0D, 0x1B) for b in head):
        return b"application/octet-stream"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the 512-byte boundary
            return b"application/octet-stream"
    return b"text/plain; charset=utf-8"
