"""Asyncio HTTP/3 client: one QUIC connection per upstream, reused for many requests multiplexed as streams.

reflector.go opened a new QUIC connection per request and ignored its timeouts (spec §10 item 17).
Here the connection is opened on first use and kept; requests run concurrently as streams (those beyond
the server's stream limit wait for its MAX_STREAMS credit). Every request has a deadline; a request that runs out
of time cancels its stream (RESET_STREAM + STOP_SENDING), not the connection.

A dead connection is noticed quickly rather than after the 20 s idle timeout: an ICMP port-unreachable
on the connected UDP socket (upstream down), a CONNECTION_CLOSE, or — while requests are outstanding —
silence for SILENCE seconds followed by an unanswered PING (upstream restarted: the new process does
not know the connection and drops its packets). Requests caught on a dead connection are retried once
on a fresh one (GETs are idempotent).

The UDP socket is connected to the upstream, so the kernel picks the local address (loopback for a
loopback upstream) and reports ICMP errors, and only the upstream's datagrams are accepted.
"""
from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from qh3.asyncio.protocol import QuicConnectionProtocol
from qh3.h3.connection import ErrorCode, H3Connection
from qh3.h3.events import DataReceived, HeadersReceived
from qh3.quic.connection import QuicConnection
from qh3.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent, StreamDataReceived, StreamReset

from appliance.http3.quic import HANDSHAKE_TIMEOUT, client_configuration
from appliance.http3.udp import QuicDatagramTransport

SILENCE = 1.0  # outstanding requests and nothing heard for this long: ping the upstream
PING_TIMEOUT = 2.0
USER_AGENT = b"reflector-appliance"

Address = tuple  # (host, port) or (host, port, flowinfo, scope_id), as getaddrinfo returns it


class ConnectionLost(ConnectionError):
    """The QUIC connection ended (or could not be opened) before the response was complete."""


class ResponseError(Exception):
    """The upstream answered in a way this client cannot accept (stream reset, response too large)."""


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


@dataclass
class _Pending:
    future: asyncio.Future
    max_body: int
    status: int | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


class H3ClientProtocol(QuicConnectionProtocol):
    """One client connection: requests by stream id, liveness checks, a `dead` reason once it is over."""

    def __init__(self, quic: QuicConnection, stream_handler=None):
        super().__init__(quic, stream_handler)
        # Our own references: the base class's attributes are qh3's private business.
        self.quic = quic
        self.loop = asyncio.get_running_loop()
        self.transport: QuicDatagramTransport | None = None
        self._h3 = H3Connection(quic)
        self._pending: dict[int, _Pending] = {}
        self._monitor: asyncio.Task | None = None
        self._dead = asyncio.Event()
        self._ready = asyncio.Event()
        self._received = asyncio.Event()  # set by every batch of datagrams (MAX_STREAMS credit comes in one)
        self.dead: str | None = None
        self.addr: Address | None = None
        self.last_received = self.loop.time()

    # -- transport callbacks --------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.transport = transport

    def datagrams_received(self, data: list[bytes], addr: Address) -> None:
        """A batch from QuicDatagramTransport: all fed to the connection, then one pass over events and one transmit."""
        self.last_received = now = self.loop.time()
        self.quic.receive_many_datagrams(data, addr, now=now)
        self._after_receive()

    def buffers_received(self, buffers: list[tuple[bytes, int]], addr: Address) -> None:
        """A batch of GRO reads (datagrams of one size back to back): the QUIC core cuts them, not Python."""
        self.last_received = now = self.loop.time()
        singles: list[bytes] = []
        for data, size in buffers:
            if size >= len(data):
                singles.append(data)
                continue
            if singles:
                self.quic.receive_many_datagrams(singles, addr, now=now)
                singles = []
            self.quic.receive_gro_buffer(data, size, addr, now=now)
        if singles:
            self.quic.receive_many_datagrams(singles, addr, now=now)
        self._after_receive()

    def _after_receive(self) -> None:
        """Pull the batch's events through the public API (the base class's bookkeeping is unused here), one
        StreamDataReceived per stream: the core reports each packet's STREAM frame on its own, and the HTTP/3
        layer's per-event Python cost was most of the client's time per packet."""
        runs: dict[int, list] = {}  # stream id -> [chunks, end_stream]; in-order data, as the core delivers it
        while (event := self.quic.next_event()) is not None:
            if type(event) is StreamDataReceived:
                run = runs.get(event.stream_id)
                if run is None:
                    runs[event.stream_id] = [[event.data], event.end_stream]
                else:
                    run[0].append(event.data)
                    run[1] = event.end_stream
                continue
            if runs:  # anything else (a reset, the end) comes after the data received before it
                self._deliver_runs(runs)
            self.quic_event_received(event)
        if runs:
            self._deliver_runs(runs)
        self.transmit()
        self._received.set()

    def _deliver_runs(self, runs: dict[int, list]) -> None:
        for stream_id, (chunks, end_stream) in runs.items():
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self.quic_event_received(StreamDataReceived(data=data, end_stream=end_stream, stream_id=stream_id))
        runs.clear()

    def error_received(self, exc: OSError) -> None:
        """ICMP errors on the connected socket: nothing listens there (any more)."""
        self.fail(exc.strerror or str(exc))

    def connection_lost(self, exc) -> None:
        self._declare_dead("socket closed")

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self._ready.set()
        elif isinstance(event, ConnectionTerminated):
            self._declare_dead(event.reason_phrase or f"connection closed (error {event.error_code:#x})")
            if self.transport is not None:
                self.transport.close()
            return
        if isinstance(event, StreamReset):
            self._finish(event.stream_id, ResponseError(f"the upstream reset the stream (error {event.error_code:#x})"))
        for h3_event in self._h3.handle_event(event):
            pending = self._pending.get(getattr(h3_event, "stream_id", -1))
            if pending is None or pending.future.done():
                continue
            if isinstance(h3_event, HeadersReceived) and pending.status is None:
                pending.headers = dict(h3_event.headers)
                try:
                    pending.status = int(pending.headers.get(b":status", b""))
                except ValueError:
                    self._abort(h3_event.stream_id, ResponseError("response without a valid :status"))
                    continue
            elif isinstance(h3_event, DataReceived):
                pending.size += len(h3_event.data)
                if pending.size > pending.max_body:
                    self._abort(h3_event.stream_id,
                                ResponseError(f"response body larger than {pending.max_body} bytes"))
                    continue
                pending.chunks.append(h3_event.data)
            if h3_event.stream_ended:
                if pending.status is None:
                    self._finish(h3_event.stream_id, ResponseError("response ended without headers"))
                else:
                    self._finish(h3_event.stream_id, Response(pending.status, pending.headers,
                                                              b"".join(pending.chunks)))

    # -- requests -------------------------------------------------------------------------------------
    async def get(self, authority: bytes, path: bytes, max_body: int, timeout: float) -> Response:
        """GET `path`; raises ConnectionLost, ResponseError or TimeoutError."""
        if self.dead:
            raise ConnectionLost(self.dead)
        deadline = self.loop.time() + timeout
        await self._stream_credit(deadline)  # no await between its last check and sending the request
        timeout = deadline - self.loop.time()
        stream_id = self.quic.get_next_available_stream_id()
        try:
            self._h3.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"),
                                              (b":authority", authority), (b":path", path),
                                              (b"user-agent", USER_AGENT)], end_stream=True)
        except Exception as exc:  # the connection is closing under us
            raise ConnectionLost(f"cannot send the request: {exc}") from None
        pending = _Pending(self.loop.create_future(), max_body)
        self._pending[stream_id] = pending
        self.transmit()
        if self._monitor is None:
            self._monitor = self.loop.create_task(self._watch())
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), timeout)
        except BaseException:
            if not pending.future.done():  # timed out or the caller gave up: stop this stream only
                self._abort(stream_id, ConnectionLost("request cancelled"))
            raise
        finally:
            self._pending.pop(stream_id, None)

    async def _stream_credit(self, deadline: float) -> None:
        """Wait until the server's MAX_STREAMS allows one more request stream (qh3 raises instead of queueing).

        MAX_STREAMS counts streams ever opened: client request stream n has id 4n (RFC 9000 §2.1).
        """
        while self.quic.get_next_available_stream_id() // 4 >= self.quic.max_concurrent_bidi_streams:
            if self.dead:
                raise ConnectionLost(self.dead)
            self._received.clear()
            await asyncio.wait_for(self._received.wait(), max(0.0, deadline - self.loop.time()))
        if self.dead:
            raise ConnectionLost(self.dead)

    def _finish(self, stream_id: int, outcome: Response | Exception) -> None:
        pending = self._pending.get(stream_id)
        if pending is None or pending.future.done():
            return
        if isinstance(outcome, Exception):
            pending.future.set_exception(outcome)
            pending.future.exception()  # retrieved: a caller that gave up must not log "never retrieved"
        else:
            pending.future.set_result(outcome)

    def _abort(self, stream_id: int, error: Exception) -> None:
        self._finish(stream_id, error)
        if self.dead:
            return
        try:
            self.quic.stop_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            self.quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
        except Exception:  # the stream already finished on one side
            pass
        self.transmit()

    # -- liveness -------------------------------------------------------------------------------------
    async def _watch(self) -> None:
        """While requests are outstanding: after SILENCE without a datagram, a PING must draw an answer."""
        try:
            while self._pending and not self.dead:
                await asyncio.sleep(SILENCE / 2)
                probe_sent = self.loop.time()
                if not self._pending or self.dead or probe_sent - self.last_received <= SILENCE:
                    continue
                self.quic.send_ping(0)  # its ACK is a datagram like any other; no waiter needed
                self.transmit()
                await asyncio.sleep(PING_TIMEOUT)
                if self._pending and self.last_received < probe_sent:
                    self.fail("the upstream stopped answering")
        finally:
            self._monitor = None

    def fail(self, reason: str) -> None:
        """Give the connection up: outstanding requests fail with ConnectionLost (and may be retried)."""
        if self.dead:
            return
        self._declare_dead(reason)
        self.quic.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase=reason)
        try:
            self.transmit()
        except OSError:
            pass

    def _declare_dead(self, reason: str) -> None:
        if self.dead is None:
            self.dead = reason
            self._dead.set()
            self._received.set()  # requests waiting for stream credit give up
            if self._monitor is not None and self._monitor is not asyncio.current_task():
                self._monitor.cancel()
        for stream_id in list(self._pending):
            self._finish(stream_id, ConnectionLost(reason))

    async def wait_dead(self) -> None:
        await self._dead.wait()

    async def wait_ready(self) -> None:
        await self._ready.wait()


async def open_connection(addr: Address, server_name: str | None, *, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                          socket_factory: Callable[..., socket.socket] = socket.socket) -> H3ClientProtocol:
    """A connected H3ClientProtocol, or ConnectionLost (refused, handshake failed or timed out)."""
    loop = asyncio.get_running_loop()
    sock = socket_factory(socket.AF_INET6 if len(addr) == 4 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.connect(addr)
        protocol = H3ClientProtocol(QuicConnection(configuration=client_configuration(server_name)))
        transport = QuicDatagramTransport(loop, sock, protocol)
    except BaseException:
        sock.close()
        raise
    protocol.addr = addr
    protocol.connect(addr)
    connected = loop.create_task(protocol.wait_ready())
    died = loop.create_task(protocol.wait_dead())
    try:
        await asyncio.wait({connected, died}, timeout=handshake_timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        died.cancel()
        if not connected.done():
            connected.cancel()
    if connected.done() and not protocol.dead:
        return protocol
    reason = protocol.dead or f"QUIC handshake: i/o timeout after {handshake_timeout:g}s"
    protocol.fail(reason)
    transport.close()
    raise ConnectionLost(reason)


class H3Client:
    """Requests to one upstream over a shared connection, opened on demand and replaced when it dies."""

    def __init__(self, authority: str, server_name: str | None = None, *,
                 socket_factory: Callable[..., socket.socket] = socket.socket):
        self.authority = authority.encode()
        self.server_name = server_name
        self.socket_factory = socket_factory
        self._conn: H3ClientProtocol | None = None
        self._lock: asyncio.Lock | None = None

    async def get(self, addr: Address, path: str, *, timeout: float, max_body: int) -> Response:
        """GET `path` within `timeout` seconds; one retry on a fresh connection if the connection dies."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for attempt in (1, 2):
            conn = await asyncio.wait_for(self._connection(addr), max(0.0, deadline - loop.time()))
            try:
                return await conn.get(self.authority, path.encode(), max_body, max(0.0, deadline - loop.time()))
            except ConnectionLost:
                if attempt == 2 or loop.time() >= deadline:
                    raise
        raise AssertionError("unreachable")

    async def _connection(self, addr: Address) -> H3ClientProtocol:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # concurrent first requests share one handshake
            conn = self._conn
            if conn is not None and not conn.dead and conn.addr == addr:
                return conn
            if conn is not None:
                conn.fail("replaced")
            self._conn = None
            self._conn = await open_connection(addr, self.server_name, socket_factory=self.socket_factory)
            return self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail("client closed")
            await asyncio.sleep(0)  # let the CONNECTION_CLOSE go out
            if conn.transport is not None:
                conn.transport.close()
