"""The supervisor's :2112 `/metrics` endpoint: one selector thread, bounded in every direction.

A scrape is one small GET; so each connection gets `timeout` seconds to send its request head and
`timeout` seconds to take the reply, then it is closed (one request per connection). At most
`max_connections` are open: a new one pushes out the oldest that has not sent a request yet or is already
answered (so idle connections cannot lock Prometheus out), and is refused only when every slot is busy
replying. No thread per connection, nothing written outside the log format: a client that hangs up
mid-reply is a debug line.
"""
from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable

from appliance.logs import Throttle

log = logging.getLogger("supervisor")

MAX_HEAD = 8192
DRAIN_TIMEOUT = 2.0  # seconds a client has to close its side after the reply
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}


class _Conn:
    __slots__ = ("sock", "head", "out", "deadline", "draining")

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.head = bytearray()
        self.out: memoryview | None = None  # the reply, once the request is in
        self.deadline = deadline
        self.draining = False  # reply sent and write side shut: reading to EOF so no RST cuts the reply


class MetricsServer:
    """Serve `render()` as text/plain at /metrics on (host, port) from one daemon thread."""

    def __init__(self, host: str, port: int, render: Callable[[], bytes], *, timeout: float = 10.0,
                 max_connections: int = 256, backlog: int = 1024):
        self.render = render
        self.timeout = timeout
        self.max_connections = max_connections
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(backlog)
        self.listener.setblocking(False)
        self.conns: dict[socket.socket, _Conn] = {}  # insertion order = accept order
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._stop = False
        self._throttle = Throttle(60.0)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop the thread (and wait for it)."""
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(5)

    def server_close(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    # -- the loop -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop:
            try:
                self._step()
            except Exception:  # a bug must not take the endpoint (or the supervisor) down
                log.exception("metrics endpoint: unexpected error")
                time.sleep(0.1)

    def _step(self) -> None:
        now = time.monotonic()
        wait = min((c.deadline for c in self.conns.values()), default=now + 1.0) - now
        for key, events in self._selector.select(max(0.0, min(wait, 1.0))):
            if key.fileobj is self.listener:
                self._accept()
            elif key.fileobj is self._wake_r:
                self._wake_r.recv(64)
            else:
                conn = self.conns.get(key.fileobj)
                if conn is None:
                    continue
                if events & selectors.EVENT_READ and conn.draining:
                    self._drain(conn)
                elif events & selectors.EVENT_READ and conn.out is None:
                    self._read(conn)
                elif events & selectors.EVENT_WRITE and conn.out is not None:
                    self._write(conn)
        now = time.monotonic()
        for conn in [c for c in self.conns.values() if c.deadline <= now]:
            self._close(conn)  # idle, too slow sending its request, or too slow taking the reply

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the listener stays; try again next round
                suffix = self._throttle("accept")
                if suffix is not None:
                    log.warning("metrics endpoint: accept failed: %s%s", exc.strerror or exc, suffix)
                return
            if len(self.conns) >= self.max_connections and not self._make_room():
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + self.timeout)
            self.conns[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ)

    def _make_room(self) -> bool:
        """Close the oldest connection that is idle or answered; False if every one is being answered."""
        for conn in self.conns.values():
            if conn.out is None or conn.draining:
                suffix = self._throttle("full")
                if suffix is not None:
                    log.warning("metrics endpoint: %d connections open; closing the oldest idle ones%s",
                                len(self.conns), suffix)
                self._close(conn)
                return True
        return False

    def _recv(self, conn: _Conn, size: int) -> bytes | None:
        """What the client sent; None when nothing is there yet; the connection is closed at its end."""
        try:
            data = conn.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return None
        return data

    def _read(self, conn: _Conn) -> None:
        data = self._recv(conn, 4096)
        if data is None:
            return
        conn.head += data
        end = conn.head.find(b"\r\n\r\n")
        if end > MAX_HEAD or (end < 0 and len(conn.head) > MAX_HEAD):
            self._reply(conn, 431, b"request header too large\n")
            return
        if end < 0:
            return
        self._answer(conn, bytes(conn.head[:end]))

    def _answer(self, conn: _Conn, head: bytes) -> None:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._reply(conn, 400, b"bad request\n")
            return
        method, target = parts[0], parts[1]
        if target.split(b"?", 1)[0] != b"/metrics":
            self._reply(conn, 404, b"404 page not found\n")
        elif method not in (b"GET", b"HEAD"):
            self._reply(conn, 405, b"method not allowed\n")
        else:
            try:
                body = self.render()
            except Exception:
                log.exception("metrics endpoint: rendering the metrics failed")
                self._reply(conn, 500, b"internal server error\n")
                return
            self._reply(conn, 200, body, head_only=method == b"HEAD",
                        content_type=b"text/plain; version=0.0.4; charset=utf-8")

    def _reply(self, conn: _Conn, status: int, body: bytes, head_only: bool = False,
               content_type: bytes = b"text/plain; charset=utf-8") -> None:
        header = (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                  % (status, _REASONS[status].encode(), content_type, len(body)))
        conn.out = memoryview(header if head_only else header + body)
        conn.deadline = time.monotonic() + self.timeout
        self._selector.modify(conn.sock, selectors.EVENT_WRITE)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # the client hung up mid-reply: nothing to report but a debug line
            log.debug("metrics endpoint: client went away: %s", exc)
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:  # done: half-close, and wait (briefly) for the client's EOF
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._close(conn)
                return
            conn.draining = True
            conn.deadline = min(conn.deadline, time.monotonic() + DRAIN_TIMEOUT)
            self._selector.modify(conn.sock, selectors.EVENT_READ)

    def _drain(self, conn: _Conn) -> None:
        self._recv(conn, 65536)  # anything after the request is ignored; the client's EOF closes

    def _close(self, conn: _Conn) -> None:
        if self.conns.pop(conn.sock, None) is None:
            return
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
