"""A lean keep-alive HTTP/1.1 GET over plain sockets, for relaying blob bodies from an http:// upstream.

requests + urllib3 cost a miss more CPU than its SHA-384 does (session merging, header objects, a copy per
read); a cache miss needs none of it: one GET, a Content-Length body read as it arrives. Plain http only
(https upstreams stay on requests). Pooled sockets; a pooled socket the server closed while idle is
replaced once, transparently.

    pool = RawHttpPool("127.0.0.1", 5569, pool_size=100)
    answer = pool.get("/blob?hash=...", first_byte_timeout=5, idle_timeout=10)   # status, headers, length
    for chunk in answer.body(): ...        # exactly `length` bytes, or an exception
    answer.close()                         # back to the pool when the body was read to its end
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

MAX_HEAD = 64 * 1024
CONNECT_TIMEOUT = 5.0
CHUNK = 256 * 1024


class RawHttpError(Exception):
    """The server broke HTTP/1.1 (or closed the connection) before a whole answer's head."""


class StalledBody(TimeoutError):
    """No byte of the body within the idle timeout."""


class FirstByteTimeoutError(TimeoutError):
    """No byte of the answer within the first-byte timeout."""


class RawHttpPool:
    def __init__(self, host: str, port: int, pool_size: int = 100):
        self.host, self.port = host, port
        self.host_header = f"{host}:{port}".encode()
        self.pool_size = pool_size
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def get(self, target: str, first_byte_timeout: float, idle_timeout: float) -> Answer:
        request = (b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept-Encoding: identity\r\nUser-Agent: reflector-appliance"
                   b"\r\n\r\n" % (target.encode(), self.host_header))
        while True:
            with self._lock:
                sock = self._idle.pop() if self._idle else None
            reused = sock is not None
            if sock is None:
                sock = socket.create_connection((self.host, self.port), timeout=min(CONNECT_TIMEOUT,
                                                                                    first_byte_timeout))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.settimeout(first_byte_timeout)
                sock.sendall(request)
                status, headers, rest = _read_head(sock)
            except (RawHttpError, ConnectionResetError, BrokenPipeError) as exc:
                sock.close()
                if reused and getattr(exc, "empty", True):
                    continue  # an idle connection the server had closed: once more on a fresh one
                raise
            except TimeoutError:
                sock.close()
                raise FirstByteTimeoutError(f"no answer within {first_byte_timeout:g}s") from None
            except BaseException:
                sock.close()
                raise
            return Answer(self, sock, status, headers, rest, idle_timeout)

    def _release(self, sock: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < self.pool_size:
                self._idle.append(sock)
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()


class Answer:
    """One answer: `status`, `headers` (lower-case names), `length` (Content-Length, -1 when absent)."""

    def __init__(self, pool: RawHttpPool, sock: socket.socket, status: int, headers: dict[str, str], rest: bytes,
                 idle_timeout: float):
        self.pool, self.sock, self.status, self.headers = pool, sock, status, headers
        self._rest = rest
        self.idle_timeout = idle_timeout
        try:
            self.length = int(headers.get("content-length", "-1"))
        except ValueError:
            self.length = -1
        self.keep_alive = "close" not in headers.get("connection", "").lower() and self.length >= 0
        self._done = False

    def body(self) -> Iterator[bytes]:
        """Exactly `length` bytes as they arrive (ConnectionError when the server closes early)."""
        remaining = self.length
        sock = self.sock
        if self._rest:
            first, self._rest = self._rest[:remaining], b""
            remaining -= len(first)
            yield first
        sock.settimeout(self.idle_timeout)
        while remaining > 0:
            try:
                chunk = sock.recv(min(CHUNK, remaining))
            except TimeoutError:
                raise StalledBody(f"nothing for {self.idle_timeout:g}s with {remaining} bytes of the body to "
                                  "come") from None
            if not chunk:
                raise ConnectionError(f"unexpected EOF with {remaining} of {self.length} bytes of the body to come")
            remaining -= len(chunk)
            yield chunk
        self._done = True

    def read_small(self, limit: int = 4096) -> bytes:
        """A short body (an error text), at most `limit` bytes kept; the connection is reused only when the
        whole announced body was read."""
        data, self._rest = self._rest, b""
        wanted = self.length if 0 <= self.length <= limit else limit
        self.sock.settimeout(self.idle_timeout)
        try:
            while len(data) < wanted:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        self._done = len(data) == self.length
        return data[:limit]

    def close(self) -> None:
        """Back to the pool when the body was read whole; otherwise the connection is closed."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if self._done and self.keep_alive:
            self.pool._release(sock)
        else:
            sock.close()


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            error = RawHttpError("the server closed the connection before its answer" if not buf else
                                 "the server closed the connection inside its answer's head")
            error.empty = not buf
            raise error
        buf += chunk
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buf) > MAX_HEAD:
            raise RawHttpError("an answer head over 64 KiB")
    lines = buf[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise RawHttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if parts[0] == "HTTP/1.0" and "keep-alive" not in headers.get("connection", "").lower():
        headers["connection"] = "close"
    return int(parts[1]), headers, buf[end + 4:]
