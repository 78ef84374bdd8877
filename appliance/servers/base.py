"""GeventServer: accepts on a listening socket it does not own, and tracks connections and requests.

The caller (the supervisor, before forking) creates the listening socket; a respawned worker reuses it.
So stopping never closes it: the server accepts from a duplicate of the descriptor and closes only that.

    server.start()                      # begin accepting (returns at once)
    server.stop_accepting()             # graceful stop, step 1
    server.wait_idle(graceful_timeout)  # step 2: True once no connection is mid-request
    server.close_connections()          # step 3 (alone: fast stop)

`max_per_ip` caps the connections one client IP holds open on this server (0: no cap). It counts in
this process only: the appliance gives each worker its share of the configured total (see
workers/worker.py), and SO_REUSEPORT (or, on a socket every worker shares, `accept_stagger`) spreads one
client's connections over the workers.
"""
from __future__ import annotations

import errno
import logging
import os
import socket

import gevent
from gevent.event import Event
from gevent.server import StreamServer

from appliance import metrics
from appliance.servers.listening import LISTEN_BACKLOG as LISTEN_QUEUE_MAX
from appliance.servers.listening import pause_listener, resume_listener

log = logging.getLogger("server")


class _Busy:
    """Context manager marking one request in progress (see GeventServer.busy)."""

    __slots__ = ("server",)

    def __init__(self, server: GeventServer):
        self.server = server

    def __enter__(self) -> None:
        server = self.server
        server._busy += 1
        server._idle.clear()

    def __exit__(self, *exc) -> None:
        server = self.server
        server._busy -= 1
        server.requests += 1
        if server._busy == 0:
            server._idle.set()


class _Acceptor(StreamServer):
    """gevent's StreamServer, except that a listening socket shut down by another process (a drain of a socket
    every worker shares) stops this one accepting instead of closing it for good (gevent takes EINVAL from
    accept as fatal). The worker's own drain follows within DRAIN_POLL; an undrain listens and accepts again."""

    def do_read(self):
        try:
            return super().do_read()
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.stop_accepting()
            return None


class GeventServer:
    """Base of the three blob servers; subclasses implement `handle(sock, address)`.

    `handle` loops `while self.serving(sock):`, wraps each request (not the idle wait before it) in
    `with self.begin(sock):` and returns when the connection should close; the base closes the socket.
    `stopping` is set by stop_accepting(): a keep-alive handler finishes the request in progress and then
    closes the connection, but a connection's first request is always served.
    """

    name = "server"
    max_per_ip = 0  # open connections one client IP may hold on this server; 0 = no cap
    refusal = b""  # sent to a connection refused by the cap before it is closed (e.g. an HTTP 503)
    accept_batch = 16  # connections taken per wakeup: fairness between the hub's other work and new clients
    # On a socket shared by every worker: after each accept, wait this long per open connection (at most
    # accept_stagger_max) before taking the next, so the worker with the fewest connections takes it (0: no
    # wait; per-slot sockets must not wait). The cap keeps many idle connections from slowing every accept.
    accept_stagger = 0.0
    accept_stagger_max = 0.0
    pauses_listener = True  # False for a worker that leaves a shared socket's drain to worker 0

    def __init__(self, listener: socket.socket):
        self.listener = listener
        self.connections = 0  # open now
        self.requests = 0  # served so far
        self.stopping = False
        self._busy = 0
        self._idle = Event()
        self._idle.set()
        self._sockets: dict = {}  # greenlet -> client socket
        self._fresh: set = set()  # connections that have not started their first request
        self._server: StreamServer | None = None
        self._gauge = metrics.CONNECTIONS.labels(server=self.name)
        self._paused = False
        self._per_ip: dict[str, int] = {}  # open connections by client IP, while max_per_ip is set
        self._over_cap = metrics.CONNECTIONS_CLOSED_TOTAL.labels(server=self.name, reason="per_ip_cap")
        self.busy = _Busy(self)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin accepting (non-blocking): the accept loop runs in the gevent hub."""
        self.stopping = False
        if self._server is None:
            dup = socket.socket(self.listener.family, self.listener.type, self.listener.proto,
                                fileno=os.dup(self.listener.fileno()))
            dup.setblocking(False)  # gevent's accept loop must never block the hub
            self._server = _Acceptor(dup, self._serve)
            self._server.max_accept = self.accept_batch
            self._server.start()
        else:
            self._server.start_accepting()

    @property
    def address(self) -> tuple:
        return self.listener.getsockname()

    def stop_accepting(self) -> None:
        """Stop taking new connections; the listening socket stays open (its owner closes it)."""
        self.stopping = True
        if self._server is not None:
            self._server.stop_accepting()

    def pause(self) -> None:
        """Drain: refuse new connections at the kernel (a balancer's TCP check fails) while the established
        ones go on. The listening socket leaves the LISTEN state (shutdown; no accept error can follow since
        we stopped accepting first); `resume()` puts it back. The shutdown would reset what sits in the
        accept queue, so that is taken first, with no switch to another greenlet in between: only a
        handshake completing in those microseconds can still be reset."""
        self._paused = True
        if self._server is not None:
            self._server.stop_accepting()
        if self.pauses_listener:  # (else worker 0 pauses this shared socket, taking its queue first)
            if self._server is not None:
                self._take_queued()
            pause_listener(self.listener)

    def _take_queued(self) -> None:
        server = self._server
        for _ in range(LISTEN_QUEUE_MAX):
            try:
                accepted = server.do_read()  # non-blocking: None once the queue is empty
            except OSError:
                return
            if not accepted:
                return
            server.do_handle(*accepted)  # spawns the handler; it runs after the shutdown

    def resume(self) -> None:
        """Undrain: listen again (a no-op for a socket that is listening) and accept."""
        resume_listener(self.listener)
        self._paused = False
        self.start()

    @property
    def fresh(self) -> int:
        """Connections accepted but not yet into their first request: a graceful stop waits for them."""
        return len(self._fresh)

    def serving(self, sock) -> bool:
        """Whether a connection takes another request: its first one always (it was accepted before any
        stop, and closing it unanswered would fail a client), later ones only while not stopping."""
        return sock in self._fresh or not self.stopping

    def begin(self, sock) -> _Busy:
        """`with server.begin(sock):` around each request: marks it in progress (see `busy`)."""
        self._fresh.discard(sock)
        return self.busy

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once no connection is in the middle of a request or transfer (idle keep-alives don't count)."""
        return self._idle.wait(timeout)

    def close_connections(self) -> None:
        """Fast stop: close every client connection and end its handler."""
        self.stop_accepting()
        # Killing first lets each handler unwind (its `finally` closes the socket) instead of failing on
        # a descriptor closed under it.
        gevent.killall(list(self._sockets), block=True, timeout=5)
        for sock in list(self._sockets.values()):
            _close_quietly(sock)

    def close(self) -> None:
        """Stop completely and release our duplicate of the listening descriptor."""
        self.close_connections()
        if self._server is not None:
            self._server.close()
            self._server = None

    # -- per connection -----------------------------------------------------------------------------------
    def _serve(self, sock, address) -> None:
        ip = address[0] if self.max_per_ip else None
        if ip is not None:
            held = self._per_ip.get(ip, 0)
            if held >= self.max_per_ip:
                self._refuse_over_cap(sock)
                return
            self._per_ip[ip] = held + 1
        current = gevent.getcurrent()
        self._sockets[current] = sock
        self._fresh.add(sock)
        self.connections += 1
        self._gauge.inc()
        if self.accept_stagger and self._server is not None:
            self._server.stop_accepting()
            gevent.spawn_later(min(self.accept_stagger * self.connections, self.accept_stagger_max),
                               self._accept_again)
        try:
            self.handle(sock, address)
        except Exception:
            log.exception("%s: unexpected error on a connection from %s", self.name, address[0])
        finally:
            self.connections -= 1
            self._gauge.dec()
            self._sockets.pop(current, None)
            self._fresh.discard(sock)
            _close_quietly(sock)
            if ip is not None:
                left = self._per_ip.pop(ip) - 1
                if left:
                    self._per_ip[ip] = left

    def _accept_again(self) -> None:
        """The end of an accept_stagger wait: accept again, unless stopped or paused meanwhile."""
        if self._server is not None and not self.stopping and not self._paused:
            self._server.start_accepting()

    def _refuse_over_cap(self, sock) -> None:
        """A connection over the per-IP cap: counted, told so if the protocol has a way, and closed."""
        self._over_cap.inc()
        if self.refusal:
            try:
                sock.settimeout(1.0)
                sock.sendall(self.refusal)
            except OSError:
                pass
        _close_quietly(sock)

    def handle(self, sock, address) -> None:
        raise NotImplementedError


def _close_quietly(sock) -> None:
    try:
        sock.close()
    except OSError:
        pass
